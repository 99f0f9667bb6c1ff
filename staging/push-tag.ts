import path from 'node:path';
import { Readable } from 'node:stream';
import type { Descriptor } from '../registry/descriptor.js';
import { digestOf, type Digest } from '../registry/digest.js';
import { MediaType } from '../registry/media-types.js';
import { hashStream, openRegularFile } from '../registry/pack.js';
import type { Repository } from '../registry/storage.js';
import { runLimited } from '../util/limit.js';
import type { StagedEntry } from './layout.js';
import { fileLayer, prepareEntry, TAG_CONFIG, TAG_CONFIG_BYTES, tagManifest } from './tag-artifact.js';

/** HASH_FIRST_BYTES: files up to this size are hashed before upload (so a blob already there is skipped); bigger ones stream. */
const HASH_FIRST_BYTES = 8 * 1024 * 1024;

/** KnownBlob is a file's digest remembered by inode, size and mtime (`key`), so an unchanged file is not read again. */
export interface KnownBlob {
  key: string;
  digest: Digest;
}

/** PushTagOptions say which tag folder to push where. */
export interface PushTagOptions {
  repo: Repository;
  /** dir is the tag folder; entries what it held when its push was decided (scanTagDir). */
  dir: string;
  entries: StagedEntry[];
  tag: string;
  /** known are the digests remembered from earlier uploads, by entry name. */
  known?: Record<string, KnownBlob>;
  /** onUploaded is told each regular file's digest once its blob is in the registry. */
  onUploaded?(name: string, blob: KnownBlob): void;
  /**
   * beforePut is called with the manifest digest once every blob is uploaded, before the tag moves: the
   * caller records it durably and may throw to abort (the folder changed during the upload).
   */
  beforePut?(digest: Digest): Promise<void>;
  /**
   * guard makes the push compare-and-swap as far as a registry allows: the tag is read again right before
   * the manifest PUT and right after it, and a tag found on another manifest than `expect` (before) or than
   * ours (after) is reported to `moved`, which keeps the other version (sync: a conflict tag).
   */
  guard?: PushGuard;
}

/** TagMoved says that another writer moved the tag: before our PUT (`current` is theirs, ours lands next) or after it (`current` replaced ours). */
export interface TagMoved {
  when: 'before' | 'after';
  /** current is where the tag points now. */
  current: Descriptor;
  /** ours is the manifest this push puts (after: the one that was replaced). */
  ours: Descriptor;
}

/** PushGuard is what pushTag checks the tag against (see PushTagOptions.guard). */
export interface PushGuard {
  /** expect is the manifest digest the tag should be on, null when it should not exist yet. */
  expect: string | null;
  moved(e: TagMoved): Promise<void>;
}

/** PushTagResult is where the tag points after the push, and whether the manifest was PUT (false: the tag was already there). */
export interface PushTagResult {
  digest: Digest;
  put: boolean;
}

/**
 * pushTag pushes one tag folder as its artifact (staging/tag-artifact.ts): uploads the entries' blobs (3 at
 * a time), the empty config, and PUTs the manifest under the tag unless the tag already resolves to it, so
 * a push resumed after a crash lands exactly once.
 */
export async function pushTag(o: PushTagOptions): Promise<PushTagResult> {
  const layers: Descriptor[] = new Array<Descriptor>(o.entries.length);
  await runLimited(
    o.entries.map((e, i) => ({ e, i })),
    3,
    async ({ e, i }) => {
      layers[i] = await uploadEntry(o, e);
    },
  );
  await o.repo.pushBlob(TAG_CONFIG, () => Readable.from([TAG_CONFIG_BYTES]));
  const manifest = tagManifest(layers);
  const digest = digestOf(manifest);
  await o.beforePut?.(digest);
  const current = await o.repo.resolve(o.tag).catch(() => undefined);
  if (current?.digest === digest) return { digest, put: false };
  const ours: Descriptor = { mediaType: MediaType.ociManifest, digest, size: manifest.length };
  if (o.guard && current && current.digest !== o.guard.expect) await o.guard.moved({ when: 'before', current, ours });
  await o.repo.pushManifest(manifest, MediaType.ociManifest, [o.tag]);
  if (o.guard) {
    const after = await o.repo.resolve(o.tag).catch(() => undefined);
    if (after && after.digest !== digest) await o.guard.moved({ when: 'after', current: after, ours });
  }
  return { digest, put: true };
}

/**
 * uploadEntry uploads one entry of a tag folder and returns its layer descriptor. A file is opened once,
 * without following symlinks, and must be the very file the scan saw (same device and inode); its bytes are
 * hashed and uploaded from that one descriptor, so a symlink or another file swapped in under its name is
 * never read. A file whose digest is known (same inode, size and mtime as at its last upload) goes through
 * pushBlob, which skips a blob the registry has; a small file is hashed first for the same reason; a big new
 * file is streamed while it is hashed, so its bytes are read once. pushBlob checks the bytes it sends against
 * the digest, so what is uploaded is what was hashed. A folder becomes one tar+gzip layer of its publishable
 * entries (registry/publishable.ts).
 */
async function uploadEntry(o: PushTagOptions, e: StagedEntry): Promise<Descriptor> {
  const abs = path.join(o.dir, e.name);
  if (e.kind === 'dir') {
    const b = await prepareEntry(o.dir, e);
    await o.repo.pushBlob(b.desc, b.open);
    return b.desc;
  }
  const f = await openRegularFile(abs, e);
  try {
    const key = `${f.dev}:${f.ino}:${f.size}:${f.mtimeMs}`;
    const known = o.known?.[e.name];
    let digest: Digest;
    if (known && known.key === key) {
      digest = known.digest;
      await o.repo.pushBlob(fileLayer(e.name, digest, f.size), f.open);
    } else if (f.size <= HASH_FIRST_BYTES) {
      digest = (await hashStream(f.open())).digest;
      await o.repo.pushBlob(fileLayer(e.name, digest, f.size), f.open);
    } else {
      digest = (await o.repo.pushStream(f.open(), f.size)).digest;
    }
    o.onUploaded?.(e.name, { key, digest });
    return fileLayer(e.name, digest, f.size);
  } finally {
    await f.close();
  }
}

import { promises as fsp } from 'node:fs';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { isDigest } from './digest.js';
import type { Descriptor } from './descriptor.js';
import { RegfsError } from '../util/errors.js';
import { Annotation, MediaType } from './media-types.js';
import type { PackedArtifact, PreparedBlob } from './pack.js';
import { checkTitle, mkdirInside, resolveInside } from './safe-path.js';
import type { FetchedManifest, ReadableRepository, Repository } from './storage.js';
import { passThrough } from './blob-io.js';
import { writeStreamAtomic } from '../util/fs-atomic.js';
import { extractTarAtomic } from './tar-extract.js';
import { runLimited } from '../util/limit.js';

/** TransferEvent reports progress of a push or pull, one blob at a time. */
export type TransferEvent =
  | { kind: 'start'; name: string; desc: Descriptor }
  | { kind: 'progress'; name: string; desc: Descriptor; bytes: number }
  | { kind: 'done'; name: string; desc: Descriptor; result: 'pushed' | 'exists' | 'mounted' | 'pulled' | 'skipped' };

/** counting passes a stream through, reporting the running byte count. */
function counting(src: Readable, onBytes: (n: number) => void): Readable {
  return passThrough(src, () => ({ n: 0 }), (s, chunk) => onBytes((s.n += chunk.length)));
}

/** pushArtifact uploads the blobs of a packed artifact (skipping ones present), then the manifest under each tag. */
export async function pushArtifact(
  repo: Repository,
  packed: PackedArtifact,
  tags: string[],
  opts: { concurrency?: number; onEvent?: (e: TransferEvent) => void } = {},
): Promise<Descriptor> {
  const emit = opts.onEvent ?? (() => undefined);
  const blobs: PreparedBlob[] = [packed.config, ...packed.layers];
  await runLimited(blobs, opts.concurrency ?? 5, async (b) => {
    emit({ kind: 'start', name: b.name, desc: b.desc });
    const result = await repo.pushBlob(b.desc, async () => counting(await b.open(), (bytes) => emit({ kind: 'progress', name: b.name, desc: b.desc, bytes })));
    emit({ kind: 'done', name: b.name, desc: b.desc, result });
  });
  return repo.pushManifest(packed.manifest, packed.mediaType, tags);
}

/** PullOptions filter and guard a pull. */
export interface PullOptions {
  /** mediaTypes keeps only layers of these types (ORAS's old `--media-type`). */
  mediaTypes?: string[];
  /** keepOldFiles refuses to replace files that exist. */
  keepOldFiles?: boolean;
  concurrency?: number;
  onEvent?: (e: TransferEvent) => void;
}

/** PullResult lists what a pull wrote. */
export interface PullResult {
  manifest: FetchedManifest;
  files: string[];
  skipped: number;
}

/**
 * pullArtifact writes each titled layer of an artifact under outDir: verified into a temp file and
 * renamed, directory layers extracted safely; a title that would escape outDir is refused before anything is written.
 */
export async function pullArtifact(repo: ReadableRepository, reference: string, outDir: string, opts: PullOptions = {}): Promise<PullResult> {
  const emit = opts.onEvent ?? (() => undefined);
  const fetched = await repo.fetchManifest(reference);
  if (fetched.manifest.kind !== 'manifest') {
    const list = fetched.manifest.manifests.map((m) => (m.platform ? `${m.platform.os}/${m.platform.architecture}` : m.digest)).join(', ');
    throw new RegfsError('UNSUPPORTED', `${repo.display}:${reference} is an index (${list}); pull one of its manifests by digest`);
  }
  const layers = fetched.manifest.layers.filter((l) => !opts.mediaTypes?.length || opts.mediaTypes.includes(l.mediaType));
  const titled = layers.filter((l) => l.annotations?.[Annotation.title] !== undefined);
  // Validate every title and check for duplicates before writing anything.
  const plan = titled.map((l) => ({ desc: l, title: checkTitle(l.annotations![Annotation.title]!) }));
  const seen = new Set<string>();
  for (const p of plan) {
    if (seen.has(p.title)) throw new RegfsError('UNSAFE_PATH', `${repo.display}:${reference} has two layers titled ${JSON.stringify(p.title)}; refusing to pull`);
    seen.add(p.title);
  }
  await fsp.mkdir(outDir, { recursive: true });
  const root = await fsp.realpath(outDir);
  if (opts.keepOldFiles) {
    for (const p of plan) {
      const target = await resolveInside(root, p.title);
      if (await exists(target)) throw new RegfsError('CONFLICT', `${p.title} exists in ${outDir}; not replacing it (--keep-old-files)`);
    }
  }
  const files: string[] = [];
  await runLimited(plan, opts.concurrency ?? 3, async ({ desc, title }) => {
    emit({ kind: 'start', name: title, desc });
    const parent = path.posix.dirname(title);
    if (parent !== '.') await mkdirInside(root, parent);
    const target = await resolveInside(root, title);
    const src = counting(await repo.fetchBlob(desc), (bytes) => emit({ kind: 'progress', name: title, desc, bytes }));
    if (desc.annotations?.[Annotation.unpack] === 'true') {
      const gzip = desc.mediaType.endsWith('+gzip') || desc.mediaType === MediaType.ociLayerTarGzip;
      const tarDigest = desc.annotations?.[Annotation.digestAnnotation];
      await extractTarAtomic(src, target, { gzip, stripPrefix: title, ...(isDigest(tarDigest) ? { tarDigest } : {}) });
    } else {
      await writeStreamAtomic(src, target);
    }
    files.push(title);
    emit({ kind: 'done', name: title, desc, result: 'pulled' });
  });
  return { manifest: fetched, files: files.sort(), skipped: layers.length - titled.length };
}

async function exists(p: string): Promise<boolean> {
  try {
    await fsp.lstat(p);
    return true;
  } catch {
    return false;
  }
}


import { promises as fsp } from 'node:fs';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { isDigest } from './digest.js';
import { parsePlatform, platformMatches, platformString, type Descriptor } from './descriptor.js';
import { errorMessage, isRegfsError, RegfsError } from '../util/errors.js';
import { Annotation, MediaType } from './media-types.js';
import type { PackedArtifact, PreparedBlob } from './pack.js';
import { checkTitle, mkdirInside, resolveInside } from './safe-path.js';
import type { FetchedManifest, ReadableRepository, Repository } from './storage.js';
import { passThrough } from './blob-io.js';
import { writeStreamAtomic } from '../util/fs-atomic.js';
import { extractTarAtomic, replaceDir } from './tar-extract.js';
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
  /** platform (`os/arch[/variant]`) picks one manifest of an index (ORAS's `--platform`). */
  platform?: string;
  /** keepOldFiles refuses to replace files that exist. */
  keepOldFiles?: boolean;
  concurrency?: number;
  onEvent?: (e: TransferEvent) => void;
}

/** PulledFile is one file or directory a pull wrote. */
export interface PulledFile {
  title: string;
  desc: Descriptor;
}

/** PullResult lists what a pull wrote. */
export interface PullResult {
  manifest: FetchedManifest;
  files: string[];
  pulled: PulledFile[];
  skipped: number;
}

/** selectPlatform picks the manifest of an index for `os/arch[/variant]` (no variant given: the first of that os/arch). */
async function selectPlatform(repo: ReadableRepository, reference: string, fetched: FetchedManifest, platform: string | undefined): Promise<FetchedManifest> {
  if (fetched.manifest.kind === 'manifest') {
    if (platform) throw new RegfsError('INVALID_ARGUMENT', `${repo.display}:${reference} is a single manifest, not an index; drop --platform ${platform}`);
    return fetched;
  }
  const entries = fetched.manifest.manifests;
  const list = entries.map((m) => (m.platform ? platformString(m.platform) : m.digest)).join(', ');
  if (!platform) throw new RegfsError('UNSUPPORTED', `${repo.display}:${reference} is an index (${list}); give --platform os/arch[/variant] or pull one of its manifests by digest`);
  const want = parsePlatform(platform);
  const hit = entries.find((m) => platformMatches(m, want));
  if (!hit) throw new RegfsError('NOT_FOUND', `${repo.display}:${reference} has no manifest for ${platform}; it has: ${list}`);
  const picked = await repo.fetchManifest(hit);
  if (picked.manifest.kind !== 'manifest') throw new RegfsError('UNSUPPORTED', `${repo.display}@${hit.digest} (${platform}) is a nested index; pull it by digest`);
  return picked;
}

/**
 * pullArtifact writes each titled layer of an artifact under outDir. Every layer is first downloaded,
 * verified and (directory layers) extracted with every entry checked into one staging directory inside
 * outDir; only when all succeeded is each renamed into place, so a bad or unsafe layer leaves outDir as it was.
 */
export async function pullArtifact(repo: ReadableRepository, reference: string, outDir: string, opts: PullOptions = {}): Promise<PullResult> {
  const emit = opts.onEvent ?? (() => undefined);
  const fetched = await selectPlatform(repo, reference, await repo.fetchManifest(reference), opts.platform);
  if (fetched.manifest.kind !== 'manifest') throw new RegfsError('UNSUPPORTED', `${repo.display}:${reference} is not an image manifest`);
  const all = fetched.manifest.layers;
  const layers = all.filter((l) => !opts.mediaTypes?.length || opts.mediaTypes.includes(l.mediaType));
  if (opts.mediaTypes?.length && !layers.length) {
    const have = [...new Set(all.map((l) => l.mediaType))].join(', ');
    throw new RegfsError('NOT_FOUND', `no layer of ${repo.display}:${reference} has media type ${opts.mediaTypes.join(' or ')} (it has: ${have}); nothing pulled`);
  }
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
  const staging = await fsp.mkdtemp(path.join(root, '.regfs-pull-'));
  try {
    await runLimited(plan.map((p, i) => ({ ...p, i })), opts.concurrency ?? 3, async ({ desc, title, i }) => {
      emit({ kind: 'start', name: title, desc });
      const staged = path.join(staging, String(i));
      const src = counting(await repo.fetchBlob(desc), (bytes) => emit({ kind: 'progress', name: title, desc, bytes }));
      if (desc.annotations?.[Annotation.unpack] === 'true') {
        const gzip = desc.mediaType.endsWith('+gzip') || desc.mediaType === MediaType.ociLayerTarGzip;
        const tarDigest = desc.annotations?.[Annotation.digestAnnotation];
        await extractTarAtomic(src, staged, { gzip, stripPrefix: title, ...(isDigest(tarDigest) ? { tarDigest } : {}) }).catch((err: unknown) => {
          throw new RegfsError(isRegfsError(err) ? err.code : 'IO', `layer ${JSON.stringify(title)} (${desc.digest}): ${errorMessage(err)}; nothing was written`, { cause: err });
        });
      } else {
        await writeStreamAtomic(src, staged);
      }
    });
    // Every layer is verified and staged: move them into place.
    for (const [i, { desc, title }] of plan.entries()) {
      const parent = path.posix.dirname(title);
      if (parent !== '.') await mkdirInside(root, parent);
      const target = await resolveInside(root, title);
      const staged = path.join(staging, String(i));
      if (desc.annotations?.[Annotation.unpack] === 'true') await replaceDir(staged, target, title);
      else {
        const st = await fsp.lstat(target).catch(() => undefined);
        if (st?.isDirectory()) throw new RegfsError('CONFLICT', `cannot write file ${title}: a directory of that name exists in ${outDir}`);
        await fsp.rename(staged, target);
      }
      emit({ kind: 'done', name: title, desc, result: 'pulled' });
    }
  } finally {
    await fsp.rm(staging, { recursive: true, force: true }).catch(() => undefined);
  }
  const pulled = [...plan].sort((a, b) => (a.title < b.title ? -1 : a.title > b.title ? 1 : 0)).map((p) => ({ title: p.title, desc: p.desc }));
  return { manifest: fetched, files: pulled.map((p) => p.title), pulled, skipped: layers.length - titled.length };
}

async function exists(p: string): Promise<boolean> {
  try {
    await fsp.lstat(p);
    return true;
  } catch {
    return false;
  }
}


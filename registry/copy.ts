import { platformMatches, platformString, type Descriptor, type Platform } from './descriptor.js';
import type { FetchedManifest, ReadableRepository, Repository } from './storage.js';
import { RegfsError, isRegfsError } from '../util/errors.js';
import { runLimited } from '../util/limit.js';

/** CopyOptions tune copyGraph (the `cp` command's flags). */
export interface CopyOptions {
  /** recursive copies the referrers of every copied manifest too, and theirs (`cp -r`). */
  recursive?: boolean;
  /** platform picks one manifest out of an index (`--platform os/arch[/variant]`). */
  platform?: Platform;
  /** force lets a destination tag that points at a different digest be moved. */
  force?: boolean;
  /** mountFrom is the source repository name when source and destination are on the same registry: blobs are mounted, not copied. */
  mountFrom?: string;
  concurrency?: number;
  onEvent?: (e: CopyEvent) => void;
}

/** CopyEvent reports one blob or manifest copied. */
export type CopyEvent = { kind: 'blob'; desc: Descriptor; result: 'pushed' | 'exists' | 'mounted' } | { kind: 'manifest'; desc: Descriptor; result: 'pushed' | 'exists' };

/** CopyStats counts what a copy did. */
export interface CopyStats {
  manifests: number;
  blobsPushed: number;
  blobsExisting: number;
  blobsMounted: number;
  bytesPushed: number;
  referrers: number;
}

/** CopyResult is the copied root's descriptor and the counts. */
export interface CopyResult {
  desc: Descriptor;
  stats: CopyStats;
}

/** selectPlatform resolves a reference to the manifest for `platform` when it is an index (a plain manifest is kept only if its platform is unknown). */
export async function selectPlatform(src: ReadableRepository, root: FetchedManifest, platform: Platform): Promise<FetchedManifest> {
  if (root.manifest.kind !== 'index') return root;
  const hit = root.manifest.manifests.find((d) => platformMatches(d, platform));
  if (!hit) {
    const have = root.manifest.manifests.map((d) => (d.platform ? platformString(d.platform) : d.digest)).join(', ');
    throw new RegfsError('NOT_FOUND', `${src.display}@${root.descriptor.digest} has no manifest for ${platformString(platform)} (it has: ${have || 'none'})`);
  }
  return src.fetchManifest(hit);
}

/**
 * checkOverwrite refuses (DIGEST_CONFLICT) when a destination tag already names a different manifest,
 * unless `force`. A missing tag is fine.
 */
export async function checkOverwrite(dst: ReadableRepository, tags: string[], digest: string, force?: boolean): Promise<void> {
  if (force) return;
  for (const tag of tags) {
    let have: Descriptor;
    try {
      have = await dst.resolve(tag);
    } catch (err) {
      if (isRegfsError(err, 'NOT_FOUND')) continue;
      throw err;
    }
    if (have.digest !== digest) {
      throw new RegfsError('DIGEST_CONFLICT', `${dst.display}:${tag} already points at ${have.digest}, not ${digest}; pass --force to overwrite it`);
    }
  }
}

/**
 * copyGraph copies the manifest `reference` names in `src` (with --platform: one manifest of an index) to
 * `dst` under `tags` (untagged, by digest, when none): index children first, then blobs the destination
 * lacks (mounted when `mountFrom` is set, else streamed and verified), then the exact manifest bytes, so
 * every digest is preserved. With `recursive`, each copied manifest's referrers follow, recursively.
 */
export async function copyGraph(src: ReadableRepository, dst: Repository, reference: string | Descriptor, tags: string[], opts: CopyOptions = {}): Promise<CopyResult> {
  let root = await src.fetchManifest(reference);
  if (opts.platform) root = await selectPlatform(src, root, opts.platform);
  await checkOverwrite(dst, tags, root.descriptor.digest, opts.force);
  const stats: CopyStats = { manifests: 0, blobsPushed: 0, blobsExisting: 0, blobsMounted: 0, bytesPushed: 0, referrers: 0 };
  const done = new Set<string>();
  const emit = opts.onEvent ?? (() => undefined);

  const copyBlob = async (d: Descriptor): Promise<void> => {
    if (done.has(d.digest)) return;
    done.add(d.digest);
    let result: 'pushed' | 'exists' | 'mounted';
    // pushBlob asks whether the blob exists itself: ask first only when a mount may come before it.
    if (opts.mountFrom && (await dst.blobExists(d))) result = 'exists';
    else if (opts.mountFrom && (await dst.mountBlob(d, opts.mountFrom))) result = 'mounted';
    else result = await dst.pushBlob(d, () => src.fetchBlob(d));
    if (result === 'pushed') {
      stats.blobsPushed++;
      stats.bytesPushed += d.size;
    } else if (result === 'mounted') stats.blobsMounted++;
    else stats.blobsExisting++;
    emit({ kind: 'blob', desc: d, result });
  };

  const copyManifest = async (fm: FetchedManifest, tagsHere: string[]): Promise<Descriptor> => {
    const m = fm.manifest;
    if (m.kind === 'index') {
      for (const child of m.manifests) {
        if (done.has(child.digest)) continue;
        await copyManifest(await src.fetchManifest(child), []);
      }
    } else {
      await runLimited([m.config, ...m.layers], opts.concurrency ?? 4, copyBlob);
    }
    done.add(fm.descriptor.digest);
    const desc = await dst.pushManifest(fm.bytes, fm.descriptor.mediaType, tagsHere);
    if (desc.digest !== fm.descriptor.digest) throw new RegfsError('DIGEST_MISMATCH', `${dst.display} stored ${desc.digest} for ${fm.descriptor.digest}`);
    stats.manifests++;
    emit({ kind: 'manifest', desc, result: 'pushed' });
    if (opts.recursive) {
      for (const r of await src.referrers(fm.descriptor)) {
        if (done.has(r.digest)) continue;
        stats.referrers++;
        await copyManifest(await src.fetchManifest(r), []);
      }
    }
    return desc;
  };

  const desc = await copyManifest(root, tags);
  return { desc: { ...desc, ...(root.descriptor.artifactType ? { artifactType: root.descriptor.artifactType } : {}) }, stats };
}

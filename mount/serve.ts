import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { isInside } from '../util/paths.js';
import { BlobCache, type BlobCacheOptions } from '../cache/blob-cache.js';
import { MetadataCache } from '../cache/metadata-cache.js';
import { RegfsError } from '../util/errors.js';
import { isWholeRegistry, type MountRoot } from '../registry/open-mount.js';
import type { Registry } from '../registry/storage.js';
import type { Logger } from '../util/log.js';
import { createHandlers } from './fuse-ops.js';
import type { AttrPolicy } from './attr-policy.js';
import { checkAllowOther, FuseMount, prepareMountpoint, procMountpoints } from './mounter.js';
import type { StagingOptions } from './overlay-tree.js';
import type { RepositoryIndexStats } from './repository-index.js';
import { WritableOverlay } from './writable-overlay.js';
import { Vfs } from './vfs.js';

/** ServeOptions describe one lazy mount. */
export interface ServeOptions {
  registry: Registry;
  /** root is what the mount shows at its root (default: the whole registry); only the whole registry takes staging writes. */
  root?: MountRoot;
  /** repositories are shown at the root whether or not the catalog lists them. */
  repositories?: string[];
  mountpoint: string;
  cacheDir: string;
  metadataTtlMs: number;
  cache: Omit<BlobCacheOptions, 'log'>;
  log: Logger;
  /** allowOther lets other users (and root) use the mount, with the kernel enforcing the modes (default_permissions). */
  allowOther?: boolean;
  /** attrs is the owner and the permission bits the mount shows (default 0644/0755, the process's uid/gid). */
  attrs?: AttrPolicy;
  /** blobs and metadata, when given, are shared caches (the daemon's); the mount then does not close them. */
  blobs?: BlobCache;
  metadata?: MetadataCache;
  /** kernelReadAheadKiB sets the mount's kernel read-ahead (default 0: the kernel's 128 KiB). */
  kernelReadAheadKiB?: number;
  /** staging, when given, makes the mount writable: changes land in this staging folder (the daemon pushes it). */
  staging?: StagingOptions;
}

/** RunningMount is a mounted tree with its caches; stop() unmounts and closes them. */
export interface RunningMount {
  mountpoint: string;
  blobs: BlobCache;
  metadata: MetadataCache;
  /** view tells what the mount knows of its registry: the catalog's state and the repositories found by path. */
  view(): RepositoryIndexStats & { root: MountRoot };
  /** refresh forgets catalog and probe answers (with the metadata cache's listings). */
  refresh(): void;
  stop(): Promise<void>;
  /** done settles once the mount is stopped, by stop() or because it was unmounted from outside. */
  done: Promise<void>;
}

/**
 * serveMount wires a registry to a mountpoint: metadata cache, blob cache, the virtual tree and the
 * FUSE handlers. The cache may not live under the mountpoint (the process must never touch its own mount).
 */
export async function serveMount(opts: ServeOptions): Promise<RunningMount> {
  const mountpoint = path.resolve(opts.mountpoint);
  const cacheDir = path.resolve(opts.cacheDir);
  if (isInside(mountpoint, cacheDir)) {
    throw new RegfsError('INVALID_ARGUMENT', `cache directory ${cacheDir} is inside the mountpoint ${mountpoint}; choose another --cache-dir`);
  }
  if (opts.staging && opts.root && !isWholeRegistry(opts.root)) {
    throw new RegfsError('INVALID_ARGUMENT', `a mount of ${opts.root.kind === 'artifact' ? 'one artifact' : `the namespace ${opts.root.prefix}`} is read-only: staging needs a whole-registry source (HOST or oci:DIR)`);
  }
  if (opts.allowOther) await checkAllowOther();
  await prepareMountpoint(mountpoint, opts.log);
  await fsp.mkdir(cacheDir, { recursive: true, mode: 0o700 });
  const ownsCache = !opts.blobs;
  const blobs = opts.blobs ?? (await BlobCache.open(cacheDir, { ...opts.cache, log: opts.log }));
  const metadata = opts.metadata ?? new MetadataCache({ ttlMs: opts.metadataTtlMs, log: opts.log });
  const vfs = new Vfs({ registry: opts.registry, root: opts.root, repositories: opts.repositories, metadataTtlMs: opts.metadataTtlMs, metadata, blobs, extractDir: blobs.layout.extracted, log: opts.log });
  let writer: WritableOverlay | undefined;
  if (opts.staging) {
    // Staging inherits the mount's privacy: 0600/0700 unless the mount is shared with other users.
    const staging = { ...opts.staging, shared: opts.staging.shared ?? opts.allowOther === true };
    writer = new WritableOverlay({ vfs, registry: opts.registry, metadata, blobs, dropListings: (r) => metadata.dropListings(r), staging, log: opts.log });
    await writer.init();
  }
  const handlers = createHandlers({ tree: writer ?? vfs, blobs, statfsPath: opts.staging?.dir ?? cacheDir, log: opts.log, writer, attrs: opts.attrs });
  let fuse: FuseMount;
  try {
    fuse = await FuseMount.mount(mountpoint, handlers, { allowOther: opts.allowOther, defaultPermissions: opts.allowOther, kernelReadAheadKiB: opts.kernelReadAheadKiB, log: opts.log });
  } catch (err) {
    if (ownsCache) await blobs.close();
    throw err;
  }
  const r = opts.root;
  const shown = r?.kind === 'artifact' ? `${opts.registry.display}/${r.repository}${r.reference.includes(':') ? '@' : ':'}${r.reference}` : r?.prefix ? `${opts.registry.display}/${r.prefix}` : opts.registry.display;
  opts.log.info(`mounted ${shown} at ${mountpoint}`, { cache: cacheDir });
  // Ask the catalog now, so a registry that refuses it or does not answer at all is said at once (never fatal).
  if (opts.root?.kind !== 'artifact') void vfs.checkCatalog();
  else void vfs.lookup('/').catch((err: unknown) => opts.log.warn(`${shown}: ${(err as Error).message}; the mount root answers once it can be read`));
  let settle: () => void = () => undefined;
  const done = new Promise<void>((resolve) => (settle = resolve));
  let stopped: Promise<void> | undefined;
  const stop = (): Promise<void> => {
    stopped ??= (async () => {
      clearInterval(watch);
      await fuse.unmount().catch((e: unknown) => opts.log.debug(`unmount ${mountpoint}: ${(e as Error).message}`));
      if (ownsCache) await blobs.close();
      opts.log.info(`unmounted ${mountpoint}`);
    })().finally(settle);
    return stopped;
  };
  // `regfs unmount` or `fusermount -u` from outside: notice it (from /proc/mounts, never by touching
  // the mountpoint) and shut down instead of lingering with the cache locked.
  const watch = setInterval(() => {
    procMountpoints().then((mps) => {
      if (stopped || mps.some((m) => m.mountpoint === mountpoint)) return;
      opts.log.info(`${mountpoint} was unmounted from outside; stopping`);
      void stop();
    }, () => undefined);
  }, 1000);
  watch.unref();
  return { mountpoint, blobs, metadata, view: () => vfs.status(), refresh: () => vfs.refresh(), stop, done };
}

/**
 * The mount's ports: what the virtual tree needs from the layers below it (the blob cache, the
 * metadata cache) and what the FUSE handlers read from it. Interfaces and one attr builder only.
 */
import type { Digest } from '../registry/digest.js';
import type { Descriptor } from '../registry/descriptor.js';
import type { FetchedManifest, ReadableRepository, Registry } from '../registry/storage.js';

/** BlobReader is what the mount needs from the blob cache (not to be confused with registry's BlobSource, bytes to upload). */
export interface BlobReader {
  read(repo: ReadableRepository, desc: Descriptor, buf: Buffer, offset: number, length: number): Promise<number>;
  ensureBlob(repo: ReadableRepository, desc: Descriptor): Promise<string>;
  pin(digest: Digest): void;
  unpin(digest: Digest): void;
}

/** MetadataSource is what the mount needs from the metadata cache. */
export interface MetadataSource {
  repositories(registry: Registry): Promise<string[]>;
  tags(repo: ReadableRepository): Promise<string[]>;
  manifestByTag(repo: ReadableRepository, tag: string): Promise<FetchedManifest>;
  manifest(repo: ReadableRepository, digest: Digest): Promise<FetchedManifest>;
  /** listingsGeneration, when present, changes whenever cached listings are dropped (after a push, on refresh). */
  readonly listingsGeneration?: number;
}

/** Attr is what getattr reports. */
export interface Attr {
  mode: number;
  size: number;
  mtime: Date;
  atime: Date;
  ctime: Date;
  nlink: number;
  uid: number;
  gid: number;
  blocks: number;
  blksize: number;
  /** exact, when set, keeps mode and owner as given (an image's rootfs/ shows its tar headers, whatever the attr policy). */
  exact?: boolean;
}

/** Resolved is a path looked up in the mount. */
export type Resolved =
  | { type: 'dir'; attr: Attr; list: () => Promise<string[]>; xattrs: Record<string, string> }
  | { type: 'file'; attr: Attr; repo: ReadableRepository; layer: Descriptor; xattrs: Record<string, string> }
  | { type: 'local-file'; attr: Attr; file: string; xattrs: Record<string, string>; /** materialize, when set, makes `file` exist (on open) and returns it. */ materialize?: () => Promise<string> }
  | { type: 'symlink'; attr: Attr; target: string; xattrs: Record<string, string> };

/** Tree is what the FUSE handlers read from: the registry's tree (Vfs), or it overlaid with staged writes. */
export interface Tree {
  lookup(p: string): Promise<Resolved>;
}

const UID = process.getuid?.() ?? 0;
const GID = process.getgid?.() ?? 0;

/** makeAttr builds getattr's answer for an entry owned by the user running the mount. */
export function makeAttr(mode: number, size: number, mtime: Date): Attr {
  return { mode, size, mtime, atime: mtime, ctime: mtime, nlink: (mode & 0o170000) === 0o040000 ? 2 : 1, uid: UID, gid: GID, blocks: Math.ceil(size / 512), blksize: 4096 };
}

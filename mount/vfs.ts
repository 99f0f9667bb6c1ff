import { promises as fsp, constants as C } from 'node:fs';
import path from 'node:path';
import { isDigest, digestHex, type Digest } from '../registry/digest.js';
import type { Descriptor } from '../registry/descriptor.js';
import { artifactTypeOf, type Manifest } from '../registry/manifest.js';
import { Annotation } from '../registry/media-types.js';
import { isRepositoryName, isTag } from '../registry/reference.js';
import { checkTitle, resolveInside } from '../registry/safe-path.js';
import type { FetchedManifest, ReadableRepository, Registry } from '../registry/storage.js';
import { extractTarAtomic } from '../registry/tar-extract.js';
import { createReadStream } from 'node:fs';
import { nullLogger, type Logger } from '../util/log.js';
import { Errno, MountError } from './errno.js';
import { buildManifestTree, type ManifestTree, type TreeDir, type TreeNode } from './manifest-tree.js';

/** BlobSource is what the VFS needs from the blob cache. */
export interface BlobSource {
  read(repo: ReadableRepository, desc: Descriptor, buf: Buffer, offset: number, length: number): Promise<number>;
  ensureBlob(repo: ReadableRepository, desc: Descriptor): Promise<string>;
  pin(digest: Digest): void;
  unpin(digest: Digest): void;
}

/** MetadataSource is what the VFS needs from the metadata cache. */
export interface MetadataSource {
  repositories(registry: Registry): Promise<string[]>;
  tags(repo: ReadableRepository): Promise<string[]>;
  manifestByTag(repo: ReadableRepository, tag: string): Promise<FetchedManifest>;
  manifest(repo: ReadableRepository, digest: Digest): Promise<FetchedManifest>;
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
}

/** Resolved is a path looked up in the mount. */
export type Resolved =
  | { type: 'dir'; attr: Attr; list: () => Promise<string[]>; xattrs: Record<string, string> }
  | { type: 'file'; attr: Attr; repo: ReadableRepository; layer: Descriptor; xattrs: Record<string, string> }
  | { type: 'local-file'; attr: Attr; file: string; xattrs: Record<string, string> }
  | { type: 'symlink'; attr: Attr; target: string; xattrs: Record<string, string> };

const DIR_MODE = 0o040555;
const FILE_MODE = 0o100444;
const LINK_MODE = 0o120777;

const UID = process.getuid?.() ?? 0;
const GID = process.getgid?.() ?? 0;

/** makeAttr builds getattr's answer for an entry owned by the user running the mount. */
export function makeAttr(mode: number, size: number, mtime: Date): Attr {
  return { mode, size, mtime, atime: mtime, ctime: mtime, nlink: (mode & 0o170000) === 0o040000 ? 2 : 1, uid: UID, gid: GID, blocks: Math.ceil(size / 512), blksize: 4096 };
}

/** Tree is what the FUSE handlers read from: the registry's tree (Vfs), or it overlaid with staged writes. */
export interface Tree {
  lookup(p: string): Promise<Resolved>;
}

/** Location is where a mount path falls in the registry's tree (see Vfs.locate). */
export interface Location {
  /** repository is the repository the path is in or names, when there is one. */
  repository?: string;
  /** depth is how many leading components name the repository (or the namespace folders walked). */
  depth: number;
  /** isRepository is true when the path is exactly a repository's folder. */
  isRepository: boolean;
  /** tag is the component after the repository when it is a tag (not a digest); tagExists says whether the registry has it. */
  tag?: string;
  tagExists: boolean;
}

interface RepoTrie {
  children: Map<string, RepoTrie>;
  repo?: string;
}

/** VfsOptions configure the virtual tree. */
export interface VfsOptions {
  registry: Registry;
  metadata: MetadataSource;
  blobs: BlobSource;
  /** extractDir holds directory layers extracted on first access (`<cache>/extracted`). */
  extractDir: string;
  log?: Logger;
}

/**
 * Vfs maps paths of the mount to registry objects: `/<repository path>/<tag>/<title>`, with
 * `/<repo>/sha256:<hex>/...` for any manifest by digest and `/<repo>/:<tag>` for a tag whose name
 * collides with a nested repository. It is kernel-free: FUSE handlers (fuse-ops.ts) call it.
 */
export class Vfs {
  private readonly log: Logger;
  private readonly started = new Date();
  private readonly trees = new Map<string, ManifestTree>();
  private readonly firstSeen = new Map<string, number>();
  private readonly extracting = new Map<string, Promise<string>>();
  private readonly warned = new Set<string>();

  constructor(private readonly opts: VfsOptions) {
    this.log = opts.log ?? nullLogger;
  }

  private attr(mode: number, size: number, mtime: Date): Attr {
    return makeAttr(mode, size, mtime);
  }

  private async trie(): Promise<RepoTrie> {
    const names = await this.opts.metadata.repositories(this.opts.registry);
    const root: RepoTrie = { children: new Map() };
    for (const name of names) {
      if (!isRepositoryName(name)) continue;
      let node = root;
      for (const part of name.split('/')) {
        let next = node.children.get(part);
        if (!next) {
          next = { children: new Map() };
          node.children.set(part, next);
        }
        node = next;
      }
      node.repo = name;
    }
    return root;
  }

  /**
   * mtimeOf is the created annotation when present, else when this mount first saw the manifest; its
   * millisecond part is derived from the digest so a changed manifest always changes mtime (auto_cache).
   */
  private mtimeOf(fm: FetchedManifest): Date {
    const created = Date.parse(fm.manifest.annotations?.[Annotation.created] ?? '');
    let base: number;
    if (Number.isFinite(created)) base = created;
    else {
      base = this.firstSeen.get(fm.descriptor.digest) ?? Date.now();
      this.firstSeen.set(fm.descriptor.digest, base);
    }
    // The previous whole second plus digest-derived milliseconds: never in the future.
    const ms = parseInt(digestHex(fm.descriptor.digest).slice(0, 4), 16) % 1000;
    return new Date((Math.floor(base / 1000) - 1) * 1000 + ms);
  }

  private tree(fm: FetchedManifest): ManifestTree {
    let t = this.trees.get(fm.descriptor.digest);
    if (!t) {
      t = buildManifestTree(fm.manifest);
      for (const w of t.warnings) this.warnOnce(w);
      if (this.trees.size > 5000) this.trees.clear();
      this.trees.set(fm.descriptor.digest, t);
    }
    return t;
  }

  private warnOnce(msg: string): void {
    if (this.warned.has(msg)) return;
    this.warned.add(msg);
    this.log.warn(msg);
  }

  /** locate tells which repository a mount path is in, and whether its next component is an existing tag. */
  async locate(p: string): Promise<Location> {
    const comps = p.split('/').filter((c) => c.length > 0);
    let node = await this.trie();
    let i = 0;
    while (i < comps.length && node.children.has(comps[i]!)) node = node.children.get(comps[i++]!)!;
    if (i === comps.length || !node.repo) return { repository: node.repo, depth: i, isRepository: i === comps.length && !!node.repo, tagExists: false };
    const c = comps[i]!;
    const tag = c.startsWith(':') ? c.slice(1) : c;
    if (isDigest(c) || !isTag(tag)) return { repository: node.repo, depth: i, isRepository: false, tagExists: false };
    const tags = await this.opts.metadata.tags(this.opts.registry.repository(node.repo));
    return { repository: node.repo, depth: i, isRepository: false, tag, tagExists: tags.includes(tag) };
  }

  /** lookup resolves a mount path ("/a/b/c") or throws MountError/RegfsError. */
  async lookup(p: string): Promise<Resolved> {
    const comps = p.split('/').filter((c) => c.length > 0);
    let node = await this.trie();
    let i = 0;
    while (i < comps.length && node.children.has(comps[i]!)) node = node.children.get(comps[i++]!)!;
    if (i === comps.length) return this.repoDir(node);
    if (!node.repo) throw new MountError(Errno.ENOENT, `no such repository path ${p}`);
    const repo = this.opts.registry.repository(node.repo);
    const c = comps[i]!;
    let fm: FetchedManifest;
    if (isDigest(c)) fm = await this.opts.metadata.manifest(repo, c);
    else {
      const tag = c.startsWith(':') ? c.slice(1) : c;
      if (!isTag(tag)) throw new MountError(Errno.ENOENT, `${c} is not a tag`);
      const tags = await this.opts.metadata.tags(repo);
      if (!tags.includes(tag)) throw new MountError(Errno.ENOENT, `no tag ${tag} in ${node.repo}`);
      fm = await this.opts.metadata.manifestByTag(repo, tag);
    }
    return this.inManifest(repo, fm, comps.slice(i + 1));
  }

  private repoDir(node: RepoTrie): Resolved {
    return {
      type: 'dir',
      attr: this.attr(DIR_MODE, 0, this.started),
      xattrs: node.repo ? { 'user.oci.repository': node.repo } : {},
      list: async () => {
        const names = [...node.children.keys()];
        if (node.repo) {
          const tags = await this.opts.metadata.tags(this.opts.registry.repository(node.repo));
          for (const t of tags) names.push(node.children.has(t) ? `:${t}` : t);
        }
        return names.sort();
      },
    };
  }

  private async inManifest(repo: ReadableRepository, fm: FetchedManifest, rest: string[]): Promise<Resolved> {
    const mtime = this.mtimeOf(fm);
    let dir: TreeDir = this.tree(fm).root;
    for (let j = 0; j < rest.length; j++) {
      const next: TreeNode | undefined = dir.children.get(rest[j]!);
      if (!next) throw new MountError(Errno.ENOENT, `no ${rest[j]} in ${fm.descriptor.digest}`);
      if (next.kind === 'dir') {
        dir = next;
        continue;
      }
      if (next.kind === 'child') {
        const child = await this.opts.metadata.manifest(repo, next.desc.digest);
        return this.inManifest(repo, child, rest.slice(j + 1));
      }
      if (next.kind === 'file') {
        if (j !== rest.length - 1) throw new MountError(Errno.ENOTDIR, `${rest[j]} is a file`);
        return { type: 'file', attr: this.attr(FILE_MODE, next.layer.size, mtime), repo, layer: next.layer, xattrs: layerXattrs(next.layer) };
      }
      return this.inLayerDir(repo, next.layer, next.prefix, rest.slice(j + 1), mtime);
    }
    return { type: 'dir', attr: this.attr(DIR_MODE, 0, mtime), xattrs: manifestXattrs(fm.descriptor, fm.manifest), list: async () => [...dir.children.keys()].sort() };
  }

  /** extracted makes sure a directory layer is extracted under extractDir and returns its root. */
  private extracted(repo: ReadableRepository, layer: Descriptor, prefix: string): Promise<string> {
    const key = layer.digest;
    let p = this.extracting.get(key);
    if (!p) {
      p = (async () => {
        const target = path.join(this.opts.extractDir, digestHex(layer.digest));
        try {
          await fsp.access(path.join(target, '.regfs-complete'));
          return target;
        } catch {
          // not extracted yet
        }
        const blob = await this.opts.blobs.ensureBlob(repo, layer);
        await fsp.mkdir(this.opts.extractDir, { recursive: true, mode: 0o700 });
        const gzip = layer.mediaType.endsWith('gzip');
        await extractTarAtomic(createReadStream(blob), target, { gzip, stripPrefix: prefix });
        await fsp.writeFile(path.join(target, '.regfs-complete'), '');
        return target;
      })();
      p.catch(() => this.extracting.delete(key));
      this.extracting.set(key, p);
    }
    return p;
  }

  private async inLayerDir(repo: ReadableRepository, layer: Descriptor, prefix: string, rest: string[], mtime: Date): Promise<Resolved> {
    const root = await this.extracted(repo, layer, prefix);
    if (rest.length && rest[0] === '.regfs-complete') throw new MountError(Errno.ENOENT, 'hidden');
    const rel = rest.length ? checkTitle(rest.join('/')) : '.';
    // Every component above the last must be a real directory; the last may be a symlink (shown as one).
    const real = rest.length ? await resolveInside(root, path.posix.dirname(rel)).then((d) => path.join(d, path.posix.basename(rel)), () => undefined) : root;
    const st = real ? await fsp.lstat(real).catch(() => undefined) : undefined;
    if (!real || !st) throw new MountError(Errno.ENOENT, `no ${rel} in layer ${layer.digest}`);
    const xattrs = rest.length ? {} : layerXattrs(layer);
    const m = rest.length ? st.mtime : mtime;
    if (st.isDirectory()) {
      return { type: 'dir', attr: this.attr(DIR_MODE, 0, m), xattrs, list: async () => (await fsp.readdir(real)).filter((n) => n !== '.regfs-complete').sort() };
    }
    if (st.isSymbolicLink()) return { type: 'symlink', attr: this.attr(LINK_MODE, st.size, m), target: await fsp.readlink(real), xattrs };
    if (st.isFile()) return { type: 'local-file', attr: this.attr(FILE_MODE, st.size, m), file: real, xattrs };
    throw new MountError(Errno.ENOENT, `unsupported entry ${rel}`);
  }
}

function layerXattrs(layer: Descriptor): Record<string, string> {
  const x: Record<string, string> = { 'user.oci.digest': layer.digest, 'user.oci.mediatype': layer.mediaType };
  for (const [k, v] of Object.entries(layer.annotations ?? {})) x[`user.oci.annotation.${k}`] = v;
  return x;
}

function manifestXattrs(desc: Descriptor, m: Manifest): Record<string, string> {
  const x: Record<string, string> = { 'user.oci.manifest.digest': desc.digest, 'user.oci.manifest.mediatype': desc.mediaType };
  const at = artifactTypeOf(m);
  if (at) x['user.oci.artifacttype'] = at;
  for (const [k, v] of Object.entries(m.annotations ?? {})) x[`user.oci.annotation.${k}`] = v;
  return x;
}

/** openFlagsWritable tells whether open flags ask for writing. */
export function openFlagsWritable(flags: number): boolean {
  return (flags & 3) !== C.O_RDONLY || (flags & (C.O_TRUNC | C.O_APPEND | C.O_CREAT)) !== 0;
}

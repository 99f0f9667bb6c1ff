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
import type { MountRoot } from '../registry/open-mount.js';
import { RegfsError } from '../util/errors.js';
import { nullLogger, type Logger } from '../util/log.js';
import { Errno, MountError } from './errno.js';
import { buildManifestTree, type ManifestTree, type TreeDir, type TreeNode } from './manifest-tree.js';
import { makeAttr, type Attr, type BlobReader, type MetadataSource, type Resolved } from './ports.js';
import { LayerTocStore } from '../cache/layer-toc.js';
import { ImageView, isImageManifest } from './image-view.js';
import { RepositoryIndex, type RepositoryIndexStats } from './repository-index.js';
import { fallbackTag } from '../registry/remote.js';
import { REFERRERS_DIR, ReferrersView } from './referrers-view.js';

const DIR_MODE = 0o040555;
const FILE_MODE = 0o100444;
const LINK_MODE = 0o120777;

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

/**
 * MAX_GUESSED_LEVELS is how many unknown folders deep a path may go, without a listing catalog,
 * before a name must be a repository: `team/app/web` is reachable by path, `a/b/c/d` needs
 * `repositories:` (or a mount of `HOST/a`).
 */
const MAX_GUESSED_LEVELS = 2;

/** SHADOW_PROBES bounds the tag lists asked to tell whether nested repositories hide a tag of the same name. */
const SHADOW_PROBES = 8;

interface RepoTrie {
  children: Map<string, RepoTrie>;
  repo?: string;
}

/** Walk is where a registry path falls: a folder (known, or a possible namespace), a tag or digest of a repository, or nothing. */
type Walk =
  | { kind: 'folder'; node: RepoTrie; depth: number; possible: boolean; known?: number }
  | { kind: 'in-repo'; repo: string; depth: number; tag?: string; digest?: Digest }
  | { kind: 'missing'; node: RepoTrie; depth: number; reason: string; tag?: string };

/** VfsOptions configure the virtual tree. */
export interface VfsOptions {
  registry: Registry;
  metadata: MetadataSource;
  blobs: BlobReader;
  /** root is what the mount shows at its root (default: the whole registry). */
  root?: MountRoot;
  /** repositories are names shown at the root whether or not the catalog lists them (full repository paths). */
  repositories?: string[];
  /** metadataTtlMs is how long catalog and probe answers are trusted (default 30 s). */
  metadataTtlMs?: number;
  /** extractDir holds directory layers extracted on first access (`<cache>/extracted`). */
  extractDir: string;
  /** tocDir and filesDir hold image layer TOCs and their extracted files (default: `tocs/`, `files/` beside extractDir). */
  tocDir?: string;
  filesDir?: string;
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
  private readonly index: RepositoryIndex;
  private readonly root: MountRoot;
  /** prefix is the root's repository path, split (empty for the whole registry). */
  private readonly prefix: string[];
  private trieCache: { version: number; trie: RepoTrie } | undefined;
  private readonly referrers: ReferrersView;
  private readonly images: ImageView;

  constructor(private readonly opts: VfsOptions) {
    this.log = opts.log ?? nullLogger;
    this.root = opts.root ?? { kind: 'tree', prefix: '' };
    this.prefix = this.root.kind === 'tree' ? this.root.prefix.split('/').filter((c) => c.length > 0) : [];
    this.referrers = new ReferrersView(opts.metadata, opts.metadataTtlMs ?? 30_000);
    const cacheRoot = path.dirname(opts.extractDir);
    // The blob cache's store (counted and evicted with its blobs, shared by the daemon's mounts), else one of our own.
    const tocs = opts.blobs.layerTocs ?? new LayerTocStore(opts.tocDir ?? path.join(cacheRoot, 'tocs'), opts.filesDir ?? path.join(cacheRoot, 'files'), undefined, (m) => this.warnOnce(m));
    this.images = new ImageView({ tocs, log: this.log });
    this.index = new RepositoryIndex({ registry: opts.registry, metadata: opts.metadata, repositories: opts.repositories, ttlMs: opts.metadataTtlMs ?? 30_000, log: this.log });
  }

  private attr(mode: number, size: number, mtime: Date): Attr {
    return makeAttr(mode, size, mtime);
  }

  /** status is the mount's view of its registry: the catalog's state and the repositories found by path. */
  status(): RepositoryIndexStats & { root: MountRoot } {
    return { root: this.root, ...this.index.stats() };
  }

  /** checkCatalog asks the catalog now (at mount time, so a refusal or an unreachable registry is said at once); it never throws. */
  checkCatalog(): Promise<void> {
    return this.index.refreshCatalog();
  }

  /** refresh forgets catalog and probe answers (SIGHUP, `regfs refresh`). */
  refresh(): void {
    this.index.forget();
  }

  /** trie is the tree of known repository names (catalog ∪ configured ∪ found), rebuilt only when they change. */
  private async trie(): Promise<RepoTrie> {
    const names = await this.index.names();
    if (this.trieCache?.version === this.index.version) return this.trieCache.trie;
    const root: RepoTrie = { children: new Map() };
    for (const name of names) {
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
    this.trieCache = { version: this.index.version, trie: root };
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

  /**
   * walk finds where a registry path (the mount's prefix and the path below it) falls, without the
   * catalog: known names first, then the repository's tags, then probes of unknown names (each probed
   * at most once per TTL). Without a listing catalog, an unknown name that is not a repository is a
   * possible namespace (an empty folder) up to MAX_GUESSED_LEVELS below the last known folder, never
   * below a repository; past that it is ENOENT. The mount root is always a folder. A name that is not
   * a valid repository path is never sent.
   */
  private async walk(full: string[], guard = 0): Promise<Walk> {
    const trie = await this.trie();
    let node = trie;
    let i = 0;
    while (i < full.length) {
      const next = node.children.get(full[i]!);
      if (!next || (node.repo && i >= this.prefix.length && !(await this.shadows(node, full[i]!)))) break;
      node = next;
      i++;
    }
    if (i === full.length) return { kind: 'folder', node, depth: i, possible: false };
    const c = full[i]!;
    const tag = c.startsWith(':') ? c.slice(1) : c;
    const missing = (reason: string): Walk => ({ kind: 'missing', node, depth: i, reason, ...(node.repo && isTag(tag) && !isDigest(c) ? { tag } : {}) });
    if (node.repo && i >= this.prefix.length) {
      if (isDigest(c)) return { kind: 'in-repo', repo: node.repo, depth: i, digest: c };
      if (isTag(tag) && (await this.opts.metadata.tags(this.opts.registry.repository(node.repo))).includes(tag)) return { kind: 'in-repo', repo: node.repo, depth: i, tag };
      if (c.startsWith(':') || !isTag(tag)) return missing(`no tag ${tag} in ${node.repo}`);
    }
    // Guessed namespace levels: none below a repository or when the catalog lists, else MAX_GUESSED_LEVELS.
    const allowed = this.index.authoritative || node.repo ? 0 : MAX_GUESSED_LEVELS;
    let guessed = 0;
    for (let j = i + 1; j <= full.length; j++) {
      const name = full.slice(0, j).join('/');
      if (!isRepositoryName(name)) return missing(`${name} is not a valid repository path`);
      if (j < this.prefix.length) continue;
      if (guard <= full.length && (await this.index.probe(name))) return this.walk(full, guard + 1);
      if (j === this.prefix.length) {
        if (j === full.length) return { kind: 'folder', node: { children: new Map() }, depth: j, possible: true, known: i };
        continue;
      }
      if (++guessed > allowed) return missing(node.repo && j === i + 1 ? `no tag or repository ${c} in ${node.repo}` : `no repository ${name}`);
      if (j === full.length) return { kind: 'folder', node: { children: new Map() }, depth: j, possible: true, known: i };
    }
    return missing(`no ${full.join('/')}`);
  }

  /**
   * shadows tells whether the known repositories below `node/name` hide the tag `name` of node's
   * repository (that tag is then `:name`). Only repositories with at least one tag do: registries list a
   * repository once a blob was uploaded to it (an abandoned push, or a folder that looked like a tag
   * folder for a moment during `cp -r`), and such an empty one must not hide a real tag. Asked only when
   * `name` is a tag of node's repository; at most SHADOW_PROBES tag lists, past that it shadows. A tag list
   * that fails other than "not found" counts as tags (the repository wins, as before).
   */
  private async shadows(node: RepoTrie, name: string): Promise<boolean> {
    const child = node.children.get(name);
    if (!child || !isTag(name)) return !!child;
    if (!(await this.opts.metadata.tags(this.opts.registry.repository(node.repo!)).catch(() => [] as string[])).includes(name)) return true;
    const repos: string[] = [];
    const collect = (n: RepoTrie): void => {
      if (n.repo) repos.push(n.repo);
      for (const c of n.children.values()) if (repos.length <= SHADOW_PROBES) collect(c);
    };
    collect(child);
    if (repos.length > SHADOW_PROBES) return true;
    for (const r of repos) {
      try {
        if ((await this.opts.metadata.tags(this.opts.registry.repository(r))).length > 0) return true;
      } catch (err) {
        if (!(err instanceof RegfsError && err.code === 'NOT_FOUND')) return true;
      }
    }
    return false;
  }

  private full(p: string): string[] {
    return [...this.prefix, ...p.split('/').filter((c) => c.length > 0)];
  }

  /** locate tells which repository a mount path is in, and whether its next component is an existing tag (for the staging overlay). */
  async locate(p: string): Promise<Location> {
    if (this.root.kind === 'artifact') return { depth: 0, isRepository: false, tagExists: false };
    const full = this.full(p);
    const w = await this.walk(full);
    const depth = w.depth - this.prefix.length;
    // A possible namespace is not known to be one: it counts only up to the last known folder.
    if (w.kind === 'folder') return { repository: w.node.repo, depth: w.possible ? Math.max(0, (w.known ?? 0) - this.prefix.length) : depth, isRepository: !!w.node.repo, tagExists: false };
    if (w.kind === 'in-repo') return { repository: w.repo, depth, isRepository: false, ...(w.tag !== undefined ? { tag: w.tag } : {}), tagExists: w.tag !== undefined };
    return { repository: w.node.repo, depth, isRepository: false, ...(w.tag !== undefined ? { tag: w.tag } : {}), tagExists: false };
  }

  /** lookup resolves a mount path ("/a/b/c") or throws MountError/RegfsError. */
  async lookup(p: string): Promise<Resolved> {
    if (this.root.kind === 'artifact') {
      const repo = this.opts.registry.repository(this.root.repository);
      const ref = this.root.reference;
      const fm = isDigest(ref) ? await this.opts.metadata.manifest(repo, ref) : await this.opts.metadata.manifestByTag(repo, ref);
      return this.inManifest(repo, fm, p.split('/').filter((c) => c.length > 0));
    }
    const full = this.full(p);
    const w = await this.walk(full);
    if (w.kind === 'missing') throw new MountError(Errno.ENOENT, w.reason);
    if (w.kind === 'folder') return this.repoDir(w.node, w.possible);
    const repo = this.opts.registry.repository(w.repo);
    let fm: FetchedManifest;
    if (w.digest === undefined) fm = await this.opts.metadata.manifestByTag(repo, w.tag!);
    else {
      const c = w.digest;
      try {
        fm = await this.opts.metadata.manifest(repo, c);
      } catch (err) {
        // A blob's digest (or any digest that is not a manifest) names no folder. Registries differ in
        // how they refuse it (distribution 2.8 answers 500), so a failure is checked against the blob.
        if (err instanceof RegfsError && (err.code === 'INVALID_MANIFEST' || err.code === 'NOT_FOUND')) throw new MountError(Errno.ENOENT, `no manifest ${c} in ${w.repo}`);
        if (err instanceof RegfsError && err.code === 'REGISTRY_ERROR' && (await repo.statBlob(c).then(() => true, () => false))) {
          throw new MountError(Errno.ENOENT, `${c} is a blob of ${w.repo}, not a manifest`);
        }
        throw err;
      }
    }
    return this.inManifest(repo, fm, full.slice(w.depth + 1));
  }

  private repoDir(node: RepoTrie, possible: boolean): Resolved {
    const xattrs: Record<string, string> = node.repo ? { 'user.oci.repository': node.repo } : possible ? { 'user.regfs.namespace': 'possible' } : {};
    return {
      type: 'dir',
      attr: this.attr(DIR_MODE, 0, this.started),
      xattrs,
      list: async () => {
        const names = [...node.children.keys()];
        if (node.repo) {
          const tags = await this.opts.metadata.tags(this.opts.registry.repository(node.repo));
          // A hostile tag list may hold '.', '..', names with '/' (not tags: filtered) and duplicates (listed once).
          for (const t of new Set(tags)) if (isTag(t)) names.push(node.children.has(t) && (await this.shadows(node, t)) ? `:${t}` : t);
        }
        return [...new Set(names)].sort();
      },
    };
  }

  private async inManifest(repo: ReadableRepository, fm: FetchedManifest, rest: string[]): Promise<Resolved> {
    const mtime = this.mtimeOf(fm);
    if (isImageManifest(fm.manifest)) {
      if (rest[0] === REFERRERS_DIR) return this.inReferrers(repo, fm, rest.slice(1), mtime);
      const r = await this.images.resolve(repo, fm, rest, mtime, manifestXattrs(fm.descriptor, fm.manifest));
      if (rest.length > 0 || r.type !== 'dir') return r;
      return { ...r, list: async () => this.withReferrers(repo, fm, await r.list()) };
    }
    let dir: TreeDir = this.tree(fm).root;
    const root = dir;
    if (rest[0] === REFERRERS_DIR && !root.children.has(REFERRERS_DIR)) return this.inReferrers(repo, fm, rest.slice(1), mtime);
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
    const list = async (): Promise<string[]> => {
      const names = [...dir.children.keys()];
      // A manifest's root lists `.referrers` when the repository's (cached) tag list holds its referrers
      // tag `sha256-<hex>`: no request per listing, so ls -lR stays at its request bound. With the
      // referrers API and no such tag, `.referrers` is still there by name (lookup asks the registry).
      if (dir === root && !root.children.has(REFERRERS_DIR)) return this.withReferrers(repo, fm, names);
      return names.sort();
    };
    return { type: 'dir', attr: this.attr(DIR_MODE, 0, mtime), xattrs: manifestXattrs(fm.descriptor, fm.manifest), list };
  }

  /** withReferrers adds `.referrers` to a manifest root's names when the cached tag list holds the subject's `sha256-<hex>` tag. */
  private async withReferrers(repo: ReadableRepository, fm: FetchedManifest, names: string[]): Promise<string[]> {
    const tags = await this.opts.metadata.tags(repo).catch(() => [] as string[]);
    if (tags.includes(fallbackTag(fm.descriptor.digest)) && !names.includes(REFERRERS_DIR)) names.push(REFERRERS_DIR);
    return names.sort();
  }

  /** inReferrers resolves `<manifest>/.referrers[/<name>/...]`: each referrer is browsable like any manifest (with its own `.referrers`). */
  private async inReferrers(repo: ReadableRepository, fm: FetchedManifest, rest: string[], mtime: Date): Promise<Resolved> {
    const refs = await this.referrers.named(repo, fm.descriptor);
    if (!refs.size) throw new MountError(Errno.ENOENT, `${fm.descriptor.digest} has no referrers`);
    if (!rest.length) return { type: 'dir', attr: this.attr(DIR_MODE, 0, mtime), xattrs: { 'user.oci.subject.digest': fm.descriptor.digest }, list: async () => [...refs.keys()].sort() };
    const d = refs.get(rest[0]!);
    if (!d) throw new MountError(Errno.ENOENT, `no referrer ${rest[0]} of ${fm.descriptor.digest}`);
    return this.inManifest(repo, await this.opts.metadata.manifest(repo, d.digest), rest.slice(1));
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
        // One unsafe entry (a symlink leaving the layer, say) is hidden, not the whole directory: logged once,
        // as the extraction is kept in extractDir.
        const onUnsafeEntry = (name: string, reason: string): void => this.log.warn(`hiding tar entry ${JSON.stringify(name)} of layer ${layer.digest}: ${reason}`);
        await extractTarAtomic(createReadStream(blob), target, { gzip, stripPrefix: prefix, onUnsafeEntry });
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

import { constants as C, promises as fsp, type Dirent } from 'node:fs';
import path from 'node:path';
import type { StagingHooks } from '../staging/hooks.js';
import { fingerprint, isIgnoredName, isTagFolderListing, scanTagDir, TAG_MARKER, WRITES_DIR } from '../staging/layout.js';
import { materialiseTag } from '../staging/materialise.js';
import { TagLocks } from '../staging/tag-lock.js';
import { isDigest } from '../registry/digest.js';
import type { Descriptor } from '../registry/descriptor.js';
import { isRegfsError } from '../util/errors.js';
import { Annotation, EMPTY_CONFIG, MediaType } from '../registry/media-types.js';
import { isRepositoryName, isTag } from '../registry/reference.js';
import { checkTitle } from '../registry/safe-path.js';
import type { FetchedManifest, Registry } from '../registry/storage.js';
import { deleteTagAlone } from '../registry/tag-ops.js';
import { nullLogger, type Logger } from '../util/log.js';
import { Errno, MountError, toErrno } from './errno.js';
import { buildManifestTree } from './manifest-tree.js';
import { FILE_W, tempFile, WriteHandles, type WriteHandle, type WriteTarget } from './write-handle.js';
import { makeAttr, type BlobSource, type MetadataSource, type Resolved, type Tree, type Vfs } from './vfs.js';

/** StagingOptions make a mount writable: writes land in the staging folder `dir`, which the daemon pushes. */
export interface StagingOptions {
  dir: string;
  /** allowDelete lets rm, rmdir and rename remove what is published (`--allow-delete`). */
  allowDelete: boolean;
  hooks: StagingHooks;
}

/** OverlayTreeOptions wire an OverlayTree to the registry's tree and caches. */
export interface OverlayTreeOptions {
  vfs: Vfs;
  registry: Registry;
  metadata: MetadataSource;
  blobs: BlobSource;
  /** dropListings forgets cached tag lists of a repository (after a tag was deleted). */
  dropListings(repository: string): void;
  staging: StagingOptions;
  log?: Logger;
}

/** TagFolder is a tag's folder: in staging (`dir`), and at `depth` components of the mount path. */
interface TagFolder {
  repository: string;
  tag: string;
  dir: string;
  depth: number;
  /** remote is true when the registry has the tag, false when it does not, undefined when not asked yet. */
  remote?: boolean;
}

const DIR_W = 0o040755;
const MEMO_MS = 1000;

const splitPath = (p: string): string[] => p.split('/').filter((c) => c.length > 0);
const keyOf = (comps: string[]): string => `/${comps.join('/')}`;
/** isFixedName: digest and `:tag` components address content read-only. */
const isFixedName = (c: string): boolean => isDigest(c) || c.startsWith(':');
const fail = (errno: number, msg: string): MountError => new MountError(errno, msg);

/**
 * OverlayTree is a mount's tree with writes: the registry's tree (Vfs) overlaid with the mount's
 * staging folder. Writes go to `<staging>/<repository>/<tag>/...` (through a temp file renamed into
 * place when closed); the daemon pushes each tag folder once it is quiet. A tag folder is shown from
 * staging while it differs from what was last pushed ("overlaid"), and from the registry once the push
 * has landed. Semantics and errnos: docs/mount.md.
 */
export class OverlayTree implements Tree {
  private readonly root: string;
  private readonly tmpRoot: string;
  private readonly log: Logger;
  private readonly handles: WriteHandles;
  private readonly tags = new TagLocks();
  /** fsMemo caches staging folder facts (is a folder, is a tag folder); landedMemo whether a tag folder landed. */
  private readonly fsMemo = new Map<string, { at: number; value: Promise<boolean> }>();
  private readonly landedMemo = new Map<string, { at: number; value: Promise<boolean> }>();
  private readonly warned = new Set<string>();

  constructor(private readonly o: OverlayTreeOptions) {
    this.root = path.resolve(o.staging.dir);
    this.tmpRoot = path.join(this.root, WRITES_DIR);
    this.log = o.log ?? nullLogger;
    this.handles = new WriteHandles({
      tmpRoot: this.tmpRoot,
      blobs: o.blobs,
      invalidate: () => this.invalidate(),
      touch: (p) => this.touch(p),
      changedNow: (comps) => this.changedNow(comps),
      changed: () => o.staging.hooks.changed(),
    });
  }

  /** init creates the staging folder and drops files a crash left half-written. */
  async init(): Promise<void> {
    await fsp.mkdir(this.root, { recursive: true });
    const left = await fsp.readdir(this.tmpRoot).catch(() => []);
    if (left.length) this.log.warn(`removing ${left.length} unfinished write(s) through the mount left in ${this.tmpRoot} by a crash`);
    await fsp.rm(this.tmpRoot, { recursive: true, force: true });
    await fsp.mkdir(this.tmpRoot, { recursive: true, mode: 0o700 });
  }

  // ---- reading: the overlay -------------------------------------------------------------------

  /** lookup resolves a mount path: a file being written, a staged (not yet landed) path, else the registry's tree. */
  async lookup(p: string): Promise<Resolved> {
    const comps = splitPath(p);
    if (this.isReserved(comps)) throw fail(Errno.ENOENT, `${p} is reserved`);
    const w = this.handles.writing(keyOf(comps));
    if (w) return this.handles.resolved(w);
    if (comps.some(isFixedName)) return this.o.vfs.lookup(p);
    const T = await this.stagedTag(comps);
    if (T) {
      if (await this.overlaid(T)) return this.stagedResolved(comps, T);
      return this.writable(await this.o.vfs.lookup(p));
    }
    const remote = await this.remoteLookup(p);
    if (remote && remote.type !== 'dir') return this.writable(remote);
    if (!(await this.isDir(this.staged(comps)))) {
      if (remote) return this.writable(remote);
      throw fail(Errno.ENOENT, `no ${p}`);
    }
    if (!remote) return this.stagedResolved(comps);
    return {
      ...remote,
      attr: { ...remote.attr, mode: DIR_W },
      list: async () => {
        const names = await remote.list();
        const seen = new Set(names);
        return [...names, ...(await this.stagedNames(comps, undefined, seen)).filter((n) => !seen.has(n))].sort();
      },
    };
  }

  private async remoteLookup(p: string): Promise<Resolved | undefined> {
    try {
      return await this.o.vfs.lookup(p);
    } catch (err) {
      if (toErrno(err) === Errno.ENOENT) return undefined;
      throw err;
    }
  }

  private staged(comps: string[]): string {
    return path.join(this.root, ...comps);
  }

  private isReserved(comps: string[]): boolean {
    return comps[0] === WRITES_DIR || comps.includes(TAG_MARKER);
  }

  private cached(memo: Map<string, { at: number; value: Promise<boolean> }>, key: string, fn: () => Promise<boolean>): Promise<boolean> {
    const hit = memo.get(key);
    if (hit && Date.now() - hit.at < MEMO_MS) return hit.value;
    if (memo.size > 10_000) memo.clear();
    const value = fn();
    memo.set(key, { at: Date.now(), value });
    return value;
  }

  /** invalidate forgets the cached folder facts (after every change through the mount; cheap to learn again). */
  private invalidate(): void {
    this.fsMemo.clear();
  }

  /**
   * changedTag notes a change through the mount in a tag folder: it is not what was pushed (no need to
   * fingerprint it again for a while), and queued pushes of folders below it are stale.
   */
  private changedTag(T: TagFolder): void {
    this.landedMemo.set(T.dir, { at: Date.now(), value: Promise.resolve(false) });
    this.o.staging.hooks.changed(T.dir);
  }

  private isDir(p: string): Promise<boolean> {
    return this.cached(this.fsMemo, `d${p}`, async () => (await fsp.lstat(p).catch(() => undefined))?.isDirectory() ?? false);
  }

  private isTagFolderDir(dir: string): Promise<boolean> {
    return this.cached(this.fsMemo, `t${dir}`, async () => isTagFolderListing(await fsp.readdir(dir, { withFileTypes: true }).catch(() => [] as Dirent[])));
  }

  /** stagedTag finds the tag folder along a path in staging, by the staging rule (first folder at depth >= 2 holding a file or the marker). */
  private async stagedTag(comps: string[]): Promise<TagFolder | undefined> {
    for (let k = 1; k <= comps.length; k++) {
      const dir = this.staged(comps.slice(0, k));
      if (!(await this.isDir(dir))) return undefined;
      if (k >= 2 && (await this.isTagFolderDir(dir))) {
        const repository = comps.slice(0, k - 1).join('/');
        const tag = comps[k - 1]!;
        return isRepositoryName(repository) && isTag(tag) ? { repository, tag, dir, depth: k } : undefined;
      }
    }
    return undefined;
  }

  /** tagOf is the tag folder a path is in (or is): from staging, else the registry's tag. */
  private async tagOf(comps: string[]): Promise<TagFolder | undefined> {
    const s = await this.stagedTag(comps);
    if (s) return s;
    const loc = await this.o.vfs.locate(keyOf(comps));
    if (!loc.repository || loc.tag === undefined || !loc.tagExists || comps[loc.depth] !== loc.tag) return undefined;
    const depth = loc.depth + 1;
    return { repository: loc.repository, tag: loc.tag, dir: this.staged(comps.slice(0, depth)), depth, remote: true };
  }

  /** landed: the tag folder's content is what was last pushed (an empty folder never is). */
  private landed(T: TagFolder): Promise<boolean> {
    return this.cached(this.landedMemo, T.dir, async () => {
      const entries = await scanTagDir(T.dir);
      return entries.length > 0 && this.o.staging.hooks.landed(T.repository, T.tag, fingerprint(entries));
    });
  }

  /** overlaid: the mount shows this tag from staging (being changed, or not pushed yet). */
  private async overlaid(T: TagFolder): Promise<boolean> {
    return this.tags.held(T.dir) || !(await this.landed(T));
  }

  private writable(r: Resolved): Resolved {
    if (r.type === 'dir') return { ...r, attr: { ...r.attr, mode: DIR_W } };
    if (r.type === 'file' || r.type === 'local-file') return { ...r, attr: { ...r.attr, mode: FILE_W } };
    return r;
  }

  private async stagedResolved(comps: string[], T?: TagFolder): Promise<Resolved> {
    const file = this.staged(comps);
    const st = await fsp.lstat(file).catch(() => undefined);
    const inTag = T !== undefined && comps.length > T.depth;
    if (st?.isFile() && inTag) return { type: 'local-file', attr: makeAttr(FILE_W, st.size, st.mtime), file, xattrs: {} };
    if (st?.isDirectory()) {
      const xattrs: Record<string, string> = T && comps.length === T.depth ? { 'user.regfs.staged': `${T.repository}:${T.tag}` } : {};
      return { type: 'dir', attr: makeAttr(DIR_W, 0, st.mtime), xattrs, list: async () => (await this.stagedNames(comps, T)).sort() };
    }
    throw fail(Errno.ENOENT, `no ${keyOf(comps)}`);
  }

  /**
   * stagedNames lists a staged folder: inside a tag folder every file and folder; above tag level only
   * folders with valid names, leaving out landed tag folders the registry no longer has. Files being
   * written there are added.
   */
  private async stagedNames(comps: string[], T?: TagFolder, remoteNames?: Set<string>): Promise<string[]> {
    const list = await fsp.readdir(this.staged(comps), { withFileTypes: true }).catch(() => [] as Dirent[]);
    const names: string[] = [];
    const inTag = T !== undefined && comps.length >= T.depth;
    for (const e of list) {
      if (this.isReserved([...comps, e.name])) continue;
      if (inTag) {
        if (e.isFile() || e.isDirectory()) names.push(e.name);
        continue;
      }
      if (!e.isDirectory() || isIgnoredName(e.name)) continue;
      const child = [...comps, e.name];
      if (child.length >= 2 && !remoteNames?.has(e.name)) {
        const t = await this.stagedTag(child);
        if (t && t.depth === child.length && !(await this.overlaid(t))) continue;
      }
      names.push(e.name);
    }
    for (const n of this.handles.namesIn(keyOf(comps))) if (!names.includes(n)) names.push(n);
    return names;
  }

  // ---- preparing a tag for a change -----------------------------------------------------------

  /**
   * hold makes a tag folder ready for a change and keeps it overlaid until the returned release is
   * called: a tag that is not in staging, or whose staged copy already landed, is first copied from the
   * registry (so the next manifest = the registry's files + this change).
   */
  private hold(T: TagFolder): Promise<() => void> {
    const prepare = async (): Promise<void> => {
      this.invalidate();
      const staged = await this.isTagFolderDir(T.dir);
      if (!staged) {
        if (T.remote) await this.materialise(T);
        else await fsp.mkdir(T.dir, { recursive: true });
      } else if ((await this.landed(T)) && (await this.remoteHasTag(T))) {
        await this.materialise(T);
      }
    };
    return this.tags.hold(T.dir, prepare, () => this.invalidate());
  }

  private async remoteHasTag(T: TagFolder): Promise<boolean> {
    try {
      return (await this.o.metadata.tags(this.o.registry.repository(T.repository))).includes(T.tag);
    } catch (err) {
      if (isRegfsError(err) && err.code === 'NOT_FOUND') return false;
      throw err;
    }
  }

  /** rebuildable returns the layers of a tag the staging rules can push again, or refuses with EROFS. */
  private rebuildable(T: TagFolder, fm: FetchedManifest): Array<{ layer: Descriptor; title: string }> {
    const m = fm.manifest;
    const ref = `${T.repository}:${T.tag}`;
    let why: string | undefined;
    if (m.kind === 'index') why = 'it is an index (one manifest per platform)';
    else if (m.subject) why = 'it refers to another manifest (subject), which a push from staging would drop';
    else if (m.config.digest !== EMPTY_CONFIG.digest) why = `its config blob (${m.config.mediaType}) would be lost`;
    else if (m.layers.some((l) => l.annotations?.[Annotation.title] === undefined)) why = 'some of its layers have no file name (title annotation)';
    else why = buildManifestTree(m).warnings[0];
    if (why || m.kind === 'index') throw fail(Errno.EROFS, `${ref} cannot be changed through the mount: ${why ?? 'index'}; use regfs push`);
    const lossy = (m.artifactType !== undefined && m.artifactType !== MediaType.unknownArtifact) ||
      Object.keys(m.annotations ?? {}).some((k) => k !== Annotation.created) ||
      m.layers.some((l) => {
        const unpack = l.annotations?.[Annotation.unpack] === 'true';
        const extra = Object.keys(l.annotations ?? {}).some((k) => k !== Annotation.title && k !== Annotation.unpack && k !== Annotation.digestAnnotation);
        return extra || l.mediaType !== (unpack ? MediaType.ociLayerTarGzip : MediaType.ociLayerTar);
      });
    if (lossy && !this.warned.has(fm.descriptor.digest)) {
      this.warned.add(fm.descriptor.digest);
      this.log.warn(`${ref}: the next push from staging uses the default artifact type, layer media types and no annotations besides file names; those of ${fm.descriptor.digest} are not kept`);
    }
    return m.layers.map((layer) => ({ layer, title: checkTitle(layer.annotations![Annotation.title]!) }));
  }

  /** materialise copies a tag's current files from the registry (through the blob cache) into its staging folder. */
  private async materialise(T: TagFolder): Promise<void> {
    const repo = this.o.registry.repository(T.repository);
    const fm = await this.o.metadata.manifestByTag(repo, T.tag);
    const layers = this.rebuildable(T, fm);
    await materialiseTag({ repo, layers, dir: T.dir, workRoot: this.tmpRoot, blobs: this.o.blobs });
    this.invalidate();
    this.landedMemo.delete(T.dir);
    await this.o.staging.hooks.recordPublished(T.repository, T.tag, fingerprint(await scanTagDir(T.dir)), fm.descriptor.digest);
    this.log.info(`copied ${T.repository}:${T.tag} (${fm.descriptor.digest}) into ${T.dir} for a change through the mount`);
  }

  // ---- changes --------------------------------------------------------------------------------

  private checkMutable(comps: string[], p: string): void {
    if (comps.some(isFixedName)) throw fail(Errno.EROFS, `${p}: paths by digest or ':tag' are read-only`);
    if (this.isReserved(comps)) throw fail(Errno.EPERM, `${p}: the name is reserved by regfs`);
  }

  private checkName(name: string, p: string): void {
    try {
      checkTitle(name);
    } catch {
      throw fail(Errno.EINVAL, `${p}: not a valid file name`);
    }
  }

  private async exists(p: string): Promise<boolean> {
    try {
      await this.lookup(p);
      return true;
    } catch (err) {
      if (toErrno(err) === Errno.ENOENT) return false;
      throw err;
    }
  }

  /** published tells whether the registry has this path (what removing it would unpublish). */
  private async published(p: string): Promise<boolean> {
    return (await this.remoteLookup(p)) !== undefined;
  }

  private async parentDir(comps: string[]): Promise<void> {
    const parent = await this.lookup(keyOf(comps.slice(0, -1)));
    if (parent.type !== 'dir') throw fail(Errno.ENOTDIR, `${keyOf(comps.slice(0, -1))} is not a folder`);
  }

  /** isRepositoryFolder: a repository in the registry, or a staged folder that holds a tag folder. */
  private async isRepositoryFolder(comps: string[]): Promise<boolean> {
    if ((await this.o.vfs.locate(keyOf(comps))).isRepository) return true;
    if (comps.length < 1) return false;
    const list = await fsp.readdir(this.staged(comps), { withFileTypes: true }).catch(() => [] as Dirent[]);
    for (const e of list) if (e.isDirectory() && (await this.isTagFolderDir(this.staged([...comps, e.name])))) return true;
    return false;
  }

  /** newTagFolder: a file created outside any tag makes its folder the tag folder (the staging rule). */
  private async newTagFolder(parent: string[], p: string): Promise<TagFolder> {
    if (parent.length < 2) throw fail(Errno.EPERM, `${p}: files go into a tag folder, <repository>/<tag>/`);
    const repository = parent.slice(0, -1).join('/');
    const tag = parent[parent.length - 1]!;
    if (!isRepositoryName(repository) || !isTag(tag)) throw fail(Errno.EINVAL, `${p}: "${repository}:${tag}" is not a valid repository:tag for a tag folder`);
    // Only the registry's repositories refuse files. A folder that merely looks like a repository in
    // staging (a subfolder `cp -r` filled first was taken for a tag) takes the file: it is the tag folder
    // after all, and the daemon drops the queued push of the wrongly detected subfolder.
    const at = await this.o.vfs.locate(keyOf(parent));
    if (at.depth === parent.length || at.isRepository) {
      throw fail(Errno.EPERM, `${p}: ${keyOf(parent)} is a repository or namespace; files go into a tag folder below it`);
    }
    return { repository, tag, dir: this.staged(parent), depth: parent.length, remote: false };
  }

  /** touch reports a change of a staged entry (by its folder) so pushes nearby wait another quiet period. */
  private touch(stagedPath: string): void {
    this.o.staging.hooks.touched(path.dirname(stagedPath));
  }

  /** changedNow follows a change of a mount path: forget cached facts, hold nearby pushes, rescan soon. */
  private async changedNow(comps: string[]): Promise<void> {
    this.invalidate();
    this.touch(this.staged(comps));
    const T = await this.stagedTag(comps).catch(() => undefined);
    if (T) this.changedTag(T);
    else this.o.staging.hooks.changed();
  }

  private async withHold<T>(T: TagFolder, fn: () => Promise<T>): Promise<T> {
    const unhold = await this.hold(T);
    try {
      return await fn();
    } finally {
      unhold();
    }
  }

  /** mkdir makes a folder in staging; directly below a repository it is a new tag folder (with the marker). */
  async mkdir(p: string): Promise<void> {
    const comps = splitPath(p);
    this.checkMutable(comps, p);
    if (await this.exists(p)) throw fail(Errno.EEXIST, `${p} exists`);
    await this.parentDir(comps);
    const name = comps[comps.length - 1]!;
    const T = await this.tagOf(comps);
    if (T && comps.length > T.depth) {
      this.checkName(name, p);
      await this.withHold(T, () => fsp.mkdir(this.staged(comps)));
    } else if (!T) {
      if (!isRepositoryName(name) && !isTag(name)) throw fail(Errno.EINVAL, `${p}: "${name}" is neither a repository name component (lowercase) nor a tag`);
      const parent = comps.slice(0, -1);
      await fsp.mkdir(this.staged(parent), { recursive: true });
      await fsp.mkdir(this.staged(comps));
      if (parent.length >= 1 && isTag(name) && (await this.isRepositoryFolder(parent))) await fsp.writeFile(path.join(this.staged(comps), TAG_MARKER), '');
    } else {
      throw fail(Errno.EEXIST, `${p} exists`);
    }
    await this.changedNow(comps);
  }

  /** create starts a new file: its bytes go to a temp file, renamed into the tag folder when closed. */
  async create(p: string): Promise<WriteHandle> {
    const comps = splitPath(p);
    this.checkMutable(comps, p);
    if (await this.exists(p)) throw fail(Errno.EEXIST, `${p} exists`);
    await this.parentDir(comps);
    let T = await this.tagOf(comps);
    if (T && comps.length <= T.depth) throw fail(Errno.EEXIST, `${p} exists`);
    T ??= await this.newTagFolder(comps.slice(0, -1), p);
    this.checkName(comps[comps.length - 1]!, p);
    return this.handles.create(this.writeTarget(comps, T));
  }

  /** openWrite opens an existing file for writing; nothing changes until the first write or truncate. */
  async openWrite(p: string, flags: number): Promise<WriteHandle> {
    const comps = splitPath(p);
    this.checkMutable(comps, p);
    if (this.handles.writing(keyOf(comps))) throw fail(Errno.EBUSY, `${p} is already open for writing`);
    const r = await this.lookup(p);
    if (r.type === 'dir') throw fail(Errno.EISDIR, `${p} is a folder`);
    if (r.type === 'symlink') throw fail(Errno.EPERM, `${p} is a symbolic link`);
    const T = await this.tagOf(comps);
    if (!T || comps.length <= T.depth) throw fail(Errno.EROFS, `${p} is not inside a tag folder`);
    if (T.remote || !(await this.overlaid(T))) {
      if (await this.remoteHasTag(T)) this.rebuildable(T, await this.o.metadata.manifestByTag(this.o.registry.repository(T.repository), T.tag));
    }
    return this.handles.open(this.writeTarget(comps, T), r, flags);
  }

  private writeTarget(comps: string[], T: TagFolder): WriteTarget {
    return { path: keyOf(comps), comps, staged: this.staged(comps), holdTag: () => this.hold(T) };
  }

  /** write appends to a file open for writing (see WriteHandles.write). */
  write(w: WriteHandle, buf: Buffer, len: number, pos: number): Promise<number> {
    return this.handles.write(w, buf, len, pos);
  }

  /** ftruncate sets the size of a file open for writing. */
  ftruncate(w: WriteHandle, size: number): Promise<void> {
    return this.handles.ftruncate(w, size);
  }

  /** read serves reads of a file open for writing (its current bytes). */
  read(w: WriteHandle, buf: Buffer, len: number, pos: number): Promise<number> {
    return this.handles.read(w, buf, len, pos);
  }

  /** flush (close) moves the written file into its tag folder. */
  flush(w: WriteHandle): Promise<void> {
    return this.handles.flush(w);
  }

  /** fsync makes the written bytes durable. */
  fsync(w: WriteHandle): Promise<void> {
    return this.handles.fsync(w);
  }

  /** release ends a write: flushes if needed, closes and forgets the handle. */
  release(w: WriteHandle): Promise<void> {
    return this.handles.release(w);
  }

  /** truncate by path: on the file's open write handle if there is one (open with O_TRUNC), else through a temp file renamed over it. */
  async truncate(p: string, size: number): Promise<void> {
    const comps = splitPath(p);
    // The newest handle: `open(O_TRUNC)` arrives as open, then truncate (an older handle may await its release).
    const w = this.handles.newest(keyOf(comps));
    if (w) return this.ftruncate(w, size);
    this.checkMutable(comps, p);
    const r = await this.lookup(p);
    if (r.type === 'dir') throw fail(Errno.EISDIR, `${p} is a folder`);
    if (r.type === 'symlink') throw fail(Errno.EPERM, `${p} is a symbolic link`);
    if (r.attr.size === size) return;
    const T = await this.tagOf(comps);
    if (!T || comps.length <= T.depth) throw fail(Errno.EROFS, `${p} is not inside a tag folder`);
    await this.withHold(T, async () => {
      const final = this.staged(comps);
      const tmp = tempFile(this.tmpRoot);
      try {
        if (size === 0) await fsp.writeFile(tmp, '');
        else {
          await fsp.copyFile(final, tmp, C.COPYFILE_FICLONE);
          await fsp.truncate(tmp, size);
        }
        await fsp.rename(tmp, final);
      } catch (err) {
        await fsp.rm(tmp, { force: true });
        throw err;
      }
    });
    await this.changedNow(comps);
  }

  /** unlink removes a staged file; one the registry has needs allowDelete (EROFS otherwise). */
  async unlink(p: string): Promise<void> {
    const comps = splitPath(p);
    this.checkMutable(comps, p);
    if (this.handles.writing(keyOf(comps))) throw fail(Errno.EBUSY, `${p} is open for writing`);
    const r = await this.lookup(p);
    if (r.type === 'dir') throw fail(Errno.EISDIR, `${p} is a folder`);
    const T = await this.tagOf(comps);
    if (!T || comps.length <= T.depth) throw fail(Errno.EROFS, `${p} is not inside a tag folder`);
    const published = await this.published(p);
    if (published && !this.o.staging.allowDelete) throw fail(Errno.EROFS, `${p} is published; removing it needs --allow-delete`);
    await this.withHold(T, () => fsp.unlink(this.staged(comps)));
    if (published) this.log.info(`removed ${p} through the mount: the next push of ${T.repository}:${T.tag} leaves it out`);
    await this.changedNow(comps);
  }

  /**
   * rmdir removes an empty folder. A published one needs allowDelete (EROFS otherwise); an empty tag
   * folder the registry has deletes the tag there; repositories cannot be deleted (EPERM).
   */
  async rmdir(p: string): Promise<void> {
    const comps = splitPath(p);
    this.checkMutable(comps, p);
    const r = await this.lookup(p);
    if (r.type !== 'dir') throw fail(Errno.ENOTDIR, `${p} is not a folder`);
    const published = await this.published(p);
    if (published && !this.o.staging.allowDelete) throw fail(Errno.EROFS, `${p} is published; removing it needs --allow-delete`);
    if ((await r.list()).length) throw fail(Errno.ENOTEMPTY, `${p} is not empty`);
    const T = await this.tagOf(comps);
    if (T && comps.length > T.depth) {
      await this.withHold(T, () => fsp.rmdir(this.staged(comps)));
    } else if (T && comps.length === T.depth) {
      await this.tags.locked(T.dir, async () => {
        if (published) await this.deleteTag(T);
        await fsp.rm(T.dir, { recursive: true, force: true });
      });
    } else {
      if (published) throw fail(Errno.EPERM, `${p} is a repository or namespace in the registry, which cannot be deleted through the mount`);
      await fsp.rmdir(this.staged(comps));
    }
    await this.changedNow(comps);
  }

  /** deleteTag deletes a tag's manifest, unless other tags point at the same manifest (the API deletes manifests, not tags). */
  private async deleteTag(T: TagFolder): Promise<void> {
    const done = await deleteTagAlone(this.o.registry.repository(T.repository), T.tag);
    const desc = done.descriptor;
    if (!done.deleted) {
      throw fail(Errno.EPERM, `cannot delete ${T.repository}:${T.tag} alone: tag(s) ${done.sharedWith.join(', ')} point at the same manifest ${desc.digest}, and a registry deletes manifests, not tags`);
    }
    this.o.dropListings(T.repository);
    this.log.info(`deleted ${T.repository}:${T.tag} (${desc.digest}) in ${this.o.registry.display}: rmdir through the mount`);
  }

  /** rename moves a file or folder within one tag folder (EXDEV across tags); moving a published name away needs allowDelete. */
  async rename(src: string, dst: string): Promise<void> {
    const a = splitPath(src);
    const b = splitPath(dst);
    this.checkMutable(a, src);
    this.checkMutable(b, dst);
    if (this.handles.writing(keyOf(a)) || this.handles.writing(keyOf(b))) throw fail(Errno.EBUSY, `${src} or ${dst} is open for writing`);
    const Ta = await this.tagOf(a);
    const Tb = await this.tagOf(b);
    if (!Ta || !Tb || Ta.dir !== Tb.dir || a.length <= Ta.depth || b.length <= Tb.depth) {
      throw fail(Errno.EXDEV, `rename ${src} -> ${dst}: only within one tag folder`);
    }
    this.checkName(b[b.length - 1]!, dst);
    await this.lookup(src);
    if ((await this.published(src)) && !this.o.staging.allowDelete) throw fail(Errno.EROFS, `${src} is published; renaming it away needs --allow-delete`);
    await this.withHold(Ta, () => fsp.rename(this.staged(a), this.staged(b)));
    await this.changedNow(b);
  }

  /** access answers W_OK: digest and ':tag' paths are read-only. */
  async access(p: string, mode: number): Promise<void> {
    const comps = splitPath(p);
    if (mode & 2 && comps.some(isFixedName)) throw fail(Errno.EROFS, `${p} is read-only`);
    await this.lookup(p);
  }
}

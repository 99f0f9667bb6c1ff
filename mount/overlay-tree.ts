/**
 * What a writable mount shows: the registry's tree overlaid with the staging folder, where a tag folder
 * is in staging (the staging rule), whether it landed, and making a tag folder ready for a change (a
 * hold, which may copy the tag in from the registry: staging/materialise.ts).
 *
 * Ordering rules: facts read from the staging folder (is a folder, is a tag folder, landed) are cached
 * for a second and forgotten after every change through the mount. A tag folder is overlaid while any
 * hold on it is taken (staging/tag-lock.ts); the copy from the registry runs under the tag's lock, before
 * the first hold counts, and records the copied folder as published before the hold is granted.
 */
import { promises as fsp, type Dirent } from 'node:fs';
import path from 'node:path';
import type { StagingHooks } from '../staging/hooks.js';
import { fingerprint, isIgnoredName, isTagFolderListing, scanTagDir, TAG_MARKER, WRITES_DIR } from '../staging/layout.js';
import { materialiseTag, type StagedLayer } from '../staging/materialise.js';
import { lossyPushWarning, rebuildable } from '../staging/tag-artifact.js';
import { TagLocks } from '../staging/tag-lock.js';
import { stagingModes, type StagingModes } from '../staging/modes.js';
import { isDigest } from '../registry/digest.js';
import { isRegfsError } from '../util/errors.js';
import { isRepositoryName, isTag } from '../registry/reference.js';
import type { FetchedManifest, Registry } from '../registry/storage.js';
import { nullLogger, type Logger } from '../util/log.js';
import { Errno, MountError, toErrno } from './errno.js';
import { buildManifestTree } from './manifest-tree.js';
import { FILE_W, WriteHandles } from './write-handle.js';
import { makeAttr, type BlobReader, type MetadataSource, type Resolved, type Tree } from './ports.js';
import type { Vfs } from './vfs.js';

/** StagingOptions make a mount writable: writes land in the staging folder `dir`, which the daemon pushes. */
export interface StagingOptions {
  dir: string;
  /** allowDelete lets rm, rmdir and rename remove what is published (`--allow-delete`). */
  allowDelete: boolean;
  hooks: StagingHooks;
  /** shared (an allow-other mount) keeps staged files 0644 in 0755 folders; otherwise (default) they are 0600 / 0700. */
  shared?: boolean;
}

/** OverlayTreeOptions wire an OverlayTree to the registry's tree and caches. */
export interface OverlayTreeOptions {
  vfs: Vfs;
  registry: Registry;
  metadata: MetadataSource;
  blobs: BlobReader;
  /** dropListings forgets cached tag lists of a repository (after a tag was deleted). */
  dropListings(repository: string): void;
  staging: StagingOptions;
  log?: Logger;
}

/** TagFolder is a tag's folder: in staging (`dir`), and at `depth` components of the mount path. */
export interface TagFolder {
  repository: string;
  tag: string;
  dir: string;
  depth: number;
  /** remote is true when the registry has the tag, false when it does not, undefined when not asked yet. */
  remote?: boolean;
}

const DIR_W = 0o040755;
const MEMO_MS = 1000;

/** splitPath splits a mount path into its components. */
export const splitPath = (p: string): string[] => p.split('/').filter((c) => c.length > 0);
/** keyOf joins path components into a mount path (`/a/b`). */
export const keyOf = (comps: string[]): string => `/${comps.join('/')}`;
/** isFixedName: digest and `:tag` components address content read-only. */
export const isFixedName = (c: string): boolean => isDigest(c) || c.startsWith(':');
const fail = (errno: number, msg: string): MountError => new MountError(errno, msg);

/**
 * OverlayTree is the registry's tree (Vfs) overlaid with the mount's staging folder. A tag folder is
 * shown from staging while it differs from what was last pushed ("overlaid"), and from the registry once
 * the push has landed; files being written are shown from their write handle. The changes themselves
 * are WritableOverlay's (writable-overlay.ts). Semantics and errnos: docs/mount.md.
 */
export class OverlayTree implements Tree {
  private readonly root: string;
  protected readonly tmpRoot: string;
  protected readonly log: Logger;
  protected readonly handles: WriteHandles;
  protected readonly tags = new TagLocks();
  /** modes are those of what this mount creates in staging (its privacy). */
  protected readonly modes: StagingModes;
  /** fsMemo caches staging folder facts (is a folder, is a tag folder); landedMemo whether a tag folder landed. */
  private readonly fsMemo = new Map<string, { at: number; value: Promise<boolean> }>();
  private readonly landedMemo = new Map<string, { at: number; value: Promise<boolean> }>();
  private readonly warned = new Set<string>();

  constructor(protected readonly o: OverlayTreeOptions) {
    this.root = path.resolve(o.staging.dir);
    this.tmpRoot = path.join(this.root, WRITES_DIR);
    this.log = o.log ?? nullLogger;
    this.modes = stagingModes(o.staging.shared === true);
    this.handles = new WriteHandles({
      tmpRoot: this.tmpRoot,
      fileMode: this.modes.file,
      blobs: o.blobs,
      invalidate: () => this.invalidate(),
      touch: (p) => this.touch(p),
      changedNow: (comps) => this.changedNow(comps),
      changed: () => o.staging.hooks.changed(),
    });
  }

  /** init creates the staging folder and drops files a crash left half-written. */
  async init(): Promise<void> {
    await fsp.mkdir(this.root, { recursive: true, mode: this.modes.dir });
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

  protected async remoteLookup(p: string): Promise<Resolved | undefined> {
    try {
      return await this.o.vfs.lookup(p);
    } catch (err) {
      if (toErrno(err) === Errno.ENOENT) return undefined;
      throw err;
    }
  }

  protected staged(comps: string[]): string {
    return path.join(this.root, ...comps);
  }

  protected isReserved(comps: string[]): boolean {
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

  protected isTagFolderDir(dir: string): Promise<boolean> {
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
  protected async tagOf(comps: string[]): Promise<TagFolder | undefined> {
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
  protected async overlaid(T: TagFolder): Promise<boolean> {
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
  protected hold(T: TagFolder): Promise<() => void> {
    const prepare = async (): Promise<void> => {
      this.invalidate();
      const staged = await this.isTagFolderDir(T.dir);
      if (!staged) {
        if (T.remote) await this.materialise(T);
        else await fsp.mkdir(T.dir, { recursive: true, mode: this.modes.dir });
      } else if ((await this.landed(T)) && (await this.remoteHasTag(T))) {
        await this.materialise(T);
      }
    };
    return this.tags.hold(T.dir, prepare, () => this.invalidate());
  }

  protected async remoteHasTag(T: TagFolder): Promise<boolean> {
    try {
      return (await this.o.metadata.tags(this.o.registry.repository(T.repository))).includes(T.tag);
    } catch (err) {
      if (isRegfsError(err) && err.code === 'NOT_FOUND') return false;
      throw err;
    }
  }

  /** rebuildableLayers returns the layers of a tag the staging rules can push again (warning once per manifest about what is lost), or refuses with EROFS. */
  protected rebuildableLayers(T: TagFolder, fm: FetchedManifest): StagedLayer[] {
    const ref = `${T.repository}:${T.tag}`;
    // The one definition of which manifests round-trip is staging/tag-artifact.ts; the tree's hidden layers are the mount's to tell.
    const r = rebuildable(fm.manifest, (m) => buildManifestTree(m).warnings[0]);
    if (!r.ok) throw fail(Errno.EROFS, `${ref} cannot be changed through the mount: ${r.why}; use regfs push`);
    if (r.lossy && !this.warned.has(fm.descriptor.digest)) {
      this.warned.add(fm.descriptor.digest);
      this.log.warn(lossyPushWarning(ref, fm.descriptor.digest));
    }
    return r.layers;
  }

  /** materialise copies a tag's current files from the registry (through the blob cache) into its staging folder. */
  private async materialise(T: TagFolder): Promise<void> {
    const repo = this.o.registry.repository(T.repository);
    const fm = await this.o.metadata.manifestByTag(repo, T.tag);
    const layers = this.rebuildableLayers(T, fm);
    await materialiseTag({ repo, layers, dir: T.dir, workRoot: this.tmpRoot, blobs: this.o.blobs, modes: this.modes });
    this.invalidate();
    this.landedMemo.delete(T.dir);
    await this.o.staging.hooks.recordPublished(T.repository, T.tag, fingerprint(await scanTagDir(T.dir)), fm.descriptor.digest);
    this.log.info(`copied ${T.repository}:${T.tag} (${fm.descriptor.digest}) into ${T.dir} for a change through the mount`);
  }

  // ---- change notifications -------------------------------------------------------------------

  /** touch reports a change of a staged entry (by its folder) so pushes nearby wait another quiet period. */
  private touch(stagedPath: string): void {
    this.o.staging.hooks.touched(path.dirname(stagedPath));
  }

  /** changedNow follows a change of a mount path: forget cached facts, hold nearby pushes, rescan soon. */
  protected async changedNow(comps: string[]): Promise<void> {
    this.invalidate();
    this.touch(this.staged(comps));
    const T = await this.stagedTag(comps).catch(() => undefined);
    if (T) this.changedTag(T);
    else this.o.staging.hooks.changed();
  }

  /** access answers W_OK: digest and ':tag' paths are read-only. */
  async access(p: string, mode: number): Promise<void> {
    const comps = splitPath(p);
    if (mode & 2 && comps.some(isFixedName)) throw fail(Errno.EROFS, `${p} is read-only`);
    await this.lookup(p);
  }
}

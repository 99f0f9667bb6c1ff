/**
 * Changes through a writable mount: mkdir, create and open for writing, truncate, unlink, rmdir and
 * rename, on top of the overlay (overlay-tree.ts), landing in the staging folder that the daemon pushes.
 * Semantics and errnos: docs/mount.md.
 *
 * Ordering rules: every change inside a tag folder runs under a hold on it (staging/tag-lock.ts), taken
 * after the checks (which only read) and released when the change is done; the first hold copies the
 * tag in from the registry if staging does not have it yet. Deleting a tag (rmdir of a tag folder) runs
 * under the tag's lock, so it waits for holds being taken and no change starts on a half-deleted
 * folder. After every change the overlay's cached facts are forgotten and the daemon is told
 * (changedNow), so nearby pushes wait another quiet period.
 */
import { constants as C, promises as fsp, type Dirent } from 'node:fs';
import path from 'node:path';
import { TAG_MARKER } from '../staging/layout.js';
import { isRepositoryName, isTag } from '../registry/reference.js';
import { checkTitle } from '../registry/safe-path.js';
import { deleteTagAlone } from '../registry/tag-ops.js';
import { Errno, MountError, toErrno } from './errno.js';
import { isFixedName, keyOf, OverlayTree, splitPath, type TagFolder } from './overlay-tree.js';
import { tempFile, type WriteHandle, type WriteTarget } from './write-handle.js';

const fail = (errno: number, msg: string): MountError => new MountError(errno, msg);

/**
 * WritableOverlay is a mount's tree with writes: the overlay tree, plus the changes through the mount.
 * Writes go to `<staging>/<repository>/<tag>/...` (through a temp file renamed into place when closed);
 * the daemon pushes each tag folder once it is quiet.
 */
export class WritableOverlay extends OverlayTree {
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
      await this.withHold(T, () => fsp.mkdir(this.staged(comps), { mode: this.modes.dir }));
    } else if (!T) {
      if (!isRepositoryName(name) && !isTag(name)) throw fail(Errno.EINVAL, `${p}: "${name}" is neither a repository name component (lowercase) nor a tag`);
      const parent = comps.slice(0, -1);
      await fsp.mkdir(this.staged(parent), { recursive: true, mode: this.modes.dir });
      await fsp.mkdir(this.staged(comps), { mode: this.modes.dir });
      if (parent.length >= 1 && isTag(name) && (await this.isRepositoryFolder(parent))) await fsp.writeFile(path.join(this.staged(comps), TAG_MARKER), '', { mode: this.modes.file });
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
      if (await this.remoteHasTag(T)) this.rebuildableLayers(T, await this.o.metadata.manifestByTag(this.o.registry.repository(T.repository), T.tag));
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
        if (size === 0) await fsp.writeFile(tmp, '', { mode: this.modes.file });
        else {
          await fsp.copyFile(final, tmp, C.COPYFILE_FICLONE);
          await fsp.truncate(tmp, size);
          await fsp.chmod(tmp, this.modes.file);
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
}

/**
 * Files open for writing through a writable mount (rclone's Handle, beside the overlay's nodes).
 *
 * A handle's bytes go to a temp file in `<staging>/.regfs-writes/`, renamed to the file's name in its
 * tag folder at the first flush (close), so the staging scanner never sees half a file.
 *
 * Ordering rules: every operation on one handle runs after the previous one settled (`chain`). The
 * first change (write, truncate) activates the handle: it takes a hold on the tag folder (which may
 * copy the tag in from the registry, staging/tag-lock.ts) and only then opens the temp file; the hold
 * is released once the bytes are at their name (first flush) or the handle is released. One path has
 * at most one active handle (EBUSY for a second); a path is "being written" from activation until its
 * bytes are at their name, and lookups answer from the handle meanwhile.
 */
import { randomBytes } from 'node:crypto';
import { constants as C, promises as fsp } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { Errno, MountError } from './errno.js';
import { makeAttr, type BlobReader, type Resolved } from './ports.js';

/** FILE_W is the mode of a writable regular file in the mount. */
export const FILE_W = 0o100644;

/** tempFile names a new temp file in tmpRoot (`<staging>/.regfs-writes`). */
export function tempFile(tmpRoot: string): string {
  return path.join(tmpRoot, randomBytes(8).toString('hex'));
}

const fail = (errno: number, msg: string): MountError => new MountError(errno, msg);

interface ActiveWrite {
  /** tmp is where the bytes go (`<staging>/.regfs-writes/<random>`); renamed to final at the first flush. */
  tmp: string;
  final: string;
  fh: FileHandle;
  /** base is the file's previous content, copied into tmp only if the writer appends to it. */
  base?: string;
  renamed: boolean;
  unhold: () => void;
}

/** WriteTarget is the file a handle writes: its mount path and where it lands in staging. */
export interface WriteTarget {
  /** path is the mount path (`/a/b`), comps its components. */
  readonly path: string;
  readonly comps: string[];
  /** staged is the file's path in its tag folder in staging. */
  readonly staged: string;
  /** holdTag makes the file's tag folder ready for a change and keeps it overlaid until the returned release. */
  readonly holdTag: () => Promise<() => void>;
}

/** WriteHandle is one file opened for writing through the mount. */
export interface WriteHandle extends WriteTarget {
  /** size is the file's size as the writer sees it. */
  size: number;
  /** source answers reads before the first change. */
  source?: Resolved;
  active?: ActiveWrite;
  modified: boolean;
  chain: Promise<unknown>;
  lastTouch: number;
}

/** WriteHost is what write handles need from the overlay tree. */
export interface WriteHost {
  /** tmpRoot is `<staging>/.regfs-writes`, on the staging filesystem. */
  readonly tmpRoot: string;
  /** fileMode is the mode of a staged file written through the mount (0600 for a private mount). */
  readonly fileMode: number;
  readonly blobs: BlobReader;
  /** invalidate forgets the overlay's cached staging facts. */
  invalidate(): void;
  /** touch reports a change of a staged entry so pushes nearby wait another quiet period. */
  touch(stagedPath: string): void;
  /** changedNow follows a change of a mount path (bytes landed at their name). */
  changedNow(comps: string[]): Promise<void>;
  /** changed asks for a rescan of the staging folder soon (a handle that wrote was released). */
  changed(): void;
}

/** WriteHandles are a mount's files open for writing, by mount path. */
export class WriteHandles {
  /** writers: per path, the handle whose bytes are not in place yet (changed, not flushed); opened: every handle open for writing. */
  private readonly writers = new Map<string, WriteHandle>();
  private readonly opened = new Map<string, Set<WriteHandle>>();

  constructor(private readonly host: WriteHost) {}

  /** writing returns the active handle of a mount path (whose bytes are not at their name yet), if any. */
  writing(key: string): WriteHandle | undefined {
    const w = this.writers.get(key);
    return w?.active ? w : undefined;
  }

  /** newest returns the handle last opened for writing on a mount path, if any is open. */
  newest(key: string): WriteHandle | undefined {
    return [...(this.opened.get(key) ?? [])].pop();
  }

  /** namesIn lists the names of files being written directly in the folder `dirKey` (a mount path). */
  namesIn(dirKey: string): string[] {
    const names: string[] = [];
    for (const w of this.writers.values()) {
      if (w.active && `/${w.comps.slice(0, -1).join('/')}` === dirKey) names.push(w.comps[w.comps.length - 1]!);
    }
    return names;
  }

  /** resolved answers a lookup of a file being written: its current bytes. */
  resolved(w: WriteHandle): Resolved {
    const a = w.active!;
    return { type: 'local-file', attr: makeAttr(FILE_W, w.size, new Date()), file: a.base ?? (a.renamed ? a.final : a.tmp), xattrs: {} };
  }

  /** create opens a handle for a new, empty file and activates it at once. */
  async create(t: WriteTarget): Promise<WriteHandle> {
    const w: WriteHandle = { ...t, size: 0, modified: true, chain: Promise.resolve(), lastTouch: 0 };
    await this.activate(w);
    this.track(w);
    this.host.touch(t.staged);
    return w;
  }

  /** open opens a handle on an existing file (`source`); nothing changes until the first write or truncate. */
  async open(t: WriteTarget, source: Resolved, flags: number): Promise<WriteHandle> {
    const w: WriteHandle = { ...t, size: source.attr.size, source, modified: false, chain: Promise.resolve(), lastTouch: 0 };
    if (source.type === 'file') this.host.blobs.pin(source.layer.digest);
    this.track(w);
    if (flags & C.O_TRUNC) await this.ftruncate(w, 0);
    return w;
  }

  private track(w: WriteHandle): void {
    let set = this.opened.get(w.path);
    if (!set) this.opened.set(w.path, (set = new Set()));
    set.add(w);
  }

  private untrack(w: WriteHandle): void {
    const set = this.opened.get(w.path);
    set?.delete(w);
    if (set?.size === 0) this.opened.delete(w.path);
  }

  private serial<T>(w: WriteHandle, fn: () => Promise<T>): Promise<T> {
    const next = w.chain.then(fn, fn);
    w.chain = next.catch(() => undefined);
    return next;
  }

  /** activate prepares the tag (copying it from the registry if needed) and opens the temp file. */
  private async activate(w: WriteHandle): Promise<ActiveWrite> {
    if (w.active) return w.active;
    const other = this.writers.get(w.path);
    if (other && other !== w) throw fail(Errno.EBUSY, `${w.path} is already open for writing`);
    this.writers.set(w.path, w);
    let unhold: (() => void) | undefined;
    try {
      unhold = await w.holdTag();
      const final = w.staged;
      if (!(await fsp.lstat(path.dirname(final)).catch(() => undefined))?.isDirectory()) throw fail(Errno.ENOENT, `no folder for ${w.path}`);
      const st = await fsp.lstat(final).catch(() => undefined);
      if (st && !st.isFile()) throw fail(Errno.EISDIR, `${w.path} is not a regular file`);
      const tmp = tempFile(this.host.tmpRoot);
      const fh = await fsp.open(tmp, 'wx+', this.host.fileMode);
      w.size = st?.size ?? 0;
      w.active = { tmp, final, fh, base: st ? final : undefined, renamed: false, unhold };
      this.host.invalidate();
      return w.active;
    } catch (err) {
      unhold?.();
      if (this.writers.get(w.path) === w) this.writers.delete(w.path);
      throw err;
    }
  }

  /** takeBase copies the file's previous content into the temp file (appending keeps it). */
  private async takeBase(a: ActiveWrite): Promise<void> {
    if (!a.base) return;
    await a.fh.close();
    await fsp.copyFile(a.base, a.tmp, C.COPYFILE_FICLONE);
    a.fh = await fsp.open(a.tmp, 'r+');
    await a.fh.chmod(this.host.fileMode); // copyFile gave it the old file's mode
    a.base = undefined;
  }

  /** write appends: a write must start at or after the current end of the file (EOPNOTSUPP otherwise). */
  write(w: WriteHandle, buf: Buffer, len: number, pos: number): Promise<number> {
    return this.serial(w, async () => {
      if (pos < w.size) {
        throw fail(Errno.ENOTSUP, `write at offset ${pos} into ${w.path}, which holds ${w.size} bytes: only sequential writes at the end are supported (truncate it first)`);
      }
      const a = await this.activate(w);
      await this.takeBase(a);
      let done = 0;
      while (done < len) done += (await a.fh.write(buf, done, len - done, pos + done)).bytesWritten;
      w.size = Math.max(w.size, pos + len);
      w.modified = true;
      if (Date.now() - w.lastTouch > 100) {
        w.lastTouch = Date.now();
        this.host.touch(a.final);
      }
      return len;
    });
  }

  /** ftruncate sets the size of a file open for writing (0 drops the old content without copying it). */
  ftruncate(w: WriteHandle, size: number): Promise<void> {
    return this.serial(w, async () => {
      if (!w.active && size === w.size) return;
      const a = await this.activate(w);
      if (a.base && size === 0) a.base = undefined;
      else await this.takeBase(a);
      await a.fh.truncate(size);
      w.size = size;
      w.modified = true;
      this.host.touch(a.final);
    });
  }

  /** read serves reads of a file open for writing (its current bytes). */
  read(w: WriteHandle, buf: Buffer, len: number, pos: number): Promise<number> {
    return this.serial(w, async () => {
      const a = w.active;
      const src = w.source;
      if (a && !a.base) return (await a.fh.read(buf, 0, len, pos)).bytesRead;
      if (src?.type === 'file' && !a) return this.host.blobs.read(src.repo, src.layer, buf, pos, len);
      const file = a?.base ?? (src?.type === 'local-file' ? ((await src.materialize?.()) ?? src.file) : undefined);
      if (!file) return 0;
      const fh = await fsp.open(file, 'r');
      try {
        return (await fh.read(buf, 0, len, pos)).bytesRead;
      } finally {
        await fh.close();
      }
    });
  }

  private async flushNow(w: WriteHandle): Promise<void> {
    const a = w.active;
    if (!a || !w.modified) return;
    await this.takeBase(a);
    await a.fh.datasync();
    if (!a.renamed) {
      await fsp.rename(a.tmp, a.final);
      a.renamed = true;
      // The file is complete at its name: the next open of it (`close` returns before FUSE's release)
      // starts from it. Writes through a dup of this descriptor still reach the same file.
      if (this.writers.get(w.path) === w) this.writers.delete(w.path);
      a.unhold();
    }
    w.modified = false;
    await this.host.changedNow(w.comps);
  }

  /** flush (close) moves the written file into its tag folder: the staging scanner never sees half a file. */
  flush(w: WriteHandle): Promise<void> {
    return this.serial(w, () => this.flushNow(w));
  }

  /** fsync makes the written bytes durable. */
  fsync(w: WriteHandle): Promise<void> {
    return this.serial(w, async () => {
      await w.active?.fh.datasync();
    });
  }

  /** release ends a write: flushes if needed, closes and forgets the handle (an unused temp file is removed). */
  release(w: WriteHandle): Promise<void> {
    return this.serial(w, async () => {
      try {
        await this.flushNow(w);
      } finally {
        const a = w.active;
        if (a) {
          await a.fh.close().catch(() => undefined);
          if (!a.renamed) await fsp.rm(a.tmp, { force: true });
          a.unhold();
        }
        if (this.writers.get(w.path) === w) this.writers.delete(w.path);
        this.untrack(w);
        if (w.source?.type === 'file') this.host.blobs.unpin(w.source.layer.digest);
        this.host.invalidate();
        if (a) this.host.changed();
      }
    });
  }
}

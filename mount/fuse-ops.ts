import { promises as fsp } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { errorMessage, isRegfsError } from '../util/errors.js';
import type { Descriptor } from '../registry/descriptor.js';
import type { ReadableRepository } from '../registry/storage.js';
import type { Logger } from '../util/log.js';
import { applyAttrPolicy, DEFAULT_ATTR_POLICY, type AttrPolicy } from './attr-policy.js';
import { Errno, toErrno } from './errno.js';
import type { WritableOverlay } from './writable-overlay.js';
import type { WriteHandle } from './write-handle.js';
import type { Attr, BlobReader, Resolved, Tree } from './ports.js';
import { openFlagsWritable } from './vfs.js';
import { readStatsOn, statEnd, statStart } from '../util/read-stats.js';

type Cb<T = undefined> = (err: number, value?: T) => void;

/** FuseHandlers are the plain callback handlers fuse-native calls. */
export interface FuseHandlers {
  getattr(p: string, cb: (err: number, stat?: Attr) => void): void;
  readdir(p: string, cb: (err: number, names?: string[]) => void): void;
  open(p: string, flags: number, cb: (err: number, fd?: number) => void): void;
  release(p: string, fd: number, cb: (err: number) => void): void;
  read(p: string, fd: number, buf: Buffer, len: number, pos: number, cb: (n: number) => void): void;
  readlink(p: string, cb: (err: number, target?: string) => void): void;
  getxattr(p: string, name: string, position: number, cb: (err: number, value?: Buffer) => void): void;
  listxattr(p: string, cb: (err: number, names?: string[]) => void): void;
  statfs(p: string, cb: (err: number, s?: Record<string, number>) => void): void;
  access(p: string, mode: number, cb: (err: number) => void): void;
  [refused: string]: (...args: never[]) => void;
}

type Handle = { kind: 'blob'; repo: ReadableRepository; layer: Descriptor } | { kind: 'local'; fh: FileHandle } | { kind: 'write'; w: WriteHandle };

/** HandlerOptions wire the handlers to the tree, the cache and the log. */
export interface HandlerOptions {
  tree: Tree;
  blobs: BlobReader;
  /** statfsPath is a local directory whose filesystem statfs reports (the cache, or the staging folder of a writable mount). */
  statfsPath: string;
  log: Logger;
  /** writer, when given, makes the mount writable through its staging folder; without it every change is EROFS. */
  writer?: WritableOverlay;
  /** attrs is the owner and the permission bits stat shows (default 0644 files, 0755 directories). */
  attrs?: AttrPolicy;
}

/**
 * createHandlers returns the FUSE operations over a Vfs: every handler is async, answers through its
 * callback exactly once, and maps failures to an errno in one place (errno.ts). Reads fill the
 * kernel's buffer from the cache and never keep it. Changes go to the writer (staging), or are refused
 * with EROFS when there is none.
 */
export function createHandlers(opts: HandlerOptions): FuseHandlers {
  const { tree: vfs, blobs, log, writer } = opts;
  const policy = opts.attrs ?? DEFAULT_ATTR_POLICY;
  const handles = new Map<number, Handle>();
  let nextFd = 10;
  const reported = new Map<string, number>();
  /**
   * suspect maps the digest of a blob whose read failed its digest (or size) check to the mtime getattr
   * reports for its files from then on. With auto_cache libfuse compares mtime and size at each open and,
   * when they changed, opens without keep_cache, so the kernel drops the pages it cached of the file:
   * bytes served before the check failed (lazy verify) are never served again from the page cache. An
   * open within the attribute timeout (1 s) of the last getattr may still keep the pages, but the failed
   * read's own pages are not cached and reads of the digest fail for the mismatch back-off (5 s), so such
   * a read fails too instead of returning wrong bytes.
   */
  const suspect = new Map<string, { at: number; failures: number }>();
  const markSuspect = (digest: string): void => {
    const prev = suspect.get(digest);
    suspect.set(digest, { at: Math.max(Date.now(), (prev?.at ?? 0) + 1), failures: (prev?.failures ?? 0) + 1 });
  };
  /** attrOf is getattr's answer: a suspect file's mtime changes with every failure (and differs from the manifest's). */
  const attrOf = (r: Resolved): Attr => {
    const s = r.type === 'file' ? suspect.get(r.layer.digest) : undefined;
    if (!s) return r.attr;
    const mtime = new Date(Math.max(s.at, r.attr.mtime.getTime() + s.failures));
    return { ...r.attr, mtime, ctime: mtime };
  };

  /** fail logs an error (not ENOENT, EEXIST) once per cause per minute (not per read) and returns its errno. */
  const fail = (op: string, p: string, err: unknown): number => {
    const errno = toErrno(err);
    if (errno !== Errno.ENOENT && errno !== Errno.EEXIST) {
      const msg = errorMessage(err);
      const last = reported.get(msg) ?? 0;
      if (Date.now() - last > 60_000) {
        reported.set(msg, Date.now());
        log.warn(`${op} ${p}: ${msg}`);
      }
    }
    return errno;
  };

  /** openLocal opens a local file, making it first when it is extracted on demand (once more if it vanished meanwhile). */
  const openLocal = async (r: Extract<Resolved, { type: 'local-file' }>): Promise<FileHandle> => {
    if (!r.materialize) return fsp.open(r.file, 'r');
    try {
      return await fsp.open(await r.materialize(), 'r');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      return fsp.open(await r.materialize(), 'r');
    }
  };
  const handlers: FuseHandlers = {
    getattr(p, cb) {
      vfs.lookup(p).then((r) => cb(0, applyAttrPolicy(attrOf(r), policy)), (e: unknown) => cb(fail('getattr', p, e)));
    },
    readdir(p, cb) {
      vfs.lookup(p).then(
        async (r) => {
          if (r.type !== 'dir') return cb(Errno.ENOTDIR);
          // The kernel gets each name once, never '.', '..', '' or a name with '/' or NUL from a tree (hostile listings).
          const names = new Set((await r.list()).filter((n) => n !== '' && n !== '.' && n !== '..' && !/[/\u0000]/.test(n)));
          cb(0, ['.', '..', ...names]);
        },
        (e: unknown) => cb(fail('readdir', p, e)),
      ).catch((e: unknown) => cb(fail('readdir', p, e)));
    },
    open(p, flags, cb) {
      if (openFlagsWritable(flags)) {
        if (!writer) return cb(Errno.EROFS);
        writer.openWrite(p, flags).then((w) => {
          const fd = nextFd++;
          handles.set(fd, { kind: 'write', w });
          cb(0, fd);
        }, (e: unknown) => cb(fail('open', p, e)));
        return;
      }
      vfs.lookup(p).then(
        async (r) => {
          const fd = nextFd++;
          if (r.type === 'file') {
            blobs.pin(r.layer.digest);
            handles.set(fd, { kind: 'blob', repo: r.repo, layer: r.layer });
          } else if (r.type === 'local-file') {
            handles.set(fd, { kind: 'local', fh: await openLocal(r) });
          } else return cb(r.type === 'dir' ? Errno.EISDIR : Errno.EINVAL);
          cb(0, fd);
        },
        (e: unknown) => cb(fail('open', p, e)),
      ).catch((e: unknown) => cb(fail('open', p, e)));
    },
    release(p, fd, cb) {
      const h = handles.get(fd);
      handles.delete(fd);
      if (h?.kind === 'blob') blobs.unpin(h.layer.digest);
      if (h?.kind === 'local') h.fh.close().then(() => cb(0), () => cb(0));
      else if (h?.kind === 'write') writer!.release(h.w).then(() => cb(0), (e: unknown) => cb(fail('release', p, e)));
      else cb(0);
    },
    read(p, fd, buf, len, pos, cb) {
      const h = handles.get(fd);
      if (!h) return cb(Errno.EBADF);
      const done = (n: number): void => cb(n);
      if (h.kind === 'write') {
        writer!.read(h.w, buf, len, pos).then(done, (e: unknown) => done(fail('read', p, e)));
        return;
      }
      if (h.kind === 'local') {
        h.fh.read(buf, 0, len, pos).then((r) => done(r.bytesRead), (e: unknown) => done(fail('read', p, e)));
        return;
      }
      const t0 = statStart();
      const served = readStatsOn
        ? (n: number): void => {
            statEnd('fuse.read', t0, n);
            done(n);
          }
        : done;
      blobs.read(h.repo, h.layer, buf, pos, len).then(served, (e: unknown) => {
        if (isRegfsError(e, 'DIGEST_MISMATCH') || isRegfsError(e, 'SIZE_MISMATCH')) markSuspect(h.layer.digest);
        done(fail('read', p, e));
      });
    },
    readlink(p, cb) {
      vfs.lookup(p).then((r) => (r.type === 'symlink' ? cb(0, r.target) : cb(Errno.EINVAL)), (e: unknown) => cb(fail('readlink', p, e)));
    },
    getxattr(p, name, _position, cb) {
      vfs.lookup(p).then((r) => {
        const v = r.xattrs[name];
        if (v === undefined) return cb(Errno.ENODATA);
        cb(0, Buffer.from(v, 'utf8'));
      }, (e: unknown) => cb(fail('getxattr', p, e)));
    },
    listxattr(p, cb) {
      vfs.lookup(p).then((r) => cb(0, Object.keys(r.xattrs)), (e: unknown) => cb(fail('listxattr', p, e)));
    },
    statfs(_p, cb) {
      const flag = writer ? 0 : 1; // ST_RDONLY
      fsp.statfs(opts.statfsPath).then(
        (s) => cb(0, { bsize: s.bsize, frsize: s.bsize, blocks: s.blocks, bfree: s.bfree, bavail: s.bavail, files: s.files, ffree: s.ffree, favail: s.ffree, fsid: 0, flag, namemax: 255 }),
        () => cb(0, { bsize: 4096, frsize: 4096, blocks: 0, bfree: 0, bavail: 0, files: 0, ffree: 0, favail: 0, fsid: 0, flag, namemax: 255 }),
      );
    },
    access(p, mode, cb) {
      if (mode & 2 && !writer) return cb(Errno.EROFS);
      (writer ? writer.access(p, mode) : vfs.lookup(p)).then(() => cb(0), (e: unknown) => cb(fail('access', p, e)));
    },
  };
  const refuse = (errno: number) =>
    ((...args: unknown[]) => {
      const cb = args[args.length - 1] as Cb;
      cb(errno);
    }) as (...args: never[]) => void;
  if (!writer) {
    // Without a staging folder every change is refused: the mount is read-only.
    for (const op of ['create', 'write', 'mkdir', 'unlink', 'rmdir', 'rename', 'truncate', 'ftruncate', 'chmod', 'chown', 'utimens', 'symlink', 'link', 'mknod', 'setxattr', 'removexattr']) {
      handlers[op] = refuse(Errno.EROFS);
    }
    return handlers;
  }
  const w = writer;
  /** settle answers a change's callback: 0, or the errno of its failure (logged like any other). */
  const settle = (op: string, p: string, run: Promise<unknown>, cb: (err: number) => void): void => {
    run.then(() => cb(0), (e: unknown) => cb(fail(op, p, e)));
  };
  const writeHandle = (fd: number): WriteHandle | undefined => {
    const h = handles.get(fd);
    return h?.kind === 'write' ? h.w : undefined;
  };
  Object.assign(handlers, {
    create(p: string, _mode: number, cb: (err: number, fd?: number) => void) {
      w.create(p).then((wh) => {
        const fd = nextFd++;
        handles.set(fd, { kind: 'write', w: wh });
        cb(0, fd);
      }, (e: unknown) => cb(fail('create', p, e)));
    },
    write(p: string, fd: number, buf: Buffer, len: number, pos: number, cb: (n: number) => void) {
      const wh = writeHandle(fd);
      if (!wh) return cb(Errno.EBADF);
      w.write(wh, buf, len, pos).then(cb, (e: unknown) => cb(fail('write', p, e)));
    },
    flush(p: string, fd: number, cb: (err: number) => void) {
      const wh = writeHandle(fd);
      if (!wh) return cb(0);
      settle('flush', p, w.flush(wh), cb);
    },
    fsync(p: string, _datasync: boolean, fd: number, cb: (err: number) => void) {
      const wh = writeHandle(fd);
      if (!wh) return cb(0);
      settle('fsync', p, w.fsync(wh), cb);
    },
    ftruncate(p: string, fd: number, size: number, cb: (err: number) => void) {
      const wh = writeHandle(fd);
      settle('truncate', p, wh ? w.ftruncate(wh, size) : w.truncate(p, size), cb);
    },
    truncate(p: string, size: number, cb: (err: number) => void) {
      settle('truncate', p, w.truncate(p, size), cb);
    },
    mkdir(p: string, _mode: number, cb: (err: number) => void) {
      settle('mkdir', p, w.mkdir(p), cb);
    },
    unlink(p: string, cb: (err: number) => void) {
      settle('unlink', p, w.unlink(p), cb);
    },
    rmdir(p: string, cb: (err: number) => void) {
      settle('rmdir', p, w.rmdir(p), cb);
    },
    rename(src: string, dst: string, cb: (err: number) => void) {
      settle('rename', src, w.rename(src, dst), cb);
    },
    // Times are not part of a manifest (and fuse-native passes atime for both): accepted, not applied.
    utimens(p: string, _atime: number, _mtime: number, cb: (err: number) => void) {
      settle('utimens', p, vfs.lookup(p), cb);
    },
  });
  for (const op of ['chmod', 'chown', 'symlink', 'link', 'mknod']) handlers[op] = refuse(Errno.EPERM);
  for (const op of ['setxattr', 'removexattr']) handlers[op] = refuse(Errno.ENOTSUP);
  return handlers;
}

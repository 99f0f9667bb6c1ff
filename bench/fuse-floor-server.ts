/**
 * fuse-floor-server: the cheapest possible fuse-native filesystem, one file of SIZE bytes answered by
 * copying from a buffer in memory, mounted with the same kernel options as regfs (auto_cache, 1 MiB
 * max_read). `cat` through it measures what FUSE itself costs on this machine, the floor under any
 * fuse-native filesystem. Usage: node fuse-floor-server.js MOUNTPOINT SIZE; prints "mounted"; SIGTERM unmounts.
 */
import Fuse from 'fuse-native';

const [mnt, sizeArg] = process.argv.slice(2);
const size = Number(sizeArg);
if (!mnt || !Number.isSafeInteger(size) || size <= 0) {
  process.stderr.write('usage: fuse-floor-server MOUNTPOINT SIZE\n');
  process.exit(2);
}
const src = Buffer.alloc(1024 * 1024, 0x5a);
const now = new Date();
const attr = (mode: number, sz: number): Record<string, unknown> => ({ mtime: now, atime: now, ctime: now, nlink: 1, size: sz, mode, uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0 });
const ops = {
  readdir: (_p: string, cb: (err: number, names?: string[]) => void) => cb(0, ['blob']),
  getattr: (p: string, cb: (err: number, st?: Record<string, unknown>) => void) => {
    if (p === '/') return cb(0, attr(0o40555, 4096));
    if (p === '/blob') return cb(0, attr(0o100444, size));
    return cb(-2); // ENOENT
  },
  open: (_p: string, _flags: number, cb: (err: number, fd?: number) => void) => cb(0, 1),
  release: (_p: string, _fd: number, cb: (err: number) => void) => cb(0),
  read: (_p: string, _fd: number, buf: Buffer, len: number, pos: number, cb: (n: number) => void) => {
    let n = Math.max(0, Math.min(len, size - pos));
    for (let off = 0; off < n; ) off += src.copy(buf, off, 0, Math.min(src.length, n - off));
    cb(n);
  },
};
const fuse = new Fuse(mnt, ops as never, { fsname: 'regfs-floor', autoCache: true, maxRead: 1024 * 1024 });
fuse.mount((err) => {
  if (err) {
    process.stderr.write(`cannot mount ${mnt}: ${err.message}\n`);
    process.exit(1);
  }
  process.stdout.write('mounted\n');
});
const stop = (): void => fuse.unmount(() => process.exit(0));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);

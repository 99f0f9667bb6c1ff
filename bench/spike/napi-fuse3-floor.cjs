/*
 * napi-fuse3-floor.cjs: fuse-floor-server.ts on libfuse3 through the N-API spike addon (not product code).
 * Usage: node napi-fuse3-floor.cjs ADDON.node MOUNTPOINT SIZE [--single] [--stats FILE]; prints "mounted";
 * SIGTERM/SIGINT unmount and exit. The read handler does what fuse-floor-server.ts does: copy from a
 * 1 MiB buffer into the request's buffer, then answer (here: addon.reply instead of a callback).
 */
'use strict';
const [addonPath, mnt, sizeArg, ...rest] = process.argv.slice(2);
const size = Number(sizeArg);
if (!addonPath || !mnt || !Number.isSafeInteger(size) || size <= 0) {
  process.stderr.write('usage: napi-fuse3-floor.cjs ADDON.node MOUNTPOINT SIZE [--single] [--stats FILE]\n');
  process.exit(2);
}
const single = rest.includes('--single');
const statsAt = rest.indexOf('--stats');
const stats = statsAt >= 0 ? rest[statsAt + 1] : '';
const addon = require(addonPath);
const src = Buffer.alloc(1024 * 1024, 0x5a);
addon.mount(mnt, size, single, stats, (id, buf, _off) => {
  const n = buf.length;
  for (let o = 0; o < n; ) o += src.copy(buf, o, 0, Math.min(src.length, n - o));
  addon.reply(id, n);
});
process.stdout.write('mounted\n');
const stop = () => {
  addon.unmount();
  process.exit(0);
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);

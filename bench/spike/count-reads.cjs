/*
 * count-reads.cjs: preload for the fuse-native floor (a spike, not product code). It patches fuse-native's
 * Fuse class so the unchanged dist/bench/fuse-floor-server.js counts the `len` of every read request:
 *   FUSE_FLOOR_STATS=FILE node --require bench/spike/count-reads.cjs dist/bench/fuse-floor-server.js MNT SIZE
 * On exit it writes the same stats format as fuse3-floor.c --stats. Cost: one Map update per request.
 */
'use strict';
const fs = require('node:fs');
const path = require('node:path');
const { createRequire } = require('node:module');

const req = createRequire(path.resolve(process.argv[1]));
const id = req.resolve('fuse-native');
const Fuse = req(id);
const hist = new Map();
let reads = 0;
let bytes = 0;

// An ES module importing fuse-native gets its own view of the CommonJS exports, so wrap the method every
// read goes through (Fuse.prototype._op_read) instead of replacing the export.
const opRead = Fuse.prototype._op_read;
Fuse.prototype._op_read = function countedOpRead(signal, p, fd, buf, len, ...rest) {
  reads++;
  hist.set(len, (hist.get(len) ?? 0) + 1);
  if (!this.ops.countedRead) {
    const read = this.ops.read;
    this.ops.read = (rp, rfd, rbuf, rlen, pos, cb) => read(rp, rfd, rbuf, rlen, pos, (n, ...more) => {
      if (typeof n === 'number' && n > 0) bytes += n;
      cb(n, ...more);
    });
    this.ops.countedRead = true;
  }
  return opRead.call(this, signal, p, fd, buf, len, ...rest);
};

process.on('exit', () => {
  const file = process.env.FUSE_FLOOR_STATS;
  if (!file) return;
  const sizes = [...hist.entries()].sort((a, b) => a[0] - b[0]);
  const mode = sizes.reduce((m, e) => (e[1] > m[1] ? e : m), [0, 0])[0];
  const ver = JSON.parse(fs.readFileSync(path.join(path.dirname(id), 'package.json'), 'utf8')).version;
  fs.writeFileSync(file, [
    `fuse-native=${ver} (libfuse 2.9 high-level API, fuse_loop_mt, JS read on the main thread)`,
    `reads=${reads} bytes=${bytes}`,
    ...sizes.map(([len, n]) => `size ${len / 1024} KiB: ${n}`),
    `mode_kib=${mode / 1024}`,
    '',
  ].join('\n'));
});

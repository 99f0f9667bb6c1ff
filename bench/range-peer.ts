/**
 * range-peer: COUNT random Range GETs of BS bytes over a blob, one at a time on one connection
 * (what fio's psync randread asks of the mount, sent straight to the registry). Prints
 * `{"iops":N,"requests":N,"bytes":N}`. Usage: node range-peer.js URL SIZE BS COUNT
 */
import { request, Agent } from 'undici';

const [url, sizeArg, bsArg, countArg] = process.argv.slice(2);
const size = Number(sizeArg);
const bs = Number(bsArg);
const count = Number(countArg);
if (!url || !(size > 0) || !(bs > 0) || !(count > 0)) {
  process.stderr.write('usage: range-peer URL SIZE BS COUNT\n');
  process.exit(2);
}
const dispatcher = new Agent({ connections: 1 });
const blocks = Math.floor(size / bs);
let requests = 0;
let bytes = 0;
const start = performance.now();
while (requests < count) {
  const off = Math.floor(Math.random() * blocks) * bs;
  const res = await request(url, { dispatcher, headers: { range: `bytes=${off}-${off + bs - 1}` } });
  if (res.statusCode !== 206) throw new Error(`range GET: HTTP ${res.statusCode}`);
  for await (const c of res.body) bytes += (c as Buffer).length;
  requests++;
}
const elapsed = (performance.now() - start) / 1000;
await dispatcher.close();
process.stdout.write(`${JSON.stringify({ iops: requests / elapsed, requests, bytes })}\n`);

/**
 * node-fetch-ref: the minimal Node pipeline a caching mount's cold read must beat: one undici GET of the
 * blob streamed into a new file while hashing it with sha256 (issue 13's reference). Prints
 * `{"seconds":S,"bytes":N,"digest":"sha256:..."}`; the time excludes Node's start-up.
 * Usage: node node-fetch-ref.js URL OUTFILE
 */
import { createHash } from 'node:crypto';
import { open } from 'node:fs/promises';
import { request } from 'undici';

const [url, out] = process.argv.slice(2);
if (!url || !out) {
  process.stderr.write('usage: node-fetch-ref URL OUTFILE\n');
  process.exit(2);
}
const start = performance.now();
const res = await request(url);
if (res.statusCode !== 200) throw new Error(`GET ${url}: HTTP ${res.statusCode}`);
const fh = await open(out, 'wx');
const hash = createHash('sha256');
let bytes = 0;
for await (const chunk of res.body) {
  const b = chunk as Buffer;
  hash.update(b);
  await fh.write(b, 0, b.length, bytes);
  bytes += b.length;
}
await fh.close();
const seconds = (performance.now() - start) / 1000;
process.stdout.write(`${JSON.stringify({ seconds, bytes, digest: `sha256:${hash.digest('hex')}` })}\n`);

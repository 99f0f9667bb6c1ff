/*
 * Exact reads (issue 16, read and mount side): what a read through the mount returns is the
 * registry's verified bytes or an error, never wrong bytes with exit 0.
 */
import test from 'ava';
import path from 'node:path';
import { startRegistry } from '../lab/registry.js';
import { startFaultProxy } from '../lab/fault-proxy.js';
import { cliEnv, runCli, tempDir } from '../lab/cli.js';
import { sh, startMount } from '../lab/mount.js';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

test('lazy verify: after one corrupted response no later read returns the bad pages the kernel cached', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const proxy = await startFaultProxy(t, reg.url);
  const { env } = await cliEnv(t);
  const src = await tempDir(t);
  // Large enough for range reads (lazy verify serves bytes before the whole blob is hashed).
  t.is((await sh(`head -c ${8 * 1024 * 1024} /dev/urandom > ${src}/big.bin`)).code, 0);
  t.is((await runCli(['push', `${reg.host}/flip:v1`, 'big.bin'], { cwd: src, env })).code, 0);
  const m = await startMount(t, proxy.host);
  const file = path.join(m.mnt, 'flip/v1/big.bin');
  // One response has one byte flipped, in the first page: the kernel caches that page.
  proxy.rules.push({ method: 'GET', path: /\/blobs\/sha256:/, flipByteAt: 100, times: 1 });
  const first = await sh(`cat ${file} > /dev/null`);
  t.not(first.code, 0, 'the read that completes the blob fails its digest check');
  t.regex(first.stderr, /Input\/output error/);
  // Every later read either fails or returns the right bytes; once regfs has the right blob, cmp succeeds.
  let ok = false;
  for (const until = Date.now() + 30_000; !ok && Date.now() < until; ) {
    const r = await sh(`cat ${file} > ${src}/got.bin`);
    if (r.code === 0) {
      const c = await sh(`cmp ${src}/got.bin ${src}/big.bin`);
      t.is(c.code, 0, `a read after the digest failure exited 0 with wrong bytes: ${c.stdout}`);
      ok = true;
    } else await sleep(500);
  }
  t.true(ok, 'the file became readable again');
  t.is((await sh(`cmp ${file} ${src}/big.bin`)).code, 0);
});

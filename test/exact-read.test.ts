/*
 * Exact reads (issue 16, read and mount side): what a read through the mount returns is the
 * registry's verified bytes or an error, never wrong bytes with exit 0.
 */
import test from 'ava';
import { mkdir } from 'node:fs/promises';
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

test('a blob larger than the cache file system (64 MiB tmpfs, 100 MiB file) streams through: cmp succeeds, nothing kept, said once in the log', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const { env } = await cliEnv(t);
  const src = await tempDir(t);
  t.is((await sh(`head -c ${100 * 1024 * 1024} /dev/urandom > ${src}/huge.bin`)).code, 0);
  t.is((await runCli(['push', `${reg.host}/huge:v1`, 'huge.bin'], { cwd: src, env, timeoutMs: 120_000 })).code, 0);
  const base = await tempDir(t);
  const fsDir = path.join(base, 'tmpfs');
  await mkdir(fsDir);
  const mounted = await sh(`mount -t tmpfs -o size=64m tmpfs ${fsDir}`);
  t.is(mounted.code, 0, mounted.stderr);
  t.teardown(() => sh(`umount ${fsDir}`));
  const m = await startMount(t, reg.host, { cacheDir: path.join(fsDir, 'cache') });
  const file = path.join(m.mnt, 'huge/v1/huge.bin');
  for (let i = 0; i < 2; i++) {
    const c = await sh(`cmp ${file} ${src}/huge.bin`, { timeoutMs: 120_000 });
    t.is(c.code, 0, `read ${i + 1}: ${c.stdout}${c.stderr}\n${m.logs()}`);
  }
  // Random access works too.
  const mid = await sh(`cmp <(tail -c +50000001 ${file} | head -c 3000000) <(tail -c +50000001 ${src}/huge.bin | head -c 3000000)`);
  t.is(mid.code, 0, mid.stdout + mid.stderr);
  const du = await sh(`du -sb ${fsDir}/cache | cut -f1`);
  t.true(Number(du.stdout.trim()) < 8 * 1024 * 1024, `the cache keeps nothing of it: ${du.stdout}`);
  t.is(m.logs().split('\n').filter((l) => /streaming it/.test(l)).length, 1, m.logs());
  t.is(await m.stop(), 0);
});

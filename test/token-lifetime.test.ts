import test from 'ava';
import path from 'node:path';
import { startRegistry } from '../lab/registry.js';
import { startFaultProxy } from '../lab/fault-proxy.js';
import { cliEnv, runCli, tempDir } from '../lab/cli.js';
import { sh, startMount } from '../lab/mount.js';

const MiB = 1024 * 1024;

test('a 200 MiB cat through the token registry outlives its 20 s tokens: renewed without failing the read, with few token requests', async (t) => {
  t.timeout(120_000);
  const reg = await startRegistry(t, { flavour: 'token' });
  const ts = reg.tokenServer!;
  ts.tokenLifetimeSeconds = 20;
  // A slow link (shared by every blob answer) so the read lasts longer than a token.
  const proxy = await startFaultProxy(t, reg.url);
  proxy.rules.push({ method: 'GET', path: /\/blobs\/sha256:/, bytesPerSecond: 7 * MiB });
  const { env } = await cliEnv(t);
  for (const host of [reg.host, proxy.host]) {
    const r = await runCli(['login', host, '-u', reg.username!, '--password-stdin'], { env, input: reg.password! });
    t.is(r.code, 0, r.stderr);
  }
  const src = await tempDir(t);
  await sh(`head -c ${200 * MiB} /dev/urandom > ${src}/big.bin`);
  const push = await runCli(['push', `${reg.host}/big/app:v1`, 'big.bin'], { cwd: src, env, timeoutMs: 120_000 });
  t.is(push.code, 0, push.stderr);

  const m = await startMount(t, proxy.host, { env });
  const before = ts.issued.length;
  const t0 = Date.now();
  const cmp = await sh(`cmp ${path.join(m.mnt, 'big/app/v1/big.bin')} ${src}/big.bin`, { timeoutMs: 100_000 });
  const seconds = (Date.now() - t0) / 1000;
  t.is(cmp.code, 0, cmp.stdout + cmp.stderr + m.logs());
  const tokens = ts.issued.length - before;
  t.log(`read 200 MiB in ${seconds.toFixed(1)} s with ${tokens} token requests; ${proxy.count('GET', /\/blobs\//)} blob GETs`);
  t.true(seconds > 20, `the read must outlast a token (${seconds} s)`);
  // One token per ~15 s (renewed 5 s before its 20 s expire) for the one scope this mount reads, plus slack.
  t.true(tokens >= 2 && tokens <= Math.ceil(seconds / 15) + 3, `${tokens} token requests in ${seconds} s`);
  t.false(m.logs().includes(reg.password!));
});

import test from 'ava';
import { readFile, readdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { startRegistry } from '../lab/registry.js';
import { rateLimitEveryNth, startFaultProxy } from '../lab/fault-proxy.js';
import { cliEnv, runCli, tempDir } from '../lab/cli.js';
import { startDaemon } from '../lab/daemon.js';

interface Counters { requests: number; retries: number; rateLimited: number; unavailable: number; retryWaitMs: number }

test('429 and 503 with Retry-After end in success, and regfs status counts them and the time waited', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const { env } = await cliEnv(t);
  const src = await tempDir(t);
  await writeFile(path.join(src, 'a.txt'), 'alpha');
  await writeFile(path.join(src, 'b.txt'), 'beta');
  t.is((await runCli(['push', `${reg.host}/team/app:v1`, 'a.txt', 'b.txt'], { cwd: src, env })).code, 0);
  const proxy = await startFaultProxy(t, reg.url);
  proxy.rules.push({ method: 'GET', path: /\/manifests\//, times: 1, status: 503, headers: { 'Retry-After': '1' } });
  proxy.rules.push(rateLimitEveryNth(2, 1));
  const d = await startDaemon(t, { source: proxy.host, env, staging: false });

  t.deepEqual((await readdir(path.join(d.dirs.mnt, 'team/app/v1'))).sort(), ['a.txt', 'b.txt']);
  t.is(await readFile(path.join(d.dirs.mnt, 'team/app/v1/a.txt'), 'utf8'), 'alpha');
  t.is(await readFile(path.join(d.dirs.mnt, 'team/app/v1/b.txt'), 'utf8'), 'beta');
  t.true(proxy.requests.filter((r) => r.status === 429).length > 0);

  const st = await runCli(['status', '--socket', d.dirs.socket, '--format', 'json'], { env });
  t.is(st.code, 0, st.stderr);
  const r = (JSON.parse(st.stdout) as { mounts: Array<{ registry: Counters | null }> }).mounts[0]!.registry!;
  t.is(r.rateLimited, proxy.requests.filter((x) => x.status === 429).length);
  t.is(r.unavailable, 1);
  t.true(r.retries >= r.rateLimited + r.unavailable);
  t.true(r.retryWaitMs >= 1000 * (r.rateLimited + r.unavailable), `waited ${r.retryWaitMs} ms`);
  t.is(r.requests, proxy.requests.length);
  const text = await runCli(['status', '--socket', d.dirs.socket], { env });
  t.regex(text.stdout, new RegExp(`registry: ${r.requests} requests, 0 token requests; 429: ${r.rateLimited}, 503: 1; ${r.retries} retries, waited \\d+\\.\\d s`));
});

import test from 'ava';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { startRegistry } from '../lab/registry.js';
import { startFaultProxy } from '../lab/fault-proxy.js';
import { cliEnv, runCli, tempDir } from '../lab/cli.js';
import { RemoteRegistry } from '../registry/remote.js';
import { Semaphore } from '../util/limit.js';

test('Semaphore: at most limit holders, waiters in order, release is idempotent, an abort leaves the queue', async (t) => {
  const s = new Semaphore(2);
  const a = await s.acquire();
  const b = await s.acquire();
  const order: string[] = [];
  const c = s.acquire().then((r) => (order.push('c'), r));
  const ac = new AbortController();
  const d = s.acquire(ac.signal);
  const e = s.acquire().then((r) => (order.push('e'), r));
  t.is(s.inUse, 2);
  ac.abort(new Error('gone'));
  await t.throwsAsync(d, { message: 'gone' });
  a();
  a();
  (await c)();
  b();
  (await e)();
  t.deepEqual(order, ['c', 'e']);
  t.is(s.inUse, 0);
  t.is(s.peak, 2);
});

test('a per-registry limit on concurrent requests: 50 parallel manifest GETs never have more than the limit in flight', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const { env } = await cliEnv(t);
  const src = await tempDir(t);
  await writeFile(path.join(src, 'a.txt'), 'alpha');
  t.is((await runCli(['push', `${reg.host}/team/app:v1`, 'a.txt'], { cwd: src, env })).code, 0);
  const proxy = await startFaultProxy(t, reg.url);
  proxy.rules.push({ method: 'GET', path: /\/manifests\//, delayResponseMs: 100 });

  for (const [limit, expected] of [[4, 4], [undefined, 16]] as const) {
    const client = new RemoteRegistry(proxy.host, limit === undefined ? {} : { maxConcurrentRequests: limit });
    t.teardown(() => client.close());
    const repo = client.repository('team/app');
    await repo.fetchManifest('v1');
    proxy.reset();
    const got = await Promise.all(Array.from({ length: 50 }, () => repo.fetchManifest('v1')));
    t.true(got.every((m) => m.descriptor.digest === got[0]!.descriptor.digest));
    t.is(proxy.count('GET', /\/manifests\//), 50);
    t.log(`limit ${limit ?? 'default'}: peak ${proxy.peakInFlight()} in flight`);
    t.true(proxy.peakInFlight() <= expected, `peak ${proxy.peakInFlight()} with limit ${limit ?? 'default 16'}`);
    t.true(proxy.peakInFlight() >= Math.min(expected, 4), 'requests did run in parallel');
  }
});

/**
 * Issue 16, sync race: a guarded push (sync's, QueueItem.expectTag) reads the tag again right before and right
 * after its manifest PUT; another writer's push found there is reported (sync keeps it as a conflict tag),
 * never silently overwritten. Another writer is simulated by a repository that lets a second push land at
 * exactly the moment of the race, and (last test) through a daemon's sync pair with a slowed re-read.
 */
import test from 'ava';
import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { cliEnv, runCli, tempDir } from '../lab/cli.js';
import { startDaemon, waitFor } from '../lab/daemon.js';
import { startFaultProxy } from '../lab/fault-proxy.js';
import { startRegistry } from '../lab/registry.js';
import { PushQueue } from '../daemon/push-queue.js';
import { RemoteRegistry } from '../registry/remote.js';
import type { Descriptor } from '../registry/descriptor.js';
import type { Repository } from '../registry/storage.js';
import { scanTagDir } from '../staging/layout.js';
import { pushTag, type TagMoved } from '../staging/push-tag.js';

async function folder(base: string, name: string, content: string): Promise<string> {
  const dir = path.join(base, name, 'v1');
  await fsp.mkdir(dir, { recursive: true });
  await fsp.writeFile(path.join(dir, 'f.txt'), content);
  const old = new Date(Date.now() - 60_000);
  await fsp.utimes(path.join(dir, 'f.txt'), old, old);
  return dir;
}

for (const when of ['before', 'after'] as const) {
  test(`another writer's push landing ${when} our manifest PUT is a reported conflict, never a silent overwrite`, async (t) => {
    const reg = await startRegistry(t, { flavour: 'plain' });
    const base = await fsp.mkdtemp(path.join(os.tmpdir(), 'regfs-push-race-'));
    t.teardown(() => fsp.rm(base, { recursive: true, force: true }));
    const real = new RemoteRegistry(reg.host).repository('race/app');
    const initial = await pushTag({ repo: real, dir: await folder(base, 'initial', 'initial'), entries: await scanTagDir(path.join(base, 'initial/v1')), tag: 'v1' });
    const theirsDir = await folder(base, 'theirs', 'theirs');
    let theirs: Descriptor | undefined;
    const landTheirs = async (): Promise<void> => {
      if (theirs) return;
      const r = await pushTag({ repo: real, dir: theirsDir, entries: await scanTagDir(theirsDir), tag: 'v1' });
      theirs = await real.resolve('v1');
      t.is(theirs.digest, r.digest);
    };
    // The other writer lands `before`: just ahead of our re-read before the PUT; `after`: just after our PUT.
    const repo = new Proxy(real, {
      get(target, prop, receiver) {
        if (prop === 'resolve' && when === 'before') return async (ref: string) => (ref === 'v1' && (await landTheirs()), target.resolve(ref));
        if (prop === 'pushManifest' && when === 'after') {
          return async (...args: Parameters<Repository['pushManifest']>) => {
            const d = await target.pushManifest(...args);
            if (args[2].includes('v1')) await landTheirs();
            return d;
          };
        }
        const v = Reflect.get(target, prop, receiver) as unknown;
        return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
      },
    }) as Repository;

    const ourDir = await folder(base, 'ours', 'ours');
    const q = await PushQueue.open(path.join(base, 'state'), { repositoryFor: () => repo, quietMs: 0 });
    const moved: TagMoved[] = [];
    q.onTagMoved(async (_item, e) => {
      moved.push(e);
      await real.tag(e.when === 'before' ? e.current : e.ours, `v1-conflict-${e.when}`);
    });
    t.is(await q.enqueue('reg', { repository: 'race/app', tag: 'v1', dir: ourDir, entries: await scanTagDir(ourDir) }, { expectTag: initial.digest }), 'queued');
    q.start();
    t.teardown(() => q.stop());
    const deadline = Date.now() + 30_000;
    while (q.status()[0]?.state !== 'done' && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    const item = q.status()[0]!;
    t.is(item.state, 'done', item.lastError);
    t.truthy(theirs);
    t.is(moved.length, 1, 'the race is reported once');
    t.is(moved[0]?.when, when);
    t.is(moved[0]?.current.digest, theirs!.digest, 'current is the manifest of the other writer');
    const ours = item.pushedDigest!;
    t.not(ours, theirs!.digest);
    // Both versions stay tagged: nothing is lost.
    const now: string = (await real.resolve('v1')).digest;
    const kept = (await real.resolve(`v1-conflict-${when}`)).digest;
    t.deepEqual([now, kept].sort(), [ours, theirs!.digest].sort());
    t.is(now, when === 'before' ? ours : theirs!.digest, 'before: ours takes the tag (theirs kept aside); after: theirs keeps it (ours kept aside)');
  });
}

test('an unguarded push (plain staging) reads the tag once and is not reported', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const base = await fsp.mkdtemp(path.join(os.tmpdir(), 'regfs-push-race-'));
  t.teardown(() => fsp.rm(base, { recursive: true, force: true }));
  const real = new RemoteRegistry(reg.host).repository('race/plain');
  let resolves = 0;
  const repo = new Proxy(real, {
    get(target, prop, receiver) {
      if (prop === 'resolve') return (ref: string) => (resolves++, target.resolve(ref));
      const v = Reflect.get(target, prop, receiver) as unknown;
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  }) as Repository;
  const dir = await folder(base, 'plain', 'plain');
  const r = await pushTag({ repo, dir, entries: await scanTagDir(dir), tag: 'v1' });
  t.true(r.put);
  t.is(resolves, 1);
});

test('sync: another writer pushing the tag while our pair pushes it (between the round and our manifest PUT) becomes a conflict tag, not an overwrite', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const proxy = await startFaultProxy(t, reg.url);
  const { env } = await cliEnv(t);
  const base = await tempDir(t, 'regfs-sync-race-');
  const cfg = path.join(base, 'config.json');
  await fsp.writeFile(cfg, JSON.stringify({ syncs: [] }));
  const d = await startDaemon(t, { source: proxy.host, staging: false, dirs: { base }, args: ['--config', cfg] });
  const direct = new RemoteRegistry(reg.host).repository('team/race');
  await pushTag({ repo: direct, dir: await folder(base, 'initial', 'registry 1\n'), entries: await scanTagDir(path.join(base, 'initial/v1')), tag: 'v1' });
  const local = path.join(base, 'local');
  t.is((await runCli(['sync', 'add', local, `${proxy.host}/team/race`, '--interval', '600', '--socket', d.dirs.socket], { env })).code, 0);
  await waitFor(async () => (await fsp.readFile(path.join(local, 'v1/f.txt'), 'utf8').catch(() => '')) === 'registry 1\n', 60_000, 'the first pull', d.logs);

  // Every re-read of the tag takes 3 s: the other writer lands while our pre-PUT read is on its way.
  proxy.rules.push({ method: 'HEAD', path: /\/v2\/team\/race\/manifests\/v1$/, latencyMs: 3000 });
  const mark = proxy.requests.length;
  await fsp.writeFile(path.join(local, 'v1/f.txt'), 'local edit\n');
  await waitFor(async () => {
    const rs = proxy.requests.slice(mark);
    const upload = rs.findIndex((r) => r.method === 'POST' && /\/blobs\/uploads\//.test(r.path));
    return upload >= 0 && rs.slice(upload).some((r) => r.method === 'HEAD' && /\/manifests\/v1$/.test(r.path));
  }, 60_000, 'the read right before our manifest PUT', d.logs);
  const theirsDir = await folder(base, 'theirs', 'other writer\n');
  const theirs = await pushTag({ repo: direct, dir: theirsDir, entries: await scanTagDir(theirsDir), tag: 'v1' });
  const kept = `v1-conflict-${theirs.digest.slice('sha256:'.length, 'sha256:'.length + 12)}`;
  await waitFor(async () => (await direct.resolve(kept).catch(() => undefined))?.digest === theirs.digest, 60_000, `the other writer's version kept as ${kept}`, d.logs);
  const ours = await waitFor(async () => {
    const r = await direct.resolve('v1');
    return r.digest !== theirs.digest ? r : undefined;
  }, 60_000, 'our push on v1', d.logs);
  const m = JSON.parse((await direct.fetchManifest(ours.digest)).bytes.toString()) as { layers: Array<{ digest: string }> };
  t.is(m.layers[0]?.digest, `sha256:${createHash('sha256').update('local edit\n').digest('hex')}`);
  t.regex(d.logs(), /conflict on v1: another writer moved it/);
  t.is(await d.stop(), 0);
});

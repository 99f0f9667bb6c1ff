/**
 * Issue 16, sync race: a guarded push (sync's, QueueItem.expectTag) reads the tag again right before and right
 * after its manifest PUT; another writer's push found there is reported (sync keeps it as a conflict tag),
 * never silently overwritten. Another writer is simulated by a repository that lets a second push land at
 * exactly the moment of the race.
 */
import test from 'ava';
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
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

/** Unit test of PushQueue.stop's bound: a push that never finishes is abandoned, and its item resumes on restart. */
import test from 'ava';
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { PushQueue } from '../daemon/push-queue.js';
import type { Repository } from '../registry/storage.js';
import { scanTagDir } from '../staging/layout.js';

test('stop waits at most stopWaitMs for a push in flight, then abandons it; the item is pending again after a restart', async (t) => {
  const base = await fsp.mkdtemp(path.join(os.tmpdir(), 'regfs-push-queue-'));
  t.teardown(() => fsp.rm(base, { recursive: true, force: true }));
  const dir = path.join(base, 'staging/team/app/v1');
  await fsp.mkdir(dir, { recursive: true });
  await fsp.writeFile(path.join(dir, 'a.txt'), 'a\n');
  const old = new Date(Date.now() - 60_000);
  await fsp.utimes(path.join(dir, 'a.txt'), old, old);
  let started!: () => void;
  const uploading = new Promise<void>((r) => (started = r));
  // A registry that does not answer a blob upload until the test lets it fail.
  let fail!: (e: Error) => void;
  const hanging = { pushBlob: () => (started(), new Promise((_, reject) => (fail = reject))) } as unknown as Repository;
  const state = path.join(base, 'state');
  const q = await PushQueue.open(state, { repositoryFor: () => hanging, quietMs: 0, stopWaitMs: 300 });
  t.is(await q.enqueue('reg.example', { repository: 'team/app', tag: 'v1', dir, entries: await scanTagDir(dir) }), 'queued');
  q.start();
  await uploading;
  const t0 = Date.now();
  t.is(await q.stop(), 1);
  const took = Date.now() - t0;
  t.true(took >= 250 && took < 5000, `stop took ${took} ms`);
  t.is(q.status()[0]!.state, 'uploading');
  // The abandoned push fails later (its connection closed under it): that is no attempt, the item stays as it was.
  fail(new Error('pool closed'));
  await new Promise((r) => setTimeout(r, 100));
  t.deepEqual(q.status().map((i) => [i.state, i.attempts]), [['uploading', 0]]);

  const again = await PushQueue.open(state, { repositoryFor: () => hanging });
  t.deepEqual(again.status().map((i) => [i.tag, i.state, i.notBefore]), [['v1', 'pending', 0]]);
});

/** Unit tests of the push queue's durable state (daemon/queue-store.ts): pure fs in a temp dir. */
import test, { type ExecutionContext } from 'ava';
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { PUSHED_FILE, QUEUE_DIR, QueueStore, type QueueItem } from '../daemon/queue-store.js';

async function stateDir(t: ExecutionContext): Promise<string> {
  const base = await fsp.mkdtemp(path.join(os.tmpdir(), 'regfs-queue-store-'));
  t.teardown(() => fsp.rm(base, { recursive: true, force: true }));
  return path.join(base, 'state');
}

function item(id: string, over: Partial<QueueItem> = {}): QueueItem {
  return {
    id,
    target: 'localhost:5000',
    repository: 'team/app',
    tag: 'v1',
    dir: '/staging/team/app/v1',
    fingerprint: 'f'.repeat(32),
    state: 'pending',
    attempts: 0,
    notBefore: 0,
    blobs: { 'a.txt': { key: '1:2:3:4', digest: `sha256:${'a'.repeat(64)}` } },
    updatedAt: '',
    ...over,
  };
}

test.serial('items and pushed records round-trip through the queue folder, 0600 in a 0700 folder', async (t) => {
  const state = await stateDir(t);
  const store = await QueueStore.open(state);
  t.is(store.dir, path.join(state, QUEUE_DIR));
  t.is((await fsp.stat(store.dir)).mode & 0o777, 0o700);
  t.deepEqual(await store.loadItems(), []);
  t.deepEqual(await store.loadPushed(), {});

  const a = item('0'.repeat(24));
  const b = item('1'.repeat(24), { tag: 'v2', state: 'failed', attempts: 5, lastError: 'boom' });
  await store.saveItem(a);
  await store.saveItem(b);
  t.not(a.updatedAt, '');
  const pushed = { 'localhost:5000|team/app:v1': { fingerprint: 'f'.repeat(32), digest: `sha256:${'b'.repeat(64)}` } };
  await store.savePushed(pushed);
  t.is((await fsp.stat(path.join(store.dir, PUSHED_FILE))).mode & 0o777, 0o600);

  const again = await QueueStore.open(state);
  const items = (await again.loadItems()).sort((x, y) => (x.id < y.id ? -1 : 1));
  t.deepEqual(items, [a, b]);
  t.deepEqual(await again.loadPushed(), pushed);

  await again.removeItem(a.id);
  await again.removeItem(a.id); // missing is fine
  t.deepEqual((await again.loadItems()).map((i) => i.id), [b.id]);
});

test.serial('loadItems resumes an interrupted upload, drops done items older than a day and skips what is not an item', async (t) => {
  const state = await stateDir(t);
  const store = await QueueStore.open(state);
  const uploading = item('2'.repeat(24), { state: 'uploading', notBefore: Date.now() + 60_000 });
  await store.saveItem(uploading);
  const old = item('3'.repeat(24), { state: 'done' });
  await store.saveItem(old);
  old.updatedAt = new Date(Date.now() - 25 * 3600 * 1000).toISOString();
  await fsp.writeFile(path.join(store.dir, `${old.id}.json`), JSON.stringify(old));
  await fsp.writeFile(path.join(store.dir, `${'4'.repeat(24)}.json`), '{ torn');
  await store.savePushed({});

  const items = await store.loadItems();
  t.deepEqual(items.map((i) => [i.id, i.state, i.notBefore]), [[uploading.id, 'pending', 0]]);
  await t.throwsAsync(fsp.stat(path.join(store.dir, `${old.id}.json`)));
});

test.serial('open moves pushed.json from the state folder into the queue folder, once', async (t) => {
  const state = await stateDir(t);
  await fsp.mkdir(state, { recursive: true, mode: 0o700 });
  const legacy = { 'r|a:v1': { fingerprint: 'x', digest: 'sha256:old' } };
  await fsp.writeFile(path.join(state, PUSHED_FILE), JSON.stringify(legacy), { mode: 0o600 });

  const store = await QueueStore.open(state);
  t.deepEqual(await store.loadPushed(), legacy);
  await t.throwsAsync(fsp.stat(path.join(state, PUSHED_FILE)), { code: 'ENOENT' });
  t.deepEqual(JSON.parse(await fsp.readFile(path.join(state, QUEUE_DIR, PUSHED_FILE), 'utf8')), legacy);

  // A stale old file beside a new one (say, an older version ran once more) never overwrites the new one.
  const current = { 'r|a:v1': { fingerprint: 'y', digest: 'sha256:new' } };
  await store.savePushed(current);
  await fsp.writeFile(path.join(state, PUSHED_FILE), JSON.stringify(legacy), { mode: 0o600 });
  const again = await QueueStore.open(state);
  t.deepEqual(await again.loadPushed(), current);
  await t.throwsAsync(fsp.stat(path.join(state, PUSHED_FILE)), { code: 'ENOENT' });
});

test.serial('an interrupted write leaves the previous pushed.json and item intact', async (t) => {
  const state = await stateDir(t);
  const store = await QueueStore.open(state);
  const before = { 'r|a:v1': { fingerprint: 'x', digest: 'sha256:before' } };
  await store.savePushed(before);
  const it = item('5'.repeat(24));
  await store.saveItem(it);
  const itemText = await fsp.readFile(path.join(store.dir, `${it.id}.json`), 'utf8');

  // The write is cut off before the rename that would publish it (util/fs-atomic.ts writes a temp file first).
  const rename = fsp.rename;
  fsp.rename = async () => {
    throw Object.assign(new Error('killed'), { code: 'EIO' });
  };
  try {
    await t.throwsAsync(store.savePushed({ 'r|a:v1': { fingerprint: 'y', digest: 'sha256:after' } }), { message: 'killed' });
    await t.throwsAsync(store.saveItem({ ...it, state: 'done' }), { message: 'killed' });
  } finally {
    fsp.rename = rename;
  }
  // A process killed mid-write leaves at most a hidden temp file, which nothing reads.
  await fsp.writeFile(path.join(store.dir, `.${PUSHED_FILE}.0123456789ab.tmp`), '{"torn');
  await fsp.writeFile(path.join(store.dir, `.${it.id}.json.0123456789ab.tmp`), '{"torn');

  const again = await QueueStore.open(state);
  t.deepEqual(await again.loadPushed(), before);
  t.is(await fsp.readFile(path.join(store.dir, `${it.id}.json`), 'utf8'), itemText);
  t.deepEqual((await again.loadItems()).map((i) => [i.id, i.state]), [[it.id, 'pending']]);
  const left = (await fsp.readdir(store.dir)).filter((f) => f.endsWith('.tmp'));
  t.deepEqual(left.sort(), [`.${it.id}.json.0123456789ab.tmp`, `.${PUSHED_FILE}.0123456789ab.tmp`].sort());
});

import test, { type ExecutionContext } from 'ava';
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { BlobCache, type BlobCacheOptions } from '../cache/blob-cache.js';
import type { Descriptor } from '../registry/descriptor.js';
import { digestHex, type Digest } from '../registry/digest.js';
import { RegfsError } from '../util/errors.js';
import { currentBootId } from '../cache/range-map-file.js';
import { RemoteRegistry } from '../registry/remote.js';
import type { ByteRange, FetchedManifest, ListOptions, ReadableRepository } from '../registry/storage.js';
import { startFaultProxy, type FaultProxy } from '../lab/fault-proxy.js';
import { startRegistry, type StartedRegistry } from '../lab/registry.js';

const MiB = 1024 * 1024;
const REPO = 'cache/test';
const BIG_SIZE = 64 * MiB;
const READ_SIZE = 128 * 1024;

interface Blob {
  data: Buffer;
  desc: Descriptor;
}

let reg: StartedRegistry;
let big: Blob;

function makeBlob(size: number): Blob {
  const data = randomBytes(size);
  const digest = `sha256:${createHash('sha256').update(data).digest('hex')}` as Digest;
  return { data, desc: { mediaType: 'application/octet-stream', digest, size } };
}

async function push(host: string, b: Blob, repo = REPO): Promise<void> {
  const r = new RemoteRegistry(host).repository(repo);
  try {
    await r.pushBlob(b.desc, () => Readable.from([b.data]));
  } finally {
    await r.registry.close();
  }
}

/** pushed makes a random blob of `size` bytes and uploads it to the shared registry. */
async function pushed(size: number): Promise<Blob> {
  const b = makeBlob(size);
  await push(reg.host, b);
  return b;
}

async function tempDir(t: ExecutionContext): Promise<string> {
  const parent = await fsp.mkdtemp(path.join(os.tmpdir(), 'regfs-blob-cache-'));
  t.teardown(() => fsp.rm(parent, { recursive: true, force: true }));
  return path.join(parent, 'cache');
}

interface Env {
  proxy: FaultProxy;
  repo: ReadableRepository;
  dir: string;
  cache: BlobCache;
  open(opts?: BlobCacheOptions): Promise<BlobCache>;
}

/** env gives a test its own fault proxy (to count upstream bytes), client, cache dir and open cache. */
async function env(t: ExecutionContext, opts: BlobCacheOptions = {}): Promise<Env> {
  const proxy = await startFaultProxy(t, reg.url);
  const client = new RemoteRegistry(proxy.host, { retries: 0, timeoutMs: 5000 });
  t.teardown(() => client.close());
  const dir = await tempDir(t);
  const open = async (o: BlobCacheOptions = opts): Promise<BlobCache> => {
    const c = await BlobCache.open(dir, { minFreeBytes: 0, ...o });
    t.teardown(() => c.close());
    return c;
  };
  return { proxy, repo: client.repository(REPO), dir, cache: await open(), open };
}

function blobGets(proxy: FaultProxy, b: Blob): number {
  return proxy.count('GET', new RegExp(`/blobs/${b.desc.digest}$`));
}

async function readAt(cache: BlobCache, repo: ReadableRepository, b: Blob, offset: number, length: number): Promise<Buffer> {
  const buf = Buffer.alloc(length);
  const n = await cache.read(repo, b.desc, buf, offset, length);
  return buf.subarray(0, n);
}

async function readSequentially(t: ExecutionContext, cache: BlobCache, repo: ReadableRepository, b: Blob, chunk = READ_SIZE): Promise<void> {
  const buf = Buffer.alloc(chunk);
  for (let off = 0; off < b.desc.size; off += chunk) {
    const n = await cache.read(repo, b.desc, buf, off, chunk);
    const want = Math.min(chunk, b.desc.size - off);
    if (n !== want || !buf.subarray(0, n).equals(b.data.subarray(off, off + n))) {
      t.fail(`wrong bytes at ${off}: got ${n} bytes, want ${want}`);
      return;
    }
  }
}

async function listDir(dir: string): Promise<string[]> {
  return (await fsp.readdir(dir)).sort();
}

function isCode(code: string): (e: unknown) => boolean {
  return (e) => e instanceof RegfsError && e.code === code;
}

test.before(async () => {
  reg = await startRegistry(undefined, { flavour: 'plain' });
  big = await pushed(BIG_SIZE);
});

test.after.always(async () => {
  await reg?.stop();
});

test('small blob: 16 concurrent readers share one whole, verified fetch', async (t) => {
  const b = await pushed(3 * MiB + 17);
  const e = await env(t);
  const reads = await Promise.all(Array.from({ length: 16 }, (_, i) => readAt(e.cache, e.repo, b, i * 1000, 64 * 1024)));
  reads.forEach((r, i) => t.true(r.equals(b.data.subarray(i * 1000, i * 1000 + 64 * 1024)), `reader ${i}`));
  t.is(blobGets(e.proxy, b), 1);
  t.is(e.proxy.bytesOut(), b.desc.size);
  t.true(await e.cache.has(b.desc.digest));
  t.deepEqual(await listDir(path.join(e.dir, 'blobs', 'sha256')), [digestHex(b.desc.digest)]);
  t.deepEqual(await listDir(path.join(e.dir, 'ingest')), []);
  // Reads at and past EOF, and a read clamped at EOF.
  t.is((await readAt(e.cache, e.repo, b, b.desc.size, 10)).length, 0);
  t.is((await readAt(e.cache, e.repo, b, b.desc.size + 5, 10)).length, 0);
  t.true((await readAt(e.cache, e.repo, b, b.desc.size - 5, 100)).equals(b.data.subarray(b.desc.size - 5)));
  const s = e.cache.stats();
  t.is(s.misses + s.hits, 19);
  t.is(s.bytesFetched, b.desc.size);
  t.is(s.blobs, 1);
  t.is(s.bytesOnDisk, b.desc.size);
  t.is(blobGets(e.proxy, b), 1);
});

test('large blob: a 4 KiB read fetches about one read-ahead window; overlapping readers share it', async (t) => {
  const e = await env(t);
  const reads = await Promise.all(Array.from({ length: 8 }, () => readAt(e.cache, e.repo, big, 0, 4096)));
  for (const r of reads) t.true(r.equals(big.data.subarray(0, 4096)));
  t.true(e.proxy.bytesOut() <= 2 * MiB, `transferred ${e.proxy.bytesOut()} bytes`);
  t.is(blobGets(e.proxy, big), 1);
  t.is(e.cache.stats().partials, 1);
  t.is(e.cache.stats().blobs, 0);
  // Bytes already fetched are served without a request.
  const before = e.proxy.requests.length;
  t.true((await readAt(e.cache, e.repo, big, 100_000, 4096)).equals(big.data.subarray(100_000, 104_096)));
  t.is(e.proxy.requests.length, before);
});

test('large blob: a sequential read transfers it once and ends verified in blobs/ with partial/ empty', async (t) => {
  const e = await env(t);
  const started = process.hrtime.bigint();
  await readSequentially(t, e.cache, e.repo, big);
  const ms = Number(process.hrtime.bigint() - started) / 1e6;
  const path1 = await e.cache.ensureBlob(e.repo, big.desc);
  t.is(path1, path.join(e.dir, 'blobs', 'sha256', digestHex(big.desc.digest)));
  const transferred = e.proxy.bytesOut();
  t.true(transferred >= BIG_SIZE && transferred <= BIG_SIZE * 1.02, `transferred ${transferred} bytes`);
  // The window ramps (1 MiB, then twice the bytes read) and is cut into 8 MiB chunks: 64/8 plus the ramp.
  t.true(blobGets(e.proxy, big) <= 16, `${blobGets(e.proxy, big)} range requests`);
  t.deepEqual(await listDir(path.join(e.dir, 'partial')), []);
  t.true(await e.cache.has(big.desc.digest));
  t.true(await e.cache.verifyCached(big.desc.digest));
  const s = e.cache.stats();
  t.is(s.blobs, 1);
  t.is(s.partials, 0);
  t.is(s.bytesServed, BIG_SIZE);
  t.log(`cold sequential read of 64 MiB through read() (${READ_SIZE / 1024} KiB reads, via the in-process proxy, alongside the other tests): ${ms.toFixed(0)} ms, ${(BIG_SIZE / MiB / (ms / 1000)).toFixed(0)} MiB/s, ${blobGets(e.proxy, big)} requests`);
});

test('large blob: random reads return the right bytes, concurrently and one by one', async (t) => {
  const e = await env(t);
  let seed = 7;
  const rnd = (n: number): number => {
    seed = (seed * 1103515245 + 12345) % 2147483648;
    return seed % n;
  };
  const spots = Array.from({ length: 10 }, () => ({ off: rnd(BIG_SIZE), len: 1 + rnd(200_000) }));
  spots.push({ off: BIG_SIZE - 10, len: 4096 }, { off: 0, len: 1 });
  const got = await Promise.all(spots.map((s) => readAt(e.cache, e.repo, big, s.off, s.len)));
  spots.forEach((s, i) => t.true(got[i]!.equals(big.data.subarray(s.off, s.off + s.len)), `concurrent read at ${s.off}`));
  for (const s of spots) t.true((await readAt(e.cache, e.repo, big, s.off, s.len)).equals(big.data.subarray(s.off, s.off + s.len)), `read at ${s.off}`);
  t.true(e.proxy.bytesOut() <= 13 * MiB, `transferred ${e.proxy.bytesOut()} bytes`);
});

test('a reader of the first 4 KiB does not wait for the whole read-ahead', async (t) => {
  // A wrapper that slows the stream after its first chunk (the registry is still real).
  const proxy = await startFaultProxy(t, reg.url);
  const client = new RemoteRegistry(proxy.host, { retries: 0, timeoutMs: 5000 });
  t.teardown(() => client.close());
  const slow = new SlowRepository(client.repository(REPO), 30);
  const dir = await tempDir(t);
  const cache = await BlobCache.open(dir, { minFreeBytes: 0, readAheadStart: 32 * MiB });
  t.teardown(() => cache.close());
  // The 32 MiB read-ahead streams at ~64 KiB per 30 ms; the reader must be served long before it ends.
  t.true((await readAt(cache, slow, big, 0, 4096)).equals(big.data.subarray(0, 4096)));
  t.true(cache.stats().bytesFetched < 16 * MiB, `${cache.stats().bytesFetched} bytes were fetched before the read returned`);
  await cache.close(); // stops the slow fetch, keeping what was written
  const reopened = await BlobCache.open(dir, { minFreeBytes: 0 });
  t.teardown(() => reopened.close());
  t.true(reopened.stats().bytesOnDisk > 0);
  t.is(reopened.stats().partials, 1);
});

test('restart keeps fetched ranges: a re-read transfers nothing', async (t) => {
  const e = await env(t);
  const spots = [0, 5 * MiB + 3, 40 * MiB, BIG_SIZE - 100];
  for (const off of spots) await readAt(e.cache, e.repo, big, off, 4096);
  await e.cache.idle(); // let read-ahead finish, so the re-read needs none
  const covered = e.cache.stats().bytesOnDisk;
  await e.cache.close();
  const files = await listDir(path.join(e.dir, 'partial'));
  t.deepEqual(files, [digestHex(big.desc.digest), `${digestHex(big.desc.digest)}.ranges.json`]);
  const again = await e.open();
  t.is(again.stats().partials, 1);
  t.is(again.stats().bytesOnDisk, covered);
  e.proxy.reset();
  for (const off of spots) t.true((await readAt(again, e.repo, big, off, 4096)).equals(big.data.subarray(off, off + 4096)));
  t.is(e.proxy.requests.length, 0);
  t.is(e.proxy.bytesOut(), 0);
  t.is(again.stats().hits, spots.length);
  t.is(again.stats().misses, 0);
});

test('range maps: an unsynced map is trusted in the same boot only; close writes a synced one', async (t) => {
  const e = await env(t);
  await readAt(e.cache, e.repo, big, 0, 4096);
  await e.cache.idle();
  const mapFile = path.join(e.dir, 'partial', `${digestHex(big.desc.digest)}.ranges.json`);
  // While the blob streams in, the map is written without flushing the data: unsynced, with this boot's id.
  const streaming = JSON.parse(await fsp.readFile(mapFile, 'utf8')) as { version: number; synced: boolean; bootId: string };
  t.is(streaming.version, 2);
  t.false(streaming.synced);
  t.is(streaming.bootId, currentBootId());
  const covered = e.cache.stats().bytesOnDisk;
  await e.cache.close();
  // A clean close flushes the data and marks the map synced: it holds across a reboot.
  const closed = JSON.parse(await fsp.readFile(mapFile, 'utf8')) as { synced: boolean };
  t.true(closed.synced);

  // An unsynced map from this boot (a crashed process: the page cache still has the bytes) is kept...
  await fsp.writeFile(mapFile, JSON.stringify({ ...streaming, synced: false, bootId: currentBootId() }));
  const same = await e.open();
  t.is(same.stats().partials, 1);
  t.is(same.stats().bytesOnDisk, covered);
  await same.close();
  // ...one from another boot (the bytes may never have reached the disk) is dropped with its data.
  const other = JSON.parse(await fsp.readFile(mapFile, 'utf8')) as Record<string, unknown>;
  await fsp.writeFile(mapFile, JSON.stringify({ ...other, synced: false, bootId: 'another-boot' }));
  const rebooted = await e.open();
  t.is(rebooted.stats().partials, 0);
  t.deepEqual(await listDir(path.join(e.dir, 'partial')), []);
  e.proxy.reset();
  t.true((await readAt(rebooted, e.repo, big, 0, 4096)).equals(big.data.subarray(0, 4096)));
  t.true(e.proxy.bytesOut() > 0, 'the dropped bytes are fetched again');
});

test('corrupt upstream bytes (small blob): DIGEST_MISMATCH and nothing lands in blobs/', async (t) => {
  const b = await pushed(200_000);
  const e = await env(t, { mismatchBackoffMs: 300 });
  e.proxy.rules.push({ path: new RegExp(`/blobs/${b.desc.digest}$`), flipByteAt: 5 });
  await t.throwsAsync(readAt(e.cache, e.repo, b, 0, 100), { instanceOf: RegfsError, message: /digest mismatch/ });
  // During the back-off the digest is refused without asking the registry again.
  const err = await t.throwsAsync(readAt(e.cache, e.repo, b, 0, 100));
  t.true(isCode('DIGEST_MISMATCH')(err), String(err));
  t.is(blobGets(e.proxy, b), 1);
  t.deepEqual(await listDir(path.join(e.dir, 'blobs', 'sha256')), []);
  t.deepEqual(await listDir(path.join(e.dir, 'ingest')), []);
  t.false(await e.cache.has(b.desc.digest));
  // Once the registry serves good bytes, the next read after the back-off starts over.
  e.proxy.rules.length = 0;
  await new Promise((r) => setTimeout(r, 600));
  t.true((await readAt(e.cache, e.repo, b, 0, 100)).equals(b.data.subarray(0, 100)));
  t.is(blobGets(e.proxy, b), 2);
});

test('corrupt upstream bytes (large blob): the read completing it fails with DIGEST_MISMATCH, partial data is deleted', async (t) => {
  const b = await pushed(9 * MiB);
  const e = await env(t, { mismatchBackoffMs: 60_000 });
  e.proxy.rules.push({ path: new RegExp(`/blobs/${b.desc.digest}$`), flipByteAt: 5, times: 1 });
  const buf = Buffer.alloc(READ_SIZE);
  let failure: unknown;
  for (let off = 0; off < b.desc.size; off += READ_SIZE) {
    try {
      await e.cache.read(e.repo, b.desc, buf, off, READ_SIZE);
    } catch (err) {
      failure = err;
      break;
    }
  }
  t.true(isCode('DIGEST_MISMATCH')(failure), String(failure));
  // Later reads fail the same way during the back-off; an eviction ends it.
  t.true(isCode('DIGEST_MISMATCH')(await t.throwsAsync(readAt(e.cache, e.repo, b, 0, 10))));
  t.deepEqual(await listDir(path.join(e.dir, 'blobs', 'sha256')), []);
  t.deepEqual(await listDir(path.join(e.dir, 'partial')), []);
  t.is(e.cache.stats().partials, 0);
  await e.cache.evict();
  await readSequentially(t, e.cache, e.repo, b, MiB);
  t.true(await e.cache.has(b.desc.digest));
});

test('a cached blob altered on disk is detected (first open after restart, and verifyCached) and refetched', async (t) => {
  const b = await pushed(100_000);
  const e = await env(t);
  await readAt(e.cache, e.repo, b, 0, 10);
  await e.cache.close();
  const file = path.join(e.dir, 'blobs', 'sha256', digestHex(b.desc.digest));
  const altered = Buffer.from(b.data);
  altered[50] = altered[50]! ^ 0xff;
  await fsp.writeFile(file, altered);
  const c = await e.open();
  e.proxy.reset();
  t.true((await readAt(c, e.repo, b, 0, b.desc.size)).equals(b.data), 'refetched bytes are right');
  t.is(blobGets(e.proxy, b), 1);
  t.true((await fsp.readFile(file)).equals(b.data));
  // Altered while running: verifyCached finds it and deletes it; the next read refetches.
  await fsp.writeFile(file, altered);
  t.false(await c.verifyCached(b.desc.digest));
  t.false(await c.has(b.desc.digest));
  t.true((await readAt(c, e.repo, b, 40, 20)).equals(b.data.subarray(40, 60)));
  t.is(blobGets(e.proxy, b), 2);
  t.true(await c.verifyCached(b.desc.digest));
});

test('close lists verified blobs in verified.json; the next open takes the list, serves them without refetching, and a blob changed since is hashed again', async (t) => {
  const [b, c] = await Promise.all([pushed(100_000), pushed(200_000)]);
  const e = await env(t);
  await readAt(e.cache, e.repo, b!, 0, 10);
  await readAt(e.cache, e.repo, c!, 0, 10);
  await e.cache.close();
  const listFile = path.join(e.dir, 'verified.json');
  const list = JSON.parse(await fsp.readFile(listFile, 'utf8')) as { blobs: Record<string, string[]> };
  t.deepEqual(Object.keys(list.blobs).sort(), [b!.desc.digest, c!.desc.digest].sort());
  // c changes on disk while closed (same size): its ctime moves, so it is hashed, found wrong and refetched.
  const cFile = path.join(e.dir, 'blobs', 'sha256', digestHex(c!.desc.digest));
  const altered = Buffer.from(c!.data);
  altered[7] = altered[7]! ^ 0xff;
  await fsp.writeFile(cFile, altered);
  const again = await e.open();
  await t.throwsAsync(fsp.access(listFile), undefined, 'the list is taken at open (a crash leaves none)');
  e.proxy.reset();
  t.true((await readAt(again, e.repo, b!, 0, b!.desc.size)).equals(b!.data));
  t.is(blobGets(e.proxy, b!), 0, 'the vouched blob is served from the cache');
  t.true((await readAt(again, e.repo, c!, 0, c!.desc.size)).equals(c!.data));
  t.is(blobGets(e.proxy, c!), 1, 'the changed blob is refetched');
});

test('eviction keeps the newest and never a pinned blob', async (t) => {
  const blobs = await Promise.all([1, 2, 3, 4].map(() => pushed(MiB)));
  const [a, b, c, d] = blobs as [Blob, Blob, Blob, Blob];
  const e = await env(t, { maxSize: 2.5 * MiB });
  e.cache.pin(a.desc.digest);
  for (const x of [a, b, c, d]) await readAt(e.cache, e.repo, x, 0, 10);
  // Eviction runs in the background after each blob lands.
  await e.cache.idle();
  t.true(await e.cache.has(a.desc.digest), 'pinned blob kept');
  t.true(await e.cache.has(d.desc.digest), 'newest blob kept');
  t.false(await e.cache.has(b.desc.digest));
  t.false(await e.cache.has(c.desc.digest));
  t.is(e.cache.stats().evictions, 2);
  t.deepEqual(await e.cache.evict({ maxSize: 0 }), { evicted: 1, bytes: MiB });
  t.true(await e.cache.has(a.desc.digest), 'still pinned');
  e.cache.unpin(a.desc.digest);
  t.deepEqual(await e.cache.evict({ maxSize: 0 }), { evicted: 1, bytes: MiB });
  t.is(e.cache.stats().bytesOnDisk, 0);
  t.deepEqual(await listDir(path.join(e.dir, 'blobs', 'sha256')), []);
  // Evicted content is fetched again on demand.
  t.true((await readAt(e.cache, e.repo, b, 5, 5)).equals(b.data.subarray(5, 10)));
});

test('eviction also removes idle partial blobs, least recently used first', async (t) => {
  const e = await env(t);
  await readAt(e.cache, e.repo, big, 0, 4096);
  await e.cache.idle();
  const covered = e.cache.stats().bytesOnDisk;
  t.is(covered, MiB);
  t.deepEqual(await e.cache.evict({ maxSize: 0 }), { evicted: 1, bytes: covered });
  t.deepEqual(await listDir(path.join(e.dir, 'partial')), []);
  t.is(e.cache.stats().partials, 0);
});

test('strict mode fetches and verifies the whole blob before serving any byte', async (t) => {
  const b = await pushed(6 * MiB);
  const e = await env(t, { verify: 'strict' });
  t.true((await readAt(e.cache, e.repo, b, 10, 4096)).equals(b.data.subarray(10, 4106)));
  t.true(await e.cache.has(b.desc.digest));
  t.is(e.proxy.bytesOut(), b.desc.size);
  t.deepEqual(await listDir(path.join(e.dir, 'partial')), []);
});

test('ensureBlob completes a partial blob by fetching only its gaps', async (t) => {
  const b = await pushed(12 * MiB);
  const e = await env(t);
  await readAt(e.cache, e.repo, b, 0, 4096);
  const first = e.proxy.bytesOut();
  const [p1, p2] = await Promise.all([e.cache.ensureBlob(e.repo, b.desc), e.cache.ensureBlob(e.repo, b.desc)]);
  t.is(p1, p2);
  t.true((await fsp.readFile(p1!)).equals(b.data));
  t.is(e.proxy.bytesOut(), b.desc.size, `first read ${first} bytes, total ${e.proxy.bytesOut()}`);
});

test('lock: a second open of the same dir is a CONFLICT; a dead owner is taken over', async (t) => {
  const e = await env(t);
  const err = await t.throwsAsync(BlobCache.open(e.dir, { minFreeBytes: 0 }));
  t.true(isCode('CONFLICT')(err), String(err));
  t.regex((err as Error).message, new RegExp(`in use by pid ${process.pid}`));
  await e.cache.close();
  const again = await e.open();
  await again.close();
  // A lock left by a process that is gone.
  const child = spawn(process.execPath, ['-e', '0']);
  const deadPid = await new Promise<number>((resolve) => child.on('exit', () => resolve(child.pid!)));
  await fsp.writeFile(path.join(e.dir, 'lock'), `${deadPid}\n`);
  const third = await e.open();
  t.is((await fsp.readFile(path.join(e.dir, 'lock'), 'utf8')).trim(), String(process.pid));
  await third.close();
  await t.throwsAsync(fsp.access(path.join(e.dir, 'lock')));
});

test('unsafe cache dirs are refused: group-writable, symlinked root, symlinked subdir', async (t) => {
  const dir = await tempDir(t);
  await fsp.mkdir(dir, { mode: 0o700 });
  await fsp.chmod(dir, 0o770);
  const err = await t.throwsAsync(BlobCache.open(dir, { minFreeBytes: 0 }));
  t.true(isCode('UNSAFE_PATH')(err), String(err));
  t.true((err as Error).message.includes(dir));
  await fsp.chmod(dir, 0o700);
  const link = `${dir}-link`;
  await fsp.symlink(dir, link);
  const err2 = await t.throwsAsync(BlobCache.open(link, { minFreeBytes: 0 }));
  t.true(isCode('UNSAFE_PATH')(err2), String(err2));
  const elsewhere = `${dir}-elsewhere`;
  await fsp.mkdir(elsewhere, { mode: 0o700 });
  await fsp.symlink(elsewhere, path.join(dir, 'partial'));
  const err3 = await t.throwsAsync(BlobCache.open(dir, { minFreeBytes: 0 }));
  t.true(isCode('UNSAFE_PATH')(err3), String(err3));
  t.true((err3 as Error).message.includes(path.join(dir, 'partial')));
  await fsp.rm(path.join(dir, 'partial'));
  const ok = await BlobCache.open(dir, { minFreeBytes: 0 });
  t.is(((await fsp.stat(path.join(dir, 'partial'))).mode & 0o777), 0o700);
  await ok.close();
});

test('registry down: a cached blob still reads, an uncached read fails fast', async (t) => {
  const own = await startRegistry(t, { flavour: 'plain' });
  const cached = makeBlob(50_000);
  const uncached = makeBlob(60_000);
  await push(own.host, cached);
  await push(own.host, uncached);
  const client = new RemoteRegistry(own.host, { retries: 0, timeoutMs: 2000 });
  t.teardown(() => client.close());
  const repo = client.repository(REPO);
  const dir = await tempDir(t);
  const cache = await BlobCache.open(dir, { minFreeBytes: 0 });
  t.teardown(() => cache.close());
  await readAt(cache, repo, cached, 0, 10);
  await own.kill();
  t.true((await readAt(cache, repo, cached, 100, 1000)).equals(cached.data.subarray(100, 1100)));
  const started = Date.now();
  const err = await t.throwsAsync(readAt(cache, repo, uncached, 0, 10));
  t.true(err instanceof RegfsError, String(err));
  t.true(Date.now() - started < 5000, `took ${Date.now() - started} ms`);
  t.true(isCode('DIGEST_MISMATCH')(err) === false);
  // Not poisoned: with the registry back, the same read works.
  await own.restart();
  t.true((await readAt(cache, repo, uncached, 0, 10)).equals(uncached.data.subarray(0, 10)));
});

test('leftovers are cleaned at open: ingest temp files, maps without data, garbage maps', async (t) => {
  const dir = await tempDir(t);
  const c = await BlobCache.open(dir, { minFreeBytes: 0 });
  await c.close();
  const hex = 'ab'.repeat(32);
  await fsp.writeFile(path.join(dir, 'ingest', 'junk.part'), 'x');
  await fsp.writeFile(path.join(dir, 'partial', `${hex}.ranges.json`), '{"version":1,"digest":"sha256:' + hex + '","size":10,"ranges":[[0,5]]}');
  const hex2 = 'cd'.repeat(32);
  await fsp.writeFile(path.join(dir, 'partial', hex2), 'abc');
  await fsp.writeFile(path.join(dir, 'partial', `${hex2}.ranges.json`), '{"version":1,"digest":"sha256:' + hex2 + '","size":10,"ranges":[[5,3]]}');
  const c2 = await BlobCache.open(dir, { minFreeBytes: 0 });
  t.teardown(() => c2.close());
  t.deepEqual(await listDir(path.join(dir, 'ingest')), []);
  t.deepEqual(await listDir(path.join(dir, 'partial')), []);
  t.is(c2.stats().partials, 0);
});

test('read arguments are validated', async (t) => {
  const e = await env(t);
  const buf = Buffer.alloc(10);
  for (const [off, len] of [[-1, 5], [0, 11], [0.5, 1]] as Array<[number, number]>) {
    const err = await t.throwsAsync(e.cache.read(e.repo, big.desc, buf, off, len));
    t.true(isCode('INVALID_ARGUMENT')(err), String(err));
  }
  const err = await t.throwsAsync(e.cache.read(e.repo, { ...big.desc, digest: 'sha256:../../etc' as Digest }, buf, 0, 1));
  t.true(isCode('INVALID_DIGEST')(err), String(err));
  t.is(e.proxy.requests.length, 0);
});

/** SlowRepository delegates to a real repository but delays each stream chunk after the first by `delayMs`. */
class SlowRepository implements ReadableRepository {
  readonly name: string;
  readonly display: string;
  constructor(private readonly inner: ReadableRepository, private readonly delayMs: number) {
    this.name = inner.name;
    this.display = inner.display;
  }
  resolve(reference: string, signal?: AbortSignal): Promise<Descriptor> {
    return this.inner.resolve(reference, signal);
  }
  fetchManifest(reference: string | Descriptor, signal?: AbortSignal): Promise<FetchedManifest> {
    return this.inner.fetchManifest(reference, signal);
  }
  async fetchBlob(desc: Descriptor, range?: ByteRange, signal?: AbortSignal): Promise<Readable> {
    const src = await this.inner.fetchBlob(desc, range, signal);
    const delay = this.delayMs;
    return Readable.from(
      (async function* () {
        let first = true;
        try {
          for await (const c of src) {
            if (!first) await new Promise((r) => setTimeout(r, delay));
            first = false;
            yield c as Buffer;
          }
        } finally {
          src.destroy();
        }
      })(),
    );
  }
  blobExists(desc: Descriptor): Promise<boolean> {
    return this.inner.blobExists(desc);
  }
  statBlob(digest: Digest): Promise<Descriptor> {
    return this.inner.statBlob(digest);
  }
  listTags(opts?: ListOptions): Promise<string[]> {
    return this.inner.listTags(opts);
  }
  referrers(subject: Descriptor, artifactType?: string): Promise<Descriptor[]> {
    return this.inner.referrers(subject, artifactType);
  }
}

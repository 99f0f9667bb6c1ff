/**
 * Unit tests of serving a waiting read from a fetch's bytes before they are written (cache/partial-blob.ts
 * waitFor with a target buffer, cache/batched-writer.ts copyOut, cache/recent-bytes.ts readPrefix). The
 * file handle is a real temp file whose writes the test can hold, to catch bytes between arrival and write.
 */
import test, { type ExecutionContext } from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { PassThrough, type Readable } from 'node:stream';
import { BatchedWriter } from '../cache/batched-writer.js';
import { PartialBlob } from '../cache/partial-blob.js';
import { RangeSet } from '../cache/range-set.js';
import { ReadAhead } from '../cache/read-ahead.js';
import { RecentBytes } from '../cache/recent-bytes.js';
import { parseDigest } from '../registry/digest.js';

interface Held {
  fh: FileHandle;
  /** release lets the writes through (held ones and later ones). */
  release(): void;
  writes: number;
}

/** heldFile opens a temp file whose writev waits until release() (reads pass). */
async function heldFile(t: ExecutionContext): Promise<Held & { path: string }> {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'regfs-stream-serve-'));
  t.teardown(() => fsp.rm(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'data');
  const real = await fsp.open(file, 'w+');
  t.teardown(() => real.close().catch(() => undefined));
  let open!: () => void;
  const gate = new Promise<void>((r) => (open = r));
  const held: Held & { path: string } = {
    path: file,
    writes: 0,
    release: () => open(),
    fh: new Proxy(real, {
      get(target, prop, recv) {
        if (prop === 'writev') {
          return async (bufs: Buffer[], pos: number) => {
            held.writes++;
            await gate;
            return target.writev(bufs, pos);
          };
        }
        const v = Reflect.get(target, prop, recv) as unknown;
        return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
      },
    }),
  };
  return held;
}

test('BatchedWriter.copyOut hands out bytes being written and queued, in order, and nothing else', async (t) => {
  const f = await heldFile(t);
  const w = new BatchedWriter(f.fh, 1000, () => undefined);
  const a = randomBytes(300);
  const b = randomBytes(200);
  w.push(a); // written at once: held in the writev
  w.push(b); // queued behind it
  const dst = Buffer.alloc(600);
  t.is(w.copyOut(999, dst, 900, 1600), 999, 'nothing before the first pushed byte');
  t.is(w.copyOut(1100, dst, 1100, 1600), 1500, 'from the writev in progress through the queue');
  t.true(dst.subarray(0, 400).equals(Buffer.concat([a, b]).subarray(100)));
  t.is(w.copyOut(1500, dst, 1100, 1600), 1500, 'nothing past the last pushed byte');
  t.is(w.copyOut(1200, dst, 1200, 1250), 1250, 'up to dstEnd only');
  f.release();
  await w.drain();
  t.is(w.copyOut(1100, dst, 1100, 1600), 1100, 'written bytes are the file\'s, not the writer\'s');
});

test('RecentBytes.readPrefix copies the contiguous run memory holds from the offset', (t) => {
  const r = new RecentBytes(1 << 20);
  const d = parseDigest(`sha256:${'a'.repeat(64)}`);
  const x = randomBytes(100);
  const y = randomBytes(100);
  r.add(d, 0, x);
  r.add(d, 100, y);
  const out = Buffer.alloc(300);
  t.is(r.readPrefix(d, 50, out, 300), 150);
  t.true(out.subarray(0, 150).equals(Buffer.concat([x, y]).subarray(50)));
  t.is(r.readPrefix(d, 200, out, 10), 0);
  t.is(r.readPrefix(d, 10, out, 20), 20);
});

async function partialWithStream(t: ExecutionContext, size: number) {
  const data = randomBytes(size);
  const digest = parseDigest(`sha256:${createHash('sha256').update(data).digest('hex')}`);
  const f = await heldFile(t);
  const p = new PartialBlob(digest, size, new RangeSet(), new ReadAhead(1 << 20, 64 << 20), {
    dataPath: f.path,
    mapPath: `${f.path}.ranges.json`,
    open: async () => ({ fh: f.fh, release: () => undefined }),
    onBytes: () => undefined,
  }, 0);
  t.teardown(() => {
    f.release();
    return p.retire();
  });
  const stream = new PassThrough();
  const task = p.startFetch({ start: 0, end: size }, async (): Promise<Readable> => stream);
  return { data, f, p, stream, task };
}

test('a waiting read gets the bytes of a fetch as they arrive, before any of them is on the file', async (t) => {
  const { data, f, p, stream } = await partialWithStream(t, 1 << 20);
  const into = Buffer.alloc(4096);
  const waiting = p.waitFor(8192, 8192 + 4096, into);
  stream.write(data.subarray(0, 10_000));
  stream.write(data.subarray(10_000, 20_000));
  t.true(await waiting, 'served from the stream');
  t.true(into.equals(data.subarray(8192, 8192 + 4096)));
  t.false(p.ranges.has(8192, 8192 + 4096), 'nothing was written yet');
  t.true(f.writes >= 1);
  // Bytes that arrived while a write is held: a later read is served from the writer at once.
  const later = Buffer.alloc(5000);
  t.true(await p.waitFor(12_000, 17_000, later));
  t.true(later.equals(data.subarray(12_000, 17_000)));
  // A read that starts with bytes memory already has (filled) and ends in bytes not yet arrived.
  const mixed = Buffer.alloc(10_000);
  data.copy(mixed, 0, 15_000, 18_000);
  const w2 = p.waitFor(15_000, 25_000, mixed, 3000);
  stream.write(data.subarray(20_000, 30_000));
  t.true(await w2);
  t.true(mixed.equals(data.subarray(15_000, 25_000)));
  stream.end(data.subarray(30_000));
  f.release();
});

test('the read of the blob\'s last byte waits for the file (then the verification), never the stream', async (t) => {
  const { data, f, p, stream, task } = await partialWithStream(t, 64 * 1024);
  const into = Buffer.alloc(1024);
  const waiting = p.waitFor(data.length - 1024, data.length, into);
  stream.end(data);
  await new Promise((r) => setTimeout(r, 50));
  t.true(f.writes >= 1);
  t.false(p.ranges.has(data.length - 1024, data.length));
  f.release();
  t.false(await waiting, 'woken by the write, not served');
  await task.done;
  t.true(p.isComplete());
});

test('a fetch that fails before the bytes arrived wakes the read without serving it', async (t) => {
  const { data, f, p, stream } = await partialWithStream(t, 1 << 20);
  const into = Buffer.alloc(4096);
  const waiting = p.waitFor(100_000, 104_096, into);
  stream.write(data.subarray(0, 50_000));
  await new Promise((r) => setTimeout(r, 20));
  stream.destroy(new Error('connection reset'));
  f.release(); // the fetch settles once its writes are done
  const err = await t.throwsAsync(waiting);
  t.regex(String(err), /connection reset/);
});

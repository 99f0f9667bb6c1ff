/**
 * Read-ahead policy and the range planner (pure logic): what a reader pattern makes the cache fetch.
 * A simulated clock streams each planned fetch at a fixed per-connection rate, so the parallel-stream
 * planner can be checked deterministically (the bench measures it against a real capped proxy).
 */
import test from 'ava';
import { PartialBlob, type FetchTask, type ReadStreams } from '../cache/partial-blob.js';
import { RangeSet, type ByteSpan } from '../cache/range-set.js';
import { ReadAhead } from '../cache/read-ahead.js';
import type { Digest } from '../registry/digest.js';

const KiB = 1024;
const MiB = 1024 * KiB;

function blob(size: number): PartialBlob {
  const files = {
    dataPath: '/nonexistent/regfs-test',
    mapPath: '/nonexistent/regfs-test.ranges.json',
    open: () => Promise.reject(new Error('no files in a planner test')),
    onBytes: () => undefined,
  };
  return new PartialBlob(`sha256:${'0'.repeat(64)}` as Digest, size, new RangeSet(), new ReadAhead(MiB, 64 * MiB), files, 0);
}

interface SimTask extends FetchTask {
  rate: number;
}

/**
 * simulate runs a reader over `reads` (each [start, end)) against a blob whose planned fetches each
 * stream at `rate` bytes/s (one per connection) after `ttfb` seconds; it returns the simulated seconds,
 * the spans fetched and the most fetches in flight at once.
 */
function simulate(size: number, reads: ByteSpan[], rs: ReadStreams, rate: number, ttfb = 0): { seconds: number; fetched: ByteSpan[]; peak: number } {
  const p = blob(size);
  const fetched: ByteSpan[] = [];
  const starts = new Map<FetchTask, number>();
  let now = 0;
  let peak = 0;
  const dt = 0.0005;
  for (const r of reads) {
    const window = p.readAhead.advance(r.start, r.end);
    for (const s of p.plan(r.start, r.end, window, 4 * MiB, rs)) {
      const task: SimTask = { start: s.start, pos: s.start, end: s.end, controller: new AbortController(), done: Promise.resolve(), rate };
      p.tasks.add(task);
      starts.set(task, now);
      fetched.push(s);
    }
    peak = Math.max(peak, p.tasks.size);
    while (!p.ranges.has(r.start, r.end)) {
      now += dt;
      for (const task of [...p.tasks] as SimTask[]) {
        if (now - starts.get(task)! < ttfb) continue;
        const n = Math.min(task.end - task.pos, Math.round(task.rate * dt));
        p.ranges.add(task.pos, task.pos + n);
        task.pos += n;
        if (task.pos >= task.end) p.tasks.delete(task);
      }
      if (now > 3600) throw new Error('simulated reader never got its bytes');
    }
  }
  return { seconds: now, fetched, peak };
}

function sequential(from: number, bytes: number, req = 128 * KiB): ByteSpan[] {
  const out: ByteSpan[] = [];
  for (let a = from; a < from + bytes; a += req) out.push({ start: a, end: Math.min(from + bytes, a + req) });
  return out;
}

const total = (spans: ByteSpan[]): number => spans.reduce((a, s) => a + s.end - s.start, 0);
const ONE: ReadStreams = { streams: 1, chunk: 8 * MiB };
const FOUR: ReadStreams = { streams: 4, chunk: 8 * MiB };

test('a random 1 MiB block (the kernel sends it as 128 KiB requests) fetches about its own size', (t) => {
  const reads = [...sequential(0, 4 * KiB, 4 * KiB)];
  for (const block of [300, 17, 801, 555]) reads.push(...sequential(block * MiB, MiB));
  const { fetched } = simulate(1024 * MiB, reads, FOUR, 100e6);
  const blocks = fetched.filter((s) => s.start >= 17 * MiB);
  t.is(total(blocks), 4 * MiB, JSON.stringify(blocks));
});

test('small random reads after the first fetch about 64 KiB each, the first read a full window', (t) => {
  const reads = [{ start: 0, end: 4 * KiB }, { start: 500 * MiB, end: 500 * MiB + 4 * KiB }, { start: 90 * MiB + 8 * KiB, end: 90 * MiB + 12 * KiB }];
  const { fetched } = simulate(1024 * MiB, reads, FOUR, 100e6);
  t.deepEqual(fetched.map((s) => s.end - s.start), [MiB, 64 * KiB, 64 * KiB]);
});

test('a sequential reader grows the window with the bytes it read, up to the maximum', (t) => {
  const ra = new ReadAhead(MiB, 64 * MiB);
  let w = 0;
  for (const r of sequential(0, 1 * MiB)) w = ra.advance(r.start, r.end);
  t.true(w <= MiB, `inside the first window: ${w}`);
  for (const r of sequential(MiB, 3 * MiB)) w = ra.advance(r.start, r.end);
  t.is(w, 8 * MiB);
  for (const r of sequential(4 * MiB, 60 * MiB)) w = ra.advance(r.start, r.end);
  t.is(w, 64 * MiB);
  // A jump far away starts over.
  t.is(ra.advance(900 * MiB, 900 * MiB + 128 * KiB), MiB);
});

test('a sequential reader of a capped registry gets parallel streams: >= 3x one stream and >= 0.8x of 4 x cap', (t) => {
  const cap = 40e6;
  const reads = sequential(0, 256 * MiB);
  const one = simulate(256 * MiB + 16 * MiB, reads, ONE, cap, 0.005);
  const four = simulate(256 * MiB + 16 * MiB, reads, FOUR, cap, 0.005);
  const rateOne = (256 * MiB) / one.seconds;
  const rateFour = (256 * MiB) / four.seconds;
  t.is(one.peak, 1);
  t.is(four.peak, 4);
  t.true(rateFour >= 3 * rateOne, `4 streams ${(rateFour / 1e6).toFixed(1)} MB/s, one ${(rateOne / 1e6).toFixed(1)} MB/s`);
  t.true(rateFour >= 0.8 * 4 * cap, `4 streams ${(rateFour / 1e6).toFixed(1)} MB/s`);
  t.true(four.fetched.every((s) => s.end - s.start <= 8 * MiB), 'read-ahead is cut into chunks of at most 8 MiB');
  t.true(total(four.fetched) <= 256 * MiB + 64 * MiB, `fetched ${total(four.fetched) / MiB} MiB`);
});

test('a read that needs more than a chunk is fetched in one span, never cut', (t) => {
  const p = blob(100 * MiB);
  const spans = p.plan(10 * MiB, 30 * MiB, 0, 4 * MiB, FOUR);
  t.deepEqual(spans, [{ start: 10 * MiB, end: 30 * MiB }]);
});

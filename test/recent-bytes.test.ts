import test from 'ava';
import { RecentBytes } from '../cache/recent-bytes.js';
import type { Digest } from '../registry/digest.js';

const D = `sha256:${'a'.repeat(64)}` as Digest;
const E = `sha256:${'b'.repeat(64)}` as Digest;
const bytes = (start: number, n: number): Buffer => Buffer.from(Array.from({ length: n }, (_, i) => (start + i) % 251));

test('reads spanning contiguous spans are served; a gap, another digest or a dropped digest is a miss', (t) => {
  const r = new RecentBytes(1000);
  r.add(D, 0, bytes(0, 100));
  r.add(D, 100, bytes(100, 100));
  r.add(D, 300, bytes(300, 50));
  const out = Buffer.alloc(150);
  t.true(r.read(D, 20, out, 150));
  t.true(out.equals(bytes(20, 150)));
  t.false(r.read(D, 150, out, 100), 'bytes 200-300 are not held');
  t.false(r.read(E, 0, out, 10));
  t.true(r.read(D, 310, out, 40));
  t.true(out.subarray(0, 40).equals(bytes(310, 40)));
  r.drop(D);
  t.false(r.read(D, 0, out, 10));
  t.is(r.bytes, 0);
});

test('memory stays under the bound (oldest spans go first) and an overlapping span is ignored', (t) => {
  const r = new RecentBytes(250);
  r.add(D, 0, bytes(0, 100));
  r.add(D, 50, Buffer.alloc(100, 0xff)); // overlaps: ignored, the held bytes stay right
  r.add(D, 100, bytes(100, 100));
  r.add(D, 200, bytes(200, 100));
  t.true(r.bytes <= 250);
  const out = Buffer.alloc(100);
  t.false(r.read(D, 0, out, 10), 'the oldest span was evicted');
  t.true(r.read(D, 100, out, 100));
  t.true(out.equals(bytes(100, 100)));
  for (let i = 0; i < 5000; i++) r.add(E, 300 + i * 10, bytes(i, 10));
  t.true(r.bytes <= 250);
  t.true(r.read(E, 300 + 4999 * 10, out, 10));
});

test('a span evicted by age hands its buffer back to its owner; a dropped one never does', (t) => {
  const r = new RecentBytes(200);
  const back: Buffer[] = [];
  const a = bytes(0, 100);
  const b = bytes(100, 100);
  r.add(D, 0, a, (x) => back.push(x));
  r.add(E, 0, b, (x) => back.push(x));
  r.drop(E);
  t.deepEqual(back, [], 'drop does not recycle: a reader may still hold the buffer');
  r.add(D, 100, bytes(100, 100));
  r.add(D, 200, bytes(200, 100));
  t.is(back.length, 1);
  t.is(back[0], a, 'the oldest span was evicted and its buffer handed back');
  const out = Buffer.alloc(10);
  t.false(r.read(D, 0, out, 10), 'an evicted span is never read again');
});

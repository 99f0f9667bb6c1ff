import test from 'ava';
import { RangeSet, type ByteSpan } from '../cache/range-set.js';
import { RegfsError } from '../util/errors.js';

function set(...pairs: Array<[number, number]>): RangeSet {
  const s = new RangeSet();
  for (const [a, b] of pairs) s.add(a, b);
  return s;
}

test('add merges overlapping and adjacent ranges', (t) => {
  const cases: Array<{ add: Array<[number, number]>; want: Array<[number, number]> }> = [
    { add: [], want: [] },
    { add: [[0, 10]], want: [[0, 10]] },
    { add: [[5, 5]], want: [] },
    { add: [[0, 10], [10, 20]], want: [[0, 20]] },
    { add: [[10, 20], [0, 10]], want: [[0, 20]] },
    { add: [[0, 10], [20, 30]], want: [[0, 10], [20, 30]] },
    { add: [[20, 30], [0, 10], [40, 50]], want: [[0, 10], [20, 30], [40, 50]] },
    { add: [[0, 10], [20, 30], [5, 25]], want: [[0, 30]] },
    { add: [[0, 10], [20, 30], [40, 50], [10, 40]], want: [[0, 50]] },
    { add: [[0, 10], [20, 30], [40, 50], [11, 39]], want: [[0, 10], [11, 39], [40, 50]] },
    { add: [[5, 15], [0, 100]], want: [[0, 100]] },
    { add: [[0, 100], [5, 15]], want: [[0, 100]] },
    { add: [[0, 1], [2, 3], [4, 5], [1, 4]], want: [[0, 5]] },
  ];
  for (const c of cases) t.deepEqual(set(...c.add).toJSON(), c.want, JSON.stringify(c.add));
});

test('has, missing and covered', (t) => {
  const s = set([10, 20], [30, 40]);
  t.is(s.covered(), 20);
  t.is(s.count(), 2);
  const hasCases: Array<[number, number, boolean]> = [
    [10, 20, true],
    [12, 18, true],
    [10, 21, false],
    [9, 20, false],
    [15, 35, false],
    [30, 40, true],
    [25, 25, true],
    [0, 0, true],
    [20, 30, false],
    [39, 40, true],
    [40, 41, false],
  ];
  for (const [a, b, want] of hasCases) t.is(s.has(a, b), want, `has(${a},${b})`);
  const missCases: Array<[number, number, ByteSpan[]]> = [
    [0, 50, [{ start: 0, end: 10 }, { start: 20, end: 30 }, { start: 40, end: 50 }]],
    [10, 20, []],
    [15, 35, [{ start: 20, end: 30 }]],
    [20, 30, [{ start: 20, end: 30 }]],
    [0, 10, [{ start: 0, end: 10 }]],
    [5, 15, [{ start: 5, end: 10 }]],
    [35, 45, [{ start: 40, end: 45 }]],
    [12, 12, []],
    [40, 40, []],
  ];
  for (const [a, b, want] of missCases) t.deepEqual(s.missing(a, b), want, `missing(${a},${b})`);
  t.deepEqual(new RangeSet().missing(0, 5), [{ start: 0, end: 5 }]);
});

test('runEnd returns the end of the run containing a byte', (t) => {
  const s = set([10, 20], [30, 40]);
  t.is(s.runEnd(10), 20);
  t.is(s.runEnd(19), 20);
  t.is(s.runEnd(20), 20);
  t.is(s.runEnd(5), 5);
  t.is(s.runEnd(35), 40);
  t.is(s.runEnd(100), 100);
});

test('clone is independent', (t) => {
  const a = set([0, 10]);
  const b = a.clone();
  b.add(10, 20);
  t.deepEqual(a.toJSON(), [[0, 10]]);
  t.deepEqual(b.toJSON(), [[0, 20]]);
  t.is(a.covered(), 10);
  t.is(b.covered(), 20);
});

test('invalid arguments are rejected', (t) => {
  const s = new RangeSet();
  for (const [a, b] of [[-1, 5], [5, 4], [0.5, 2], [0, Infinity], [Number.NaN, 1]] as Array<[number, number]>) {
    const err = t.throws(() => s.add(a, b), { instanceOf: RegfsError }, `add(${a},${b})`);
    t.is((err as RegfsError).code, 'INVALID_ARGUMENT');
    t.throws(() => s.has(a, b), { instanceOf: RegfsError });
    t.throws(() => s.missing(a, b), { instanceOf: RegfsError });
  }
});

test('toJSON/fromJSON round-trips and fromJSON rejects garbage', (t) => {
  const s = set([0, 5], [10, 20], [1_000_000, 2_000_000]);
  const back = RangeSet.fromJSON(JSON.parse(JSON.stringify(s)));
  t.deepEqual(back.toJSON(), s.toJSON());
  t.is(back.covered(), s.covered());
  t.deepEqual(RangeSet.fromJSON([]).toJSON(), []);
  // Adjacent pairs are valid input and come back merged.
  t.deepEqual(RangeSet.fromJSON([[0, 5], [5, 9]]).toJSON(), [[0, 9]]);
  const garbage: unknown[] = [
    null,
    undefined,
    42,
    'ranges',
    {},
    { 0: [0, 1] },
    [[0]],
    [[0, 1, 2]],
    [[1, 0]],
    [[3, 3]],
    [[-1, 2]],
    [[0, 1.5]],
    [['0', '1']],
    [[0, Number.MAX_SAFE_INTEGER + 2]],
    [[0, 10], [5, 20]],
    [[10, 20], [0, 5]],
    [[0, 1], null],
    [[0, 1], [2, 3], 'x'],
    [{ start: 0, end: 1 }],
  ];
  for (const g of garbage) {
    const err = t.throws(() => RangeSet.fromJSON(g), undefined, JSON.stringify(g) ?? String(g));
    t.true(err instanceof RegfsError && err.code === 'INVALID_ARGUMENT', JSON.stringify(g) ?? String(g));
  }
});

/** mulberry32 is a small seeded PRNG, so the random check is reproducible. */
function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let x = a;
    x = Math.imul(x ^ (x >>> 15), x | 1);
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61);
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}

function modelMissing(bits: Uint8Array, a: number, b: number): ByteSpan[] {
  const out: ByteSpan[] = [];
  let i = a;
  while (i < b) {
    if (bits[i]) {
      i++;
      continue;
    }
    const start = i;
    while (i < b && !bits[i]) i++;
    out.push({ start, end: i });
  }
  return out;
}

function modelRuns(bits: Uint8Array): Array<[number, number]> {
  return modelMissing(bits.map((v) => (v ? 0 : 1)), 0, bits.length).map((s) => [s.start, s.end]);
}

test('random operations agree with a bitmap model (seeded)', (t) => {
  const N = 300;
  for (const seed of [1, 2, 3, 42, 1234, 99991]) {
    const rnd = mulberry32(seed);
    const int = (n: number): number => Math.floor(rnd() * n);
    const bits = new Uint8Array(N);
    const s = new RangeSet();
    for (let op = 0; op < 400; op++) {
      const a = int(N + 1);
      const len = rnd() < 0.7 ? int(12) : int(N / 3);
      const b = Math.min(N, a + len);
      const kind = int(4);
      if (kind === 0 || kind === 1) {
        s.add(a, b);
        bits.fill(1, a, b);
      } else if (kind === 2) {
        const want = bits.subarray(a, b).every((v) => v === 1);
        if (s.has(a, b) !== want) return t.fail(`seed ${seed} op ${op}: has(${a},${b}) = ${!want}, model says ${want}`);
      } else {
        const got = s.missing(a, b);
        const want = modelMissing(bits, a, b);
        if (JSON.stringify(got) !== JSON.stringify(want)) return t.fail(`seed ${seed} op ${op}: missing(${a},${b})`);
      }
      const covered = bits.reduce((n, v) => n + v, 0);
      if (s.covered() !== covered) return t.fail(`seed ${seed} op ${op}: covered ${s.covered()} != ${covered}`);
    }
    t.deepEqual(s.toJSON(), modelRuns(bits), `seed ${seed}: final ranges`);
    t.deepEqual(RangeSet.fromJSON(s.toJSON()).toJSON(), s.toJSON(), `seed ${seed}: JSON round trip`);
  }
});

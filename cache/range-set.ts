import { RegfsError } from '../util/errors.js';

/** ByteSpan is a half-open byte range [start, end) with both ends known. */
export interface ByteSpan {
  start: number;
  end: number;
}

/** RangeSetJSON is the persisted form of a RangeSet: sorted, non-overlapping [start, end) pairs. */
export type RangeSetJSON = Array<[number, number]>;

function checkSpan(start: number, end: number): void {
  if (!Number.isSafeInteger(start) || !Number.isSafeInteger(end) || start < 0 || end < start) {
    throw new RegfsError('INVALID_ARGUMENT', `invalid byte range [${String(start)}, ${String(end)}): expected integers with 0 <= start <= end`);
  }
}

/**
 * RangeSet is a set of bytes kept as sorted, merged half-open ranges: which parts of a blob are present.
 * Adjacent and overlapping ranges are merged on add, so the list stays minimal.
 */
export class RangeSet {
  private starts: number[] = [];
  private ends: number[] = [];
  private total = 0;

  /** add marks [start, end) as present; an empty range is a no-op. */
  add(start: number, end: number): void {
    checkSpan(start, end);
    if (start === end) return;
    // First range whose end >= start (it touches or follows the new range).
    const lo = this.firstEndAtOrAfter(start);
    let hi = lo;
    let s = start;
    let e = end;
    while (hi < this.starts.length && this.starts[hi]! <= end) {
      s = Math.min(s, this.starts[hi]!);
      e = Math.max(e, this.ends[hi]!);
      this.total -= this.ends[hi]! - this.starts[hi]!;
      hi++;
    }
    this.starts.splice(lo, hi - lo, s);
    this.ends.splice(lo, hi - lo, e);
    this.total += e - s;
  }

  /** has tells whether every byte of [start, end) is present (an empty range always is). */
  has(start: number, end: number): boolean {
    checkSpan(start, end);
    if (start === end) return true;
    const i = this.lastStartAtOrBefore(start);
    return i >= 0 && this.ends[i]! >= end;
  }

  /** missing lists the gaps of [start, end) that are not present, in order. */
  missing(start: number, end: number): ByteSpan[] {
    checkSpan(start, end);
    const out: ByteSpan[] = [];
    let pos = start;
    for (let i = this.firstEndAtOrAfter(start + 1); i < this.starts.length && pos < end; i++) {
      const s = this.starts[i]!;
      if (s >= end) break;
      if (s > pos) out.push({ start: pos, end: s });
      pos = Math.max(pos, this.ends[i]!);
    }
    if (pos < end) out.push({ start: pos, end });
    return out;
  }

  /** runEnd returns the end of the present run containing byte `pos`, or `pos` itself when that byte is absent. */
  runEnd(pos: number): number {
    checkSpan(pos, pos);
    const i = this.lastStartAtOrBefore(pos);
    return i >= 0 && this.ends[i]! > pos ? this.ends[i]! : pos;
  }

  /** covered returns the number of bytes present. */
  covered(): number {
    return this.total;
  }

  /** count returns how many disjoint ranges the set holds. */
  count(): number {
    return this.starts.length;
  }

  /** spans returns a copy of the ranges, in order. */
  spans(): ByteSpan[] {
    return this.starts.map((s, i) => ({ start: s, end: this.ends[i]! }));
  }

  /** clone returns an independent copy. */
  clone(): RangeSet {
    const c = new RangeSet();
    c.starts = this.starts.slice();
    c.ends = this.ends.slice();
    c.total = this.total;
    return c;
  }

  /** toJSON returns the ranges as sorted [start, end) pairs. */
  toJSON(): RangeSetJSON {
    return this.starts.map((s, i): [number, number] => [s, this.ends[i]!]);
  }

  /** fromJSON parses untrusted persisted ranges: an array of sorted, non-overlapping, non-empty [start, end) integer pairs. */
  static fromJSON(raw: unknown): RangeSet {
    if (!Array.isArray(raw)) throw new RegfsError('INVALID_ARGUMENT', 'range set: expected an array of [start, end] pairs');
    const set = new RangeSet();
    let prevEnd = -1;
    raw.forEach((pair: unknown, i: number) => {
      if (!Array.isArray(pair) || pair.length !== 2) throw new RegfsError('INVALID_ARGUMENT', `range set: entry ${i} is not a [start, end] pair`);
      const [s, e] = pair as unknown[];
      if (typeof s !== 'number' || typeof e !== 'number' || !Number.isSafeInteger(s) || !Number.isSafeInteger(e) || s < 0 || e <= s) {
        throw new RegfsError('INVALID_ARGUMENT', `range set: entry ${i} is not a non-empty range of non-negative integers`);
      }
      if (s < prevEnd) throw new RegfsError('INVALID_ARGUMENT', `range set: entry ${i} overlaps or precedes the one before it`);
      prevEnd = e;
      set.add(s, e);
    });
    return set;
  }

  /** firstEndAtOrAfter is the index of the first range with end >= pos (ranges.length when none). */
  private firstEndAtOrAfter(pos: number): number {
    let lo = 0;
    let hi = this.ends.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.ends[mid]! < pos) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /** lastStartAtOrBefore is the index of the last range with start <= pos (-1 when none). */
  private lastStartAtOrBefore(pos: number): number {
    let lo = 0;
    let hi = this.starts.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.starts[mid]! <= pos) lo = mid + 1;
      else hi = mid;
    }
    return lo - 1;
  }
}

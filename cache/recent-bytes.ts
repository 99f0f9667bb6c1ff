/*
 * RecentBytes keeps the blob bytes that most recently passed through the cache in memory (bounded, FIFO),
 * so the kernel's next 128 KiB reads are copies from memory instead of a thread-pool round trip each:
 * the chunks a range fetch just wrote to the sparse file, and 1 MiB chunks read from complete blobs.
 *
 * Ordering rules:
 * - Only bytes already on the cache file (written by a fetch, or read from a complete blob) are added, so
 *   what memory serves is exactly what the file would serve.
 * - Whoever removes a blob's file or discards its partial (mismatch, eviction, vanished file) calls
 *   drop(digest) first; nothing else invalidates, because content is addressed by digest and immutable.
 * - A buffer handed back through `recycle` is one evicted by age, never one dropped: a reader copies from
 *   a buffer in the microtask drain that resolved it, long before 16 MiB of newer spans can push it out.
 * - Spans of one digest never overlap: add() ignores a span that overlaps one already held.
 */
import type { Digest } from '../registry/digest.js';

interface Span {
  start: number;
  end: number;
  buf: Buffer;
  /** recycle, when given, takes the buffer back once the span is evicted by age (never on drop). */
  recycle?: (buf: Buffer) => void;
}

/** RecentBytes is a bounded in-memory store of recently written or read blob byte spans. */
export class RecentBytes {
  private readonly byDigest = new Map<Digest, Span[]>();
  private readonly order: Array<{ digest: Digest; span: Span }> = [];
  private head = 0;
  private held = 0;
  /** hits and misses count read() calls served from memory or not. */
  hits = 0;
  misses = 0;

  constructor(private readonly maxBytes: number) {}

  /** bytes is how many bytes are held. */
  get bytes(): number {
    return this.held;
  }

  /** add keeps buf as the bytes [start, start + buf.length) of a blob. */
  add(digest: Digest, start: number, buf: Buffer, recycle?: (buf: Buffer) => void): void {
    if (this.maxBytes <= 0 || buf.length === 0 || buf.length > this.maxBytes) return;
    const span: Span = { start, end: start + buf.length, buf, recycle };
    let spans = this.byDigest.get(digest);
    if (!spans) {
      spans = [];
      this.byDigest.set(digest, spans);
    }
    const i = lowerBound(spans, span.start);
    if ((i > 0 && spans[i - 1]!.end > span.start) || (i < spans.length && spans[i]!.start < span.end)) return;
    spans.splice(i, 0, span);
    this.order.push({ digest, span });
    this.held += buf.length;
    while (this.held > this.maxBytes) this.evictOldest();
    if (this.head > 1024 && this.head * 2 > this.order.length) {
      this.order.splice(0, this.head);
      this.head = 0;
    }
  }

  /**
   * readPrefix copies the longest run of [offset, offset + n) that memory holds from offset on into
   * target[0..) and returns its length (0 when memory does not hold the byte at offset). Not counted as a hit or miss.
   */
  readPrefix(digest: Digest, offset: number, target: Buffer, n: number): number {
    const spans = this.byDigest.get(digest);
    if (!spans || n <= 0) return 0;
    let i = lowerBound(spans, offset + 1) - 1;
    const end = offset + n;
    let pos = offset;
    for (; pos < end && i >= 0 && i < spans.length; i++) {
      const s = spans[i]!;
      if (s.start > pos || s.end <= pos) break;
      const take = Math.min(end, s.end) - pos;
      s.buf.copy(target, pos - offset, pos - s.start, pos - s.start + take);
      pos += take;
    }
    return pos - offset;
  }

  /** read copies [offset, offset + n) into target[0..n) when memory holds all of it; it returns whether it did. */
  read(digest: Digest, offset: number, target: Buffer, n: number): boolean {
    const spans = this.byDigest.get(digest);
    if (!spans || n <= 0) {
      this.misses++;
      return false;
    }
    // The span containing offset, then contiguous followers until n bytes are covered.
    let i = lowerBound(spans, offset + 1) - 1;
    if (i < 0 || spans[i]!.end <= offset) {
      this.misses++;
      return false;
    }
    let pos = offset;
    const end = offset + n;
    for (let j = i; pos < end; j++) {
      const s = spans[j];
      if (!s || s.start > pos) {
        this.misses++;
        return false;
      }
      pos = Math.min(end, s.end);
    }
    pos = offset;
    for (; pos < end; i++) {
      const s = spans[i]!;
      const take = Math.min(end, s.end) - pos;
      s.buf.copy(target, pos - offset, pos - s.start, pos - s.start + take);
      pos += take;
    }
    this.hits++;
    return true;
  }

  /** holds tells whether a span holds the byte at `offset` (without counting a hit or miss). */
  holds(digest: Digest, offset: number): boolean {
    const spans = this.byDigest.get(digest);
    if (!spans) return false;
    const i = lowerBound(spans, offset + 1) - 1;
    return i >= 0 && spans[i]!.end > offset;
  }

  /** drop forgets every span of a digest (its file was removed or its bytes are no longer trusted). */
  drop(digest: Digest): void {
    const spans = this.byDigest.get(digest);
    if (!spans) return;
    for (const s of spans) {
      this.held -= s.buf.length;
      s.buf = EMPTY;
    }
    this.byDigest.delete(digest);
  }

  private evictOldest(): void {
    const e = this.order[this.head++];
    if (!e) return;
    if (e.span.buf === EMPTY) return; // dropped already
    const spans = this.byDigest.get(e.digest);
    if (spans) {
      const i = lowerBound(spans, e.span.start);
      if (spans[i] === e.span) spans.splice(i, 1);
      if (spans.length === 0) this.byDigest.delete(e.digest);
    }
    this.held -= e.span.buf.length;
    // Evicted by age: every read that could copy from it ran long ago (a read copies in the same
    // microtask drain that gave it the buffer), so the owner may fill it again.
    const buf = e.span.buf;
    e.span.buf = EMPTY;
    e.span.recycle?.(buf);
  }
}

const EMPTY = Buffer.alloc(0);

/** lowerBound returns the first index whose span starts at or after `start`. */
function lowerBound(spans: Span[], start: number): number {
  let lo = 0;
  let hi = spans.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (spans[mid]!.start < start) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

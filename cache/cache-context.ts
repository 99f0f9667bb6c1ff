/*
 * The state every part of a BlobCache shares: layout, options, open-file pool, counters, the clock,
 * back-offs after failures and the set of background work.
 *
 * Ordering rules (the cache runs on one event loop; "locking" means no await between a check and the
 * change that depends on it):
 * - `closed` is set once, first thing in close(); every path that starts new work (a fetch, an eviction)
 *   checks it after its last await, so nothing is started once close() has begun.
 * - Work not awaited by a caller (range fetches, promotions, fsyncs, evictions) goes through track(), so
 *   idle() and close() can wait for it; track() never lets a rejection escape unhandled.
 * - tick() is strictly increasing, so two accesses in the same millisecond still order for LRU.
 * - A back-off (poison) is only ever set after a failed fetch or a mismatch and only cleared by expiry or
 *   clearPoison() (evict()); it is checked before every attempt to use a digest.
 */
import type { Descriptor } from '../registry/descriptor.js';
import type { Digest } from '../registry/digest.js';
import { RegfsError } from '../util/errors.js';
import type { Logger } from '../util/log.js';
import type { CacheLayout } from './cache-layout.js';
import { FdPool } from './fd-pool.js';
import type { ReadStreams } from './partial-blob.js';
import { RecentBytes } from './recent-bytes.js';

/** RECENT_BYTES_MAX bounds the blob bytes kept in memory for the next reads (cache/recent-bytes.ts). */
export const RECENT_BYTES_MAX = 16 * 1024 * 1024;

/** ResolvedOptions are a BlobCache's options with every default applied. */
export interface ResolvedOptions {
  maxSize: number;
  minFreeBytes: number;
  smallBlobThreshold: number;
  readAheadStart: number;
  readAheadMax: number;
  /** readStreams bound the parallel range streams of one blob's read-ahead. */
  readStreams: ReadStreams;
  verify: 'lazy' | 'strict';
  log: Logger;
  mismatchBackoffMs: number;
  retryBackoffMs: number;
}

/** CacheCounters are the running totals a BlobCache reports in its stats. */
export interface CacheCounters {
  hits: number;
  misses: number;
  bytesFetched: number;
  bytesServed: number;
  evictions: number;
}

/** CacheContext is the state shared by the parts of one BlobCache (see the ordering rules above). */
export class CacheContext {
  /** counters are the totals reported by stats(). */
  readonly counters: CacheCounters = { hits: 0, misses: 0, bytesFetched: 0, bytesServed: 0, evictions: 0 };
  /** fds pools open files: `b:DIGEST` for complete blobs, `p:DIGEST` for partial ones. */
  readonly fds: FdPool;
  /** log receives the cache's warnings. */
  readonly log: Logger;
  /** recent holds the bytes that last passed through the cache, so the next reads are memory copies. */
  readonly recent = new RecentBytes(RECENT_BYTES_MAX);
  /** closed is true once close() has begun. */
  closed = false;
  /** poisoned remembers digest mismatches and unretryable failures: reads of that digest fail until `until` (or an evict()). */
  private readonly poisoned = new Map<Digest, { error: RegfsError; until: number }>();
  private readonly background = new Set<Promise<unknown>>();
  /** streamed holds digests read through without caching (the cache's file system cannot hold them) until `until`. */
  private readonly streamed = new Map<Digest, number>();
  /** streamAnnounced holds the digests whose streaming was logged (once per process). */
  private readonly streamAnnounced = new Set<Digest>();
  private clock = 0;

  constructor(
    /** layout names the cache's files. */
    readonly layout: CacheLayout,
    /** opts are the resolved options. */
    readonly opts: ResolvedOptions,
    maxOpenFiles: number,
  ) {
    this.fds = new FdPool(maxOpenFiles);
    this.log = opts.log;
  }

  /** track keeps a background promise until it settles, so idle() and close() can wait for it. */
  track(p: Promise<unknown>): void {
    const q = p.catch(() => undefined);
    this.background.add(q);
    void q.finally(() => this.background.delete(q));
  }

  /** backgroundWork returns the tracked promises in flight now. */
  backgroundWork(): Array<Promise<unknown>> {
    return [...this.background];
  }

  /** backgroundBusy tells whether any tracked promise is still in flight. */
  backgroundBusy(): boolean {
    return this.background.size > 0;
  }

  /** tick returns a strictly increasing access time (ms). */
  tick(): number {
    this.clock = Math.max(Date.now(), this.clock + 0.001);
    return this.clock;
  }

  /** assertOpen throws once close() has begun. */
  assertOpen(): void {
    if (this.closed) throw new RegfsError('IO', `blob cache ${this.layout.root} is closed`);
  }

  /** throwIfPoisoned rethrows the failure remembered for a digest while its back-off lasts. */
  throwIfPoisoned(d: Digest): void {
    const p = this.poisoned.get(d);
    if (!p) return;
    if (Date.now() >= p.until) {
      this.poisoned.delete(d);
      return;
    }
    throw new RegfsError(p.error.code, p.error.message, { cause: p.error });
  }

  /** poison makes reads of a digest fail with `error` for `ms` (default: the mismatch back-off). */
  poison(d: Digest, error: RegfsError, ms = this.opts.mismatchBackoffMs): void {
    this.recent.drop(d);
    this.poisoned.set(d, { error, until: Date.now() + ms });
  }

  /** canStream tells whether a blob of this size may be read through without caching: always with lazy verify; with strict verify only when it is fetched whole and checked before serving. */
  canStream(size: number): boolean {
    return this.opts.verify === 'lazy' || size <= this.opts.smallBlobThreshold;
  }

  /** streamFor makes reads of a digest bypass the cache for `ms`, and logs the reason the first time for this digest. */
  streamFor(d: Digest, ms: number, why: string): void {
    this.streamed.set(d, Date.now() + ms);
    if (this.streamAnnounced.has(d)) return;
    this.streamAnnounced.add(d);
    this.log.warn(`${why}: streaming it from the registry, nothing kept`, { digest: d, cache: this.layout.root });
  }

  /** streaming tells whether reads of a digest bypass the cache now. */
  streaming(d: Digest): boolean {
    const until = this.streamed.get(d);
    if (until === undefined) return false;
    if (Date.now() < until) return true;
    this.streamed.delete(d);
    return false;
  }

  /** clearPoison ends every back-off. */
  clearPoison(): void {
    this.poisoned.clear();
  }

  /** checkSize throws when a cached blob's size disagrees with the descriptor asked for. */
  checkSize(cachedSize: number, desc: Descriptor): void {
    if (cachedSize !== desc.size) {
      throw new RegfsError('SIZE_MISMATCH', `blob ${desc.digest} is ${cachedSize} bytes in the cache, but the descriptor says ${desc.size}`);
    }
  }
}

/** unanswered tells whether a fetch failed because the registry did not answer in time or kept refusing (429/503). */
export function unanswered(err: unknown): err is RegfsError {
  return err instanceof RegfsError && (err.code === 'TIMEOUT' || err.status === 429 || err.status === 503);
}

/** noSpace tells whether an error (or its cause) is ENOSPC or EDQUOT. */
export function noSpace(err: unknown): boolean {
  for (let e = err as { code?: unknown; cause?: unknown } | undefined, i = 0; e && i < 4; e = e.cause as typeof e, i++) {
    if (e.code === 'ENOSPC' || e.code === 'EDQUOT') return true;
  }
  return false;
}

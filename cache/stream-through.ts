/*
 * Stream-through reads: a blob the cache's file system cannot hold is read straight from the registry
 * into small in-memory windows and never written to disk, as rclone reads without a VFS cache.
 *
 * Rules:
 * - Each streamed blob keeps at most MAX_WINDOWS fetched windows (the newest) plus those still loading
 *   (bounded by the kernel's reads in flight); at most MAX_BLOBS blobs are kept (least recently read
 *   dropped), so memory stays near MAX_BLOBS * MAX_WINDOWS * MAX_WINDOW bytes.
 * - A window is fetched once (reads waiting for the same bytes share it); a window grows (doubling up to
 *   MAX_WINDOW) while reads are sequential and starts small again after a seek. Live windows never
 *   overlap (a new one ends where the next live one starts), so the bytes hashed for a range are the
 *   bytes served from it: two concurrent reads cannot fetch one range twice and serve one copy while
 *   hashing the other.
 * - Verified as it goes where possible: the contiguous prefix [0, hashed) is hashed as windows arrive;
 *   when it reaches the end the digest is checked, and a mismatch fails the read that brought the last
 *   bytes (and, through the cache's back-off, the reads after it). A blob at or under `wholeUpTo` is
 *   fetched as one window and checked before any byte is served. Bytes of a blob read out of order
 *   (a seek past the hashed prefix) are served unverified, as lazy verify serves partial blobs.
 */
import { createHash, type Hash } from 'node:crypto';
import type { Descriptor } from '../registry/descriptor.js';
import type { Digest } from '../registry/digest.js';
import type { ReadableRepository } from '../registry/storage.js';
import { RegfsError, ioError } from '../util/errors.js';
import type { CacheContext } from './cache-context.js';
import { readExactly } from './read-exactly.js';

const MiB = 1024 * 1024;
/** MIN_WINDOW is the first (and after a seek) window of a streamed blob. */
const MIN_WINDOW = MiB;
/** MAX_WINDOW caps a window, which doubles on each sequential read. */
const MAX_WINDOW = 8 * MiB;
/** MAX_WINDOWS is how many windows one streamed blob keeps (the kernel's reads may arrive slightly out of order). */
const MAX_WINDOWS = 3;
/** MAX_BLOBS is how many streamed blobs keep windows at once. */
const MAX_BLOBS = 4;

interface Window {
  start: number;
  end: number;
  data: Promise<Buffer>;
  /** settled is set once its fetch ended; only settled windows are dropped (a loading one is still waited for). */
  settled: boolean;
}

interface StreamedBlob {
  digest: Digest;
  size: number;
  windows: Window[];
  next: number;
  lastEnd: number;
  hash: Hash;
  /** hashed is the end of the contiguous prefix fed to `hash`. */
  hashed: number;
  /** loaded holds windows whose bytes arrived but lie beyond `hashed` (fed once the prefix reaches them). */
  loaded: Array<{ start: number; data: Buffer }>;
  checked: boolean;
  /** bad is the mismatch found when the prefix reached the end: reads still holding this blob fail with it. */
  bad?: RegfsError;
}

function hashAlgorithm(d: Digest): 'sha256' | 'sha512' {
  return d.startsWith('sha512:') ? 'sha512' : 'sha256';
}

/** StreamThrough serves reads of blobs the cache cannot hold from memory windows fetched by range. */
export class StreamThrough {
  private readonly blobs = new Map<Digest, StreamedBlob>();
  private readonly controllers = new Set<AbortController>();

  constructor(
    private readonly ctx: CacheContext,
    /** wholeUpTo: blobs at or under it are fetched as one window and verified before serving. */
    private readonly wholeUpTo: number,
  ) {}

  /** read fills buf[0..n) with the blob's bytes at offset (n already clamped to the blob's end) and returns n. */
  async read(repo: ReadableRepository, desc: Descriptor, digest: Digest, buf: Buffer, offset: number, n: number): Promise<number> {
    const b = this.blobFor(digest, desc.size);
    let pos = offset;
    const end = offset + n;
    while (pos < end) {
      this.ctx.assertOpen();
      const w = this.windowFor(repo, desc, b, pos, end);
      const data = await w.data;
      if (b.bad) throw b.bad; // its bytes did not match: nothing more is served from these windows
      const upto = Math.min(end, w.end);
      data.copy(buf, pos - offset, pos - w.start, upto - w.start);
      pos = upto;
    }
    b.lastEnd = end;
    return n;
  }

  /** drop forgets a streamed blob's windows (its bytes are cached now, or it did not match). */
  drop(digest: Digest): void {
    this.blobs.delete(digest);
  }

  /** abortAll stops every window fetch in flight (at close). */
  abortAll(): void {
    for (const c of this.controllers) c.abort();
    this.blobs.clear();
  }

  private blobFor(digest: Digest, size: number): StreamedBlob {
    let b = this.blobs.get(digest);
    if (b && b.size !== size) {
      throw new RegfsError('SIZE_MISMATCH', `blob ${digest} is streamed as ${b.size} bytes, but the descriptor says ${size}`);
    }
    if (b) {
      this.blobs.delete(digest); // re-insert: the Map's order is the LRU order
    } else {
      b = { digest, size, windows: [], next: MIN_WINDOW, lastEnd: -1, hash: createHash(hashAlgorithm(digest)), hashed: 0, loaded: [], checked: false };
    }
    this.blobs.set(digest, b);
    while (this.blobs.size > MAX_BLOBS) this.blobs.delete(this.blobs.keys().next().value!);
    return b;
  }

  private windowFor(repo: ReadableRepository, desc: Descriptor, b: StreamedBlob, pos: number, end: number): Window {
    const have = b.windows.find((w) => w.start <= pos && pos < w.end);
    if (have) return have;
    let len: number;
    if (b.size <= this.wholeUpTo) len = b.size;
    else if (pos === b.lastEnd || b.windows.some((w) => w.end === pos)) len = b.next = Math.min(MAX_WINDOW, b.next * 2);
    else len = b.next = MIN_WINDOW;
    const start = b.size <= this.wholeUpTo ? 0 : pos;
    let wEnd = Math.min(b.size, Math.max(end, start + len));
    // Live windows never overlap: each byte served comes from one window, the one whose bytes were hashed.
    for (const w of b.windows) if (w.start > start && w.start < wEnd) wEnd = w.start;
    const w: Window = { start, end: wEnd, data: this.fetch(repo, desc, b, start, wEnd), settled: false };
    w.data.then(
      () => {
        w.settled = true;
        this.trim(b);
      },
      () => {
        w.settled = true;
        b.windows = b.windows.filter((x) => x !== w);
      },
    );
    b.windows.push(w);
    this.trim(b);
    return w;
  }

  /** trim drops the oldest settled windows beyond MAX_WINDOWS (windows still loading stay, so none is fetched twice). */
  private trim(b: StreamedBlob): void {
    while (b.windows.length > MAX_WINDOWS) {
      const i = b.windows.findIndex((w) => w.settled);
      if (i < 0) return;
      b.windows.splice(i, 1);
    }
  }

  private async fetch(repo: ReadableRepository, desc: Descriptor, b: StreamedBlob, start: number, end: number): Promise<Buffer> {
    const controller = new AbortController();
    this.controllers.add(controller);
    let data: Buffer;
    try {
      const src = await repo.fetchBlob(desc, { start, end }, controller.signal);
      data = await readExactly(src, end - start, 'IO', 'range fetch');
    } catch (err) {
      throw ioError(`blob ${b.digest}: streamed range ${start}-${end}`, err);
    } finally {
      this.controllers.delete(controller);
    }
    this.ctx.counters.bytesFetched += data.length;
    this.feed(b, start, data);
    return data;
  }

  /** feed hashes what extends the verified prefix and checks the digest once the prefix reaches the end. */
  private feed(b: StreamedBlob, start: number, data: Buffer): void {
    if (b.checked) return;
    b.loaded.push({ start, data });
    for (let progressed = true; progressed; ) {
      progressed = false;
      for (const l of b.loaded) {
        const lEnd = l.start + l.data.length;
        if (l.start <= b.hashed && lEnd > b.hashed) {
          b.hash.update(l.data.subarray(b.hashed - l.start));
          b.hashed = lEnd;
          progressed = true;
        }
      }
      b.loaded = b.loaded.filter((l) => l.start + l.data.length > b.hashed);
    }
    // Keep only what a window still holds (memory bound): bytes beyond the windows are never hashed.
    if (b.loaded.length > MAX_WINDOWS) b.loaded = b.loaded.slice(-MAX_WINDOWS);
    if (b.hashed < b.size) return;
    b.checked = true;
    b.loaded = [];
    const actual = `${hashAlgorithm(b.digest)}:${b.hash.digest('hex')}`;
    if (actual !== b.digest) {
      const err = new RegfsError('DIGEST_MISMATCH', `blob ${b.digest}: streamed bytes hash to ${actual}`);
      this.ctx.log.warn('digest mismatch: streamed blob', { expected: b.digest, actual });
      this.ctx.poison(b.digest, err);
      b.bad = err;
      b.windows = [];
      if (this.blobs.get(b.digest) === b) this.drop(b.digest);
      throw err;
    }
    this.ctx.log.debug('streamed blob verified', { digest: b.digest });
  }
}

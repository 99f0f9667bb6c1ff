import type { Readable } from 'node:stream';
import type { Digest } from '../registry/digest.js';
import { RegfsError } from '../util/errors.js';
import { abortable } from './abortable.js';
import { BatchedWriter } from './batched-writer.js';
import type { FdLease } from './fd-pool.js';
import type { FileDigest } from './hash-service.js';
import { hashFileInWorker } from './hash-service.js';
import { PrefixHasher } from './prefix-hasher.js';
import { currentBootId, writeRangeMap } from './range-map-file.js';
import { RangeSet, type ByteSpan } from './range-set.js';
import type { ReadAhead } from './read-ahead.js';
import { statEnd, statStart } from '../util/read-stats.js';

/** RangeFetcher opens an upstream stream of exactly the bytes [span.start, span.end) of the blob. */
export type RangeFetcher = (span: ByteSpan, signal: AbortSignal) => Promise<Readable>;

/** FetchTask is one upstream range fetch streaming into the sparse file; `end` may shrink when a far-away reader splits it. */
export interface FetchTask {
  readonly start: number;
  /** pos is the next byte the task will take from its stream; [start, pos) is present or being written. */
  pos: number;
  end: number;
  readonly controller: AbortController;
  /** done settles when the task has stopped; it rejects with the task's RegfsError. */
  readonly done: Promise<void>;
}

/** PartialBlobFiles is how a partial blob reaches its files: a lease of the sparse data file and the range map path. */
export interface PartialBlobFiles {
  /** dataPath is the sparse data file. */
  dataPath: string;
  /** mapPath is the persisted range map beside it. */
  mapPath: string;
  /** open leases the data file for reading and positional writing (created when absent). */
  open(): Promise<FdLease>;
  /** onBytes is told how many upstream bytes were written. */
  onBytes(n: number): void;
  /** onWritten, when given, receives the buffers just written at `start` (they are not reused). */
  onWritten?(start: number, bufs: readonly Buffer[]): void;
}

interface Waiter {
  start: number;
  end: number;
  /** resolve settles the wait; `served` is true when `into` holds all of [start, end) from a fetch's stream. */
  resolve(served: boolean): void;
  reject(err: Error): void;
  /** into, when given, is filled from a fetch's bytes as they arrive, before they are written to the file. */
  into?: Buffer;
  /** next is the first byte of [start, end) not yet copied into `into`. */
  next: number;
}

/** ReadStreams bound the parallel range streams of one blob's read-ahead. */
export interface ReadStreams {
  /** streams is how many fetches of one blob may be in flight ahead of a reader (default 4). */
  streams: number;
  /** chunk is the most one read-ahead fetch asks for (default 8 MiB): a wide window becomes parallel chunks. */
  chunk: number;
}

export const DEFAULT_READ_STREAMS: ReadStreams = { streams: 4, chunk: 8 * 1024 * 1024 };

/**
 * PRESENT_AHEAD_MAX: no read-ahead starts while this many bytes past a read are already on the file. A
 * fast registry fills a wide window faster than a reader through FUSE consumes it; with every stream
 * running, the bytes nearest the reader were written first and left the 16 MiB of recent bytes before
 * it got there, so nearly every read became a thread-pool read of the file (measured: 7805 of 8192 reads
 * of a cold 1 GiB). Held back to 2 MiB, about half the reads are memory copies and the cold read took
 * 2.6-2.8 s instead of 3.2-3.7 s. A capped registry never gets that far ahead, so it keeps all its streams.
 */
export const PRESENT_AHEAD_MAX = 2 * 1024 * 1024;

function overlaps(a: ByteSpan, b: ByteSpan): boolean {
  return a.start < b.end && b.start < a.end;
}

/** closedError is the error in-flight work fails with when the cache shuts down or drops the blob. */
export function closedError(digest: Digest): RegfsError {
  return new RegfsError('IO', `blob ${digest}: the cache stopped fetching it (closed or evicted)`);
}

function toRegfsError(err: unknown, what: string): RegfsError {
  if (err instanceof RegfsError) return err;
  return new RegfsError('IO', `${what}: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
}

/**
 * PartialBlob is one large blob being filled by HTTP ranges into a sparse file: which bytes are present
 * (a RangeSet), which are being fetched (FetchTasks, single flight per byte), who waits for which bytes,
 * and the range map persisted next to the data so a restart keeps what was fetched.
 */
export class PartialBlob {
  /** tasks are the upstream fetches in flight. */
  readonly tasks = new Set<FetchTask>();
  /** lastAccess is the LRU clock of the last read. */
  lastAccess: number;
  /** finalizing is the in-flight verify-and-promote of a complete partial. */
  finalizing?: Promise<void>;
  /** dead is set once the blob was promoted, discarded or evicted: readers must start over. */
  dead = false;
  /** lastPersist is when the range map was last written (ms). */
  lastPersist = 0;
  private readonly waiters = new Set<Waiter>();
  /** writers are the fetches' writers in flight: bytes that arrived and are not on the file yet. */
  private readonly writers = new Set<BatchedWriter>();
  private persistChain: Promise<void> = Promise.resolve();
  private queuedPersist?: Promise<void>;
  private deadError?: RegfsError;
  private frozen = false;
  private readonly hasher: PrefixHasher;

  constructor(
    readonly digest: Digest,
    readonly size: number,
    readonly ranges: RangeSet,
    readonly readAhead: ReadAhead,
    private readonly files: PartialBlobFiles,
    lastAccess: number,
  ) {
    this.lastAccess = lastAccess;
    this.hasher = new PrefixHasher(digest, files.dataPath, () => this.ranges.runEnd(0));
  }

  /** computeDigest hashes the complete data (mostly done already, in the background, as the prefix filled in). */
  async computeDigest(): Promise<FileDigest> {
    return (await this.hasher.result(this.size)) ?? hashFileInWorker(this.files.dataPath, this.digest);
  }

  /** dataPath is the sparse data file. */
  get dataPath(): string {
    return this.files.dataPath;
  }

  /** isComplete tells whether every byte is present. */
  isComplete(): boolean {
    return this.ranges.has(0, this.size);
  }

  /** known returns the bytes present or being fetched. */
  known(): RangeSet {
    const k = this.ranges.clone();
    for (const t of this.tasks) if (t.start < t.end) k.add(t.start, t.end);
    return k;
  }

  /**
   * plan returns the spans to fetch so [start, end) becomes present, plus read-ahead up to `window` bytes
   * from `start` (only once a chunk, or half a narrow window, is missing from it). Read-ahead is cut into
   * chunks of at most `rs.chunk` bytes, at most `rs.streams` fetches in flight near this read: parallel
   * streams for a wide window (object stores and CDNs cap each connection), one for a narrow one
   * (random reads). A fetch in flight whose next byte is more than `splitDistance` before the first
   * missing byte is cut short there, so a far-away reader does not wait for it to stream through
   * everything in between.
   */
  plan(start: number, end: number, window: number, splitDistance: number, rs: ReadStreams = DEFAULT_READ_STREAMS): ByteSpan[] {
    const gap = this.ranges.missing(start, end)[0];
    if (gap) {
      for (const t of this.tasks) {
        if (t.pos < gap.start && gap.start < t.end && gap.start - t.pos > splitDistance) t.end = gap.start;
      }
    }
    const known = this.known();
    let nearby = 0;
    for (const t of this.tasks) if (t.end > start && t.start < start + Math.max(window, end - start)) nearby++;
    // A read that needs a fetch of its own (the reader outran the fetches in flight) takes its
    // read-ahead along in that request rather than asking for its few bytes alone.
    const readAhead = nearby < rs.streams || !known.has(start, end) ? window : 0;
    const want = Math.min(this.size, Math.max(end, start + readAhead));
    let spans: ByteSpan[];
    if (known.has(start, end)) {
      // The fetches are ahead of the reader: start no more until it comes within PRESENT_AHEAD_MAX of the
      // bytes already on the file, so it reads what they just wrote while memory still holds it.
      if (this.ranges.runEnd(end) - end >= PRESENT_AHEAD_MAX) return [];
      const ahead = known.runEnd(end);
      // Top up once a chunk's worth is missing (half the window for a narrow one): a stream that
      // finished is replaced while the others still run, and no request is tiny.
      if (ahead >= want || want - ahead < Math.min(rs.chunk, readAhead / 2)) return [];
      spans = known.missing(ahead, want);
    } else {
      spans = known.missing(start, want);
      // The streams are busy: fetch what this read needs (with its read-ahead run), nothing past a fetch in flight.
      if (nearby >= rs.streams) spans = spans.filter((s) => s.start < end);
    }
    // The first span (it holds the read's own missing bytes, when any) is always fetched; read-ahead
    // beyond it only while streams are free. A span the read needs is never cut below its end.
    const out: ByteSpan[] = [];
    let free = Math.max(1, rs.streams - nearby);
    for (const s of spans) {
      for (let a = s.start; a < s.end && free > 0; ) {
        const needed = a < end ? Math.min(s.end, end) : a;
        const b = Math.min(s.end, Math.max(needed, a + rs.chunk));
        out.push({ start: a, end: b });
        a = b;
        if (b > end) free--;
      }
    }
    return out;
  }

  /** startFetch streams [span.start, span.end) from upstream into the sparse file, marking bytes as each chunk lands. */
  startFetch(span: ByteSpan, fetcher: RangeFetcher): FetchTask {
    const controller = new AbortController();
    let resolveDone!: () => void;
    let rejectDone!: (e: Error) => void;
    const done = new Promise<void>((res, rej) => {
      resolveDone = res;
      rejectDone = rej;
    });
    done.catch(() => undefined); // observed by whoever waits; never unhandled
    const task: FetchTask = { start: span.start, pos: span.start, end: span.end, controller, done };
    this.tasks.add(task);
    void this.runTask(task, fetcher).then(
      () => resolveDone(),
      (e: Error) => rejectDone(e),
    );
    return task;
  }

  private async runTask(task: FetchTask, fetcher: RangeFetcher): Promise<void> {
    const what = `blob ${this.digest} bytes ${task.start}-${task.end}`;
    let error: RegfsError | undefined;
    let lease: FdLease | undefined;
    let writer: BatchedWriter | undefined;
    const t0 = statStart();
    try {
      lease = await this.files.open();
      const stream = await abortable(fetcher({ start: task.start, end: task.end }, task.controller.signal), task.controller.signal);
      task.controller.signal.addEventListener('abort', () => stream.destroy(), { once: true });
      statEnd('fetch.first-byte', t0);
      const w = new BatchedWriter(lease.fh, task.start, (a, b, bufs) => {
        if (!this.dead) this.files.onWritten?.(a, bufs);
        this.ranges.add(a, b);
        this.files.onBytes(b - a);
        this.hasher.written(a);
        this.wake();
      });
      writer = w;
      this.writers.add(w);
      try {
        for await (const c of stream) {
          if (task.controller.signal.aborted) break;
          let chunk = typeof c === 'string' ? Buffer.from(c) : (c as Buffer);
          const room = task.end - task.pos;
          if (room <= 0) break;
          if (chunk.length > room) chunk = chunk.subarray(0, room);
          this.feed(task.pos, chunk);
          task.pos += chunk.length;
          const full = w.push(chunk);
          if (full) await full;
          if (task.pos >= task.end) break;
        }
      } finally {
        if (!stream.destroyed) stream.destroy();
      }
      await w.drain();
      statEnd('fetch.range', t0, task.pos - task.start);
      if (task.controller.signal.aborted) throw this.deadError ?? closedError(this.digest);
      if (task.pos < task.end) throw new RegfsError('SIZE_MISMATCH', `${what}: upstream ended after ${task.pos - task.start} bytes`);
    } catch (err) {
      error = task.controller.signal.aborted ? (this.deadError ?? closedError(this.digest)) : toRegfsError(err, what);
    } finally {
      await writer?.drain().catch(() => undefined); // never release the file under a write in flight
      if (writer) this.writers.delete(writer);
      lease?.release();
      this.tasks.delete(task);
    }
    this.settle(task, error);
    if (error) throw error;
  }

  /**
   * waitFor resolves when [start, end) is present, or when a fetch it depends on settles (so the caller
   * re-plans); it rejects with that fetch's error. With `into` (at least end - start bytes, the first
   * `filled` of them already holding [start, start + filled)), the bytes are also copied into it, in order:
   * those that arrived and are not yet written, then each chunk of a fetch's stream as it arrives. It
   * resolves true once all of them were, before they are on the file (a reader need not wait for the
   * write, nor read them back). The read of the blob's last byte never takes that way: it waits for the
   * file, then for the blob's verification (BlobFetcher.readPartial).
   */
  waitFor(start: number, end: number, into?: Buffer, filled = 0): Promise<boolean> {
    if (this.deadError) return Promise.reject(this.deadError);
    if (this.dead || this.ranges.has(start, end) || !this.known().has(start, end)) return Promise.resolve(false);
    const fill = into && end < this.size ? into : undefined;
    let next = start + filled;
    if (fill) {
      for (let moved = true; moved && next < end; ) {
        moved = false;
        for (const w of this.writers) {
          const after = w.copyOut(next, fill, start, end);
          if (after > next) {
            next = after;
            moved = true;
          }
        }
      }
      if (next >= end) return Promise.resolve(true);
    }
    return new Promise<boolean>((resolve, reject) => this.waiters.add({ start, end, resolve, reject, into: fill, next }));
  }

  /** feed copies a chunk of a fetch's stream, the bytes at `at`, into the waiters whose next bytes it holds. */
  private feed(at: number, chunk: Buffer): void {
    const end = at + chunk.length;
    for (const w of this.waiters) {
      if (!w.into || w.next < at || w.next >= end) continue;
      const upto = Math.min(end, w.end);
      chunk.copy(w.into, w.next - w.start, w.next - at, upto - at);
      w.next = upto;
      if (upto === w.end) {
        this.waiters.delete(w);
        w.resolve(true);
      }
    }
  }

  private wake(): void {
    for (const w of this.waiters) {
      if (this.ranges.has(w.start, w.end)) {
        this.waiters.delete(w);
        w.resolve(false);
      }
    }
  }

  private settle(task: FetchTask, error: RegfsError | undefined): void {
    const unfilled: ByteSpan = { start: task.start, end: task.end };
    for (const w of this.waiters) {
      this.waiters.delete(w);
      if (error && !this.ranges.has(w.start, w.end) && overlaps(w, unfilled)) w.reject(error);
      else w.resolve(false);
    }
  }

  /** read copies present bytes [position, position+n) into buf[0..n). */
  async read(buf: Buffer, position: number, n: number): Promise<number> {
    const lease = await this.files.open();
    try {
      let got = 0;
      while (got < n) {
        const { bytesRead } = await lease.fh.read(buf, got, n - got, position + got);
        if (bytesRead === 0) throw new RegfsError('IO', `partial blob ${this.digest}: sparse file ended at ${position + got}, before bytes marked present`);
        got += bytesRead;
      }
      return got;
    } finally {
      lease.release();
    }
  }

  /** abortAll stops every fetch in flight (they fail with `reason`, or a "cache closed" error). */
  abortAll(reason?: RegfsError): void {
    if (reason) this.deadError ??= reason;
    for (const t of this.tasks) t.controller.abort();
  }

  /** drain waits until no fetch is in flight. */
  async drain(): Promise<void> {
    while (this.tasks.size > 0) await Promise.allSettled([...this.tasks].map((t) => t.done));
  }

  /**
   * retire marks the blob dead (promoted, discarded or evicted), aborts its fetches, wakes its waiters
   * (rejecting them with `error` if given, else letting them start over), and waits for fetches and persists to stop.
   */
  async retire(error?: RegfsError): Promise<void> {
    this.dead = true;
    this.hasher.stop();
    if (error) this.deadError = error;
    this.abortAll(error);
    for (const w of this.waiters) {
      this.waiters.delete(w);
      if (error) w.reject(error);
      else w.resolve(false);
    }
    await this.drain();
    await this.persistChain;
  }

  /** stopHashing ends the background hashing of the written prefix (the cache is closing). */
  stopHashing(): void {
    this.hasher.stop();
  }

  /** freeze stops range-map persistence (the blob is being promoted) and waits for a persist in progress. */
  async freeze(): Promise<void> {
    this.frozen = true;
    await this.persistChain;
  }

  /** flush makes written bytes durable (fdatasync). */
  async flush(): Promise<void> {
    const lease = await this.files.open();
    try {
      await lease.fh.datasync();
    } finally {
      lease.release();
    }
  }

  /**
   * persist atomically writes the range map; calls made while one runs coalesce into one more. With
   * `sync` it first flushes the data (fdatasync), so the map holds across a power loss; without, the map
   * is marked unsynced and only trusted within this boot (the read path never waits for a disk flush).
   */
  persist(sync = false): Promise<void> {
    if (this.queuedPersist && !sync) return this.queuedPersist;
    const p: Promise<void> = this.persistChain.then(async () => {
      if (this.queuedPersist === p) this.queuedPersist = undefined;
      if (this.dead || this.frozen || this.ranges.covered() === 0) return;
      const snapshot = this.ranges.clone(); // taken before the sync, so every byte it claims is synced
      this.lastPersist = Date.now();
      if (sync) await this.flush();
      if (this.dead || this.frozen) return;
      await writeRangeMap(this.files.mapPath, { digest: this.digest, size: this.size, ranges: snapshot, synced: sync, bootId: currentBootId() });
    });
    this.queuedPersist = p;
    this.persistChain = p.catch(() => undefined);
    return p;
  }
}

import { promises as fsp, constants as C } from 'node:fs';
import path from 'node:path';
import type { Descriptor } from '../registry/descriptor.js';
import { isDigest, parseDigest, type Digest } from '../registry/digest.js';
import { RegfsError, errorMessage } from '../util/errors.js';
import type { ReadableRepository } from '../registry/storage.js';
import { fdatasyncFile, fsyncDir } from '../util/fs-atomic.js';
import { nullLogger, type Logger } from '../util/log.js';
import { abortable } from './abortable.js';
import { CacheLayout } from './cache-layout.js';
import { acquireDirLock, type DirLock } from './dir-lock.js';
import { chooseVictims, type EvictionCandidate } from './eviction.js';
import { FdPool } from './fd-pool.js';
import { hashFileInWorker } from './hash-service.js';
import { ingestBlob } from './ingest.js';
import { closedError, PartialBlob } from './partial-blob.js';
import { readRangeMap, trustworthy } from './range-map-file.js';
import { RangeSet, type ByteSpan } from './range-set.js';
import { ReadAhead } from './read-ahead.js';
import { SingleFlight } from './single-flight.js';
import { errnoOf, ioError } from '../util/errors.js';

const MiB = 1024 * 1024;
/** PERSIST_INTERVAL_MS is how often a partial blob's range map is rewritten while its fetches stream on. */
const PERSIST_INTERVAL_MS = 1000;

/** BlobCacheOptions tune a BlobCache; every field has a default. */
export interface BlobCacheOptions {
  /** maxSize bounds the bytes on disk (complete blobs plus fetched ranges); default unlimited. */
  maxSize?: number;
  /** minFreeBytes makes the cache evict while the file system has less free space; default 1 GiB. */
  minFreeBytes?: number;
  /** smallBlobThreshold: blobs at or under it are fetched whole and verified before serving; default 4 MiB. */
  smallBlobThreshold?: number;
  /** readAheadStart is the first read-ahead window of a large blob; default 1 MiB. */
  readAheadStart?: number;
  /** readAheadMax caps the read-ahead window, which doubles on each sequential read; default 64 MiB. */
  readAheadMax?: number;
  /** verify 'lazy' (default) serves fetched ranges before the whole blob is verified; 'strict' never serves unverified bytes. */
  verify?: 'lazy' | 'strict';
  /** log receives warnings (digest mismatches, discarded files); default silent. */
  log?: Logger;
  /** lock takes the directory's lock file so only one process uses it; default true. */
  lock?: boolean;
  /** mismatchBackoffMs is how long reads of a digest fail after its content did not match (before it is fetched afresh); default 5 s. evict() ends it at once. */
  mismatchBackoffMs?: number;
  /**
   * retryBackoffMs is how long reads of a digest fail at once after a fetch of it failed in a way an
   * immediate retry cannot fix: the registry never answered (timeout), kept refusing with 429/503 after
   * the transport's retries, or the cache file system is full; default 2 s. It keeps the kernel's
   * immediate retries of a failed read from waiting out the deadline again or refetching in a loop.
   */
  retryBackoffMs?: number;
  /** maxOpenFiles bounds the LRU of open blob files; default 64. */
  maxOpenFiles?: number;
}

/** CacheStats counts a BlobCache's work since open; `hits`/`misses` are per read() call (a hit needed no upstream fetch). */
export interface CacheStats {
  hits: number;
  misses: number;
  /** bytesFetched counts blob bytes received from repositories. */
  bytesFetched: number;
  /** bytesServed counts bytes returned by read(). */
  bytesServed: number;
  evictions: number;
  /** blobs is the number of complete blobs cached. */
  blobs: number;
  /** bytesOnDisk is complete blob bytes plus fetched bytes of partial blobs. */
  bytesOnDisk: number;
  /** partials is the number of blobs with some, not all, bytes cached. */
  partials: number;
}

/** EvictResult says how many entries and bytes an eviction removed. */
export interface EvictResult {
  evicted: number;
  bytes: number;
}

interface BlobEntry {
  digest: Digest;
  size: number;
  path: string;
  lastAccess: number;
  /** verified is true once this process hashed the file (or wrote it verified). */
  verified: boolean;
  /** touched is true once this process used it (its access time is written back at close). */
  touched?: boolean;
}

interface ResolvedOptions {
  maxSize: number;
  minFreeBytes: number;
  smallBlobThreshold: number;
  readAheadStart: number;
  readAheadMax: number;
  verify: 'lazy' | 'strict';
  log: Logger;
  mismatchBackoffMs: number;
  retryBackoffMs: number;
}

function nonNegative(v: number | undefined, def: number, name: string): number {
  if (v === undefined) return def;
  if (typeof v !== 'number' || Number.isNaN(v) || v < 0) throw new RegfsError('INVALID_ARGUMENT', `BlobCache option ${name} must be a non-negative number, got ${String(v)}`);
  return v;
}

function checkIndex(v: number, name: string): void {
  if (!Number.isSafeInteger(v) || v < 0) throw new RegfsError('INVALID_ARGUMENT', `read ${name} must be a non-negative integer, got ${String(v)}`);
}

/** unanswered tells whether a fetch failed because the registry did not answer in time or kept refusing (429/503). */
function unanswered(err: unknown): err is RegfsError {
  return err instanceof RegfsError && (err.code === 'TIMEOUT' || err.status === 429 || err.status === 503);
}

/** noSpace tells whether an error (or its cause) is ENOSPC or EDQUOT. */
function noSpace(err: unknown): boolean {
  for (let e = err as { code?: unknown; cause?: unknown } | undefined, i = 0; e && i < 4; e = e.cause as typeof e, i++) {
    if (e.code === 'ENOSPC' || e.code === 'EDQUOT') return true;
  }
  return false;
}

function hexAlgorithm(hex: string): 'sha256' | 'sha512' | undefined {
  if (/^[a-f0-9]{64}$/.test(hex)) return 'sha256';
  if (/^[a-f0-9]{128}$/.test(hex)) return 'sha512';
  return undefined;
}

/**
 * BlobCache is the local content-addressed blob store behind the mount: complete verified blobs under
 * blobs/, large blobs filled lazily by HTTP ranges into sparse files under partial/ (with read-ahead and
 * single-flight fetches), whole fetches staged in ingest/, LRU eviction, and a one-process lock.
 * read() fills a caller's buffer and never keeps it; nothing on the read path blocks the event loop.
 */
export class BlobCache {
  private readonly blobs = new Map<Digest, BlobEntry>();
  private readonly partials = new Map<Digest, PartialBlob>();
  private readonly pins = new Map<Digest, number>();
  private readonly active = new Map<Digest, number>();
  /** poisoned remembers digest mismatches and unretryable failures: reads of that digest fail until `until` (or an evict()). */
  private readonly poisoned = new Map<Digest, { error: RegfsError; until: number }>();
  private readonly fills = new SingleFlight<Digest, void>();
  private readonly verifications = new SingleFlight<Digest, boolean>();
  private readonly wholeFetches = new Set<AbortController>();
  private readonly background = new Set<Promise<unknown>>();
  private readonly operations = new Set<Promise<unknown>>();
  private readonly fds: FdPool;
  private readonly log: Logger;
  private readonly splitDistance: number;
  private counters = { hits: 0, misses: 0, bytesFetched: 0, bytesServed: 0, evictions: 0 };
  private evictChain: Promise<unknown> = Promise.resolve();
  private evictCheck?: Promise<void>;
  private evictAgain = false;
  private clock = 0;
  private closed = false;
  private closing?: Promise<void>;

  private constructor(
    /** layout names the cache's files. */
    readonly layout: CacheLayout,
    private readonly opts: ResolvedOptions,
    private readonly lock: DirLock | undefined,
    maxOpenFiles: number,
  ) {
    this.fds = new FdPool(maxOpenFiles);
    this.log = opts.log;
    this.splitDistance = Math.max(2 * opts.readAheadStart, 4 * MiB);
  }

  /** open prepares `dir` (0700, no symlinks, not group/world-writable), takes its lock, clears ingest/ (and stray links in extracted/) and loads what is cached. */
  static async open(dir: string, opts: BlobCacheOptions = {}): Promise<BlobCache> {
    const readAheadStart = nonNegative(opts.readAheadStart, MiB, 'readAheadStart');
    const resolved: ResolvedOptions = {
      maxSize: nonNegative(opts.maxSize, Infinity, 'maxSize'),
      minFreeBytes: nonNegative(opts.minFreeBytes, 1024 * MiB, 'minFreeBytes'),
      smallBlobThreshold: nonNegative(opts.smallBlobThreshold, 4 * MiB, 'smallBlobThreshold'),
      readAheadStart: Math.max(1, readAheadStart),
      readAheadMax: Math.max(Math.max(1, readAheadStart), nonNegative(opts.readAheadMax, 64 * MiB, 'readAheadMax')),
      verify: opts.verify ?? 'lazy',
      log: opts.log ?? nullLogger,
      mismatchBackoffMs: nonNegative(opts.mismatchBackoffMs, 5_000, 'mismatchBackoffMs'),
      retryBackoffMs: nonNegative(opts.retryBackoffMs, 2_000, 'retryBackoffMs'),
    };
    if (resolved.verify !== 'lazy' && resolved.verify !== 'strict') throw new RegfsError('INVALID_ARGUMENT', `BlobCache option verify must be 'lazy' or 'strict'`);
    const maxOpenFiles = Math.max(2, Math.floor(nonNegative(opts.maxOpenFiles, 64, 'maxOpenFiles')));
    const layout = new CacheLayout(path.resolve(dir));
    await layout.prepare();
    const lock = opts.lock === false ? undefined : await acquireDirLock(layout.lock, layout.root);
    const cache = new BlobCache(layout, resolved, lock, maxOpenFiles);
    try {
      await cache.load();
    } catch (err) {
      await lock?.release();
      throw ioError(`cannot load cache ${layout.root}`, err);
    }
    return cache;
  }

  // ---------------------------------------------------------------------------------------------
  // public API

  /**
   * read fills buf[0..n) with the blob's bytes at `offset` and returns n (clamped to the blob's end; 0 at
   * or after EOF). Small blobs (and every blob in strict mode) are fetched whole and verified first; large
   * ones are filled by ranges with read-ahead. buf is only used until the returned promise settles.
   */
  async read(repo: ReadableRepository, desc: Descriptor, buf: Buffer, offset: number, length: number): Promise<number> {
    this.assertOpen();
    const digest = parseDigest(desc.digest);
    checkIndex(offset, 'offset');
    checkIndex(length, 'length');
    checkIndex(desc.size, 'descriptor size');
    if (!Buffer.isBuffer(buf)) throw new RegfsError('INVALID_ARGUMENT', 'read needs a Buffer to fill');
    if (length > buf.length) throw new RegfsError('INVALID_ARGUMENT', `read length ${length} exceeds the buffer's ${buf.length} bytes`);
    if (offset >= desc.size || length === 0) {
      this.counters.hits++;
      return 0;
    }
    const n = Math.min(length, desc.size - offset);
    return this.operation(digest, async () => {
      const { bytes, fetched } = await this.readBytes(repo, desc, digest, buf, offset, n);
      if (fetched) this.counters.misses++;
      else this.counters.hits++;
      this.counters.bytesServed += bytes;
      return bytes;
    });
  }

  /** ensureBlob makes sure the complete, verified blob is cached (single flight) and returns its path. */
  async ensureBlob(repo: ReadableRepository, desc: Descriptor): Promise<string> {
    this.assertOpen();
    const digest = parseDigest(desc.digest);
    checkIndex(desc.size, 'descriptor size');
    return this.operation(digest, async () => {
      for (let attempt = 0; attempt < 8; attempt++) {
        this.throwIfPoisoned(digest);
        const entry = this.blobs.get(digest);
        if (entry) {
          this.checkSize(entry.size, desc);
          if (await this.ensureVerified(entry)) {
            entry.lastAccess = this.tick();
            entry.touched = true;
            return entry.path;
          }
          continue;
        }
        await this.fill(repo, desc);
      }
      throw new RegfsError('IO', `blob ${digest}: could not be cached (it kept disappearing)`);
    });
  }

  /** has tells whether the complete blob is cached. */
  async has(digest: Digest): Promise<boolean> {
    const d = parseDigest(digest);
    const entry = this.blobs.get(d);
    if (!entry) return false;
    try {
      const st = await fsp.lstat(entry.path);
      if (st.isFile()) return true;
    } catch {
      /* gone */
    }
    if (this.blobs.get(d) === entry) this.forgetBlob(entry);
    return false;
  }

  /** pin keeps a blob (complete or partial) from eviction until as many unpin calls; an open file holds one pin. */
  pin(digest: Digest): void {
    const d = parseDigest(digest);
    this.pins.set(d, (this.pins.get(d) ?? 0) + 1);
  }

  /** unpin releases one pin taken by pin(). */
  unpin(digest: Digest): void {
    const d = parseDigest(digest);
    const n = (this.pins.get(d) ?? 0) - 1;
    if (n > 0) this.pins.set(d, n);
    else this.pins.delete(d);
  }

  /** verifyCached rehashes a complete cached blob; on mismatch it deletes it and returns false (false too when not cached). */
  async verifyCached(digest: Digest): Promise<boolean> {
    this.assertOpen();
    const d = parseDigest(digest);
    const entry = this.blobs.get(d);
    if (!entry) return false;
    return this.operation(d, () => this.verifications.run(d, () => this.hashEntry(entry)));
  }

  /**
   * evict removes least-recently-used, unpinned, idle entries (complete blobs and partial blobs) until the
   * cache holds at most `maxSize` bytes (default: the cache's maxSize) and the file system has minFreeBytes
   * free. It also ends digest-mismatch back-offs, so the next read of such a blob starts over.
   */
  async evict(opts: { maxSize?: number } = {}): Promise<EvictResult> {
    this.assertOpen();
    const limit = nonNegative(opts.maxSize, this.opts.maxSize, 'maxSize');
    this.poisoned.clear();
    return this.serialEvict(limit);
  }

  /** stats returns counters and the current size of the cache. */
  stats(): CacheStats {
    let partialBytes = 0;
    for (const p of this.partials.values()) partialBytes += p.ranges.covered();
    return {
      ...this.counters,
      blobs: this.blobs.size,
      bytesOnDisk: this.completeBytes() + partialBytes,
      partials: this.partials.size,
    };
  }

  /** idle resolves once no fetch, read-ahead, promotion or eviction is in flight (tests and orderly shutdown use it). */
  async idle(): Promise<void> {
    for (;;) {
      const work: Array<Promise<unknown>> = [...this.background, this.fills.settled()];
      for (const p of this.partials.values()) {
        work.push(p.drain());
        if (p.finalizing) work.push(p.finalizing);
      }
      const busy = this.background.size > 0 || [...this.partials.values()].some((p) => p.tasks.size > 0);
      await Promise.allSettled(work);
      if (!busy && this.background.size === 0) return;
    }
  }

  /** close stops fetches in flight (keeping what was written), persists range maps, closes files and releases the lock. */
  close(): Promise<void> {
    this.closing ??= this.shutdown();
    return this.closing;
  }

  // ---------------------------------------------------------------------------------------------
  // reading

  private async readBytes(repo: ReadableRepository, desc: Descriptor, digest: Digest, buf: Buffer, offset: number, n: number): Promise<{ bytes: number; fetched: boolean }> {
    let fetched = false;
    for (let attempt = 0; attempt < 8; attempt++) {
      this.assertOpen();
      this.throwIfPoisoned(digest);
      const entry = this.blobs.get(digest);
      if (entry) {
        this.checkSize(entry.size, desc);
        if (await this.ensureVerified(entry)) {
          const got = await this.readComplete(entry, buf, offset, n);
          if (got !== undefined) return { bytes: got, fetched };
        }
        continue; // corrupt or vanished: fetch again
      }
      if (this.opts.verify === 'strict' || desc.size <= this.opts.smallBlobThreshold) {
        fetched = true;
        await this.fill(repo, desc);
        continue;
      }
      const r = await this.readPartial(repo, desc, digest, buf, offset, n);
      fetched ||= r.fetched;
      if (r.bytes !== undefined) return { bytes: r.bytes, fetched };
    }
    throw new RegfsError('IO', `blob ${digest}: could not be read from the cache (it kept disappearing)`);
  }

  /** readComplete reads from a complete blob's pooled fd; undefined when the file vanished or is short (it is then forgotten). */
  private async readComplete(entry: BlobEntry, buf: Buffer, offset: number, n: number): Promise<number | undefined> {
    let lease;
    try {
      lease = await this.fds.acquire(`b:${entry.digest}`, () => fsp.open(entry.path, C.O_RDONLY | C.O_NOFOLLOW));
    } catch (err) {
      if (errnoOf(err) === 'ENOENT' || errnoOf(err) === 'ELOOP') {
        this.log.warn('cached blob vanished from disk; fetching it again', { digest: entry.digest });
        this.forgetBlob(entry);
        return undefined;
      }
      throw ioError(`cannot open cached blob ${entry.path}`, err);
    }
    try {
      let got = 0;
      while (got < n) {
        const { bytesRead } = await lease.fh.read(buf, got, n - got, offset + got);
        if (bytesRead === 0) break;
        got += bytesRead;
      }
      if (got < n) {
        this.log.warn('cached blob is shorter than its size; deleting it', { digest: entry.digest, size: entry.size });
        await this.removeBlob(entry);
        return undefined;
      }
      entry.lastAccess = this.tick();
      entry.touched = true;
      return got;
    } catch (err) {
      throw ioError(`cannot read cached blob ${entry.path}`, err);
    } finally {
      lease.release();
    }
  }

  /** readPartial serves a large blob from its sparse file, fetching missing ranges (plus read-ahead); bytes is undefined when the caller must start over. */
  private async readPartial(repo: ReadableRepository, desc: Descriptor, digest: Digest, buf: Buffer, offset: number, n: number): Promise<{ bytes?: number; fetched: boolean }> {
    const p = this.partialFor(desc, digest);
    p.lastAccess = this.tick();
    const end = offset + n;
    let window = p.readAhead.advance(offset, end);
    let fetched = false;
    for (let round = 0; ; round++) {
      this.assertOpen();
      if (p.dead) return { fetched };
      if (p.finalizing || p.isComplete()) {
        await this.finalize(p);
        return { fetched };
      }
      const spans = p.plan(offset, end, window, this.splitDistance);
      window = 0; // read-ahead is planned once per read; later rounds only fill what is needed
      for (const s of spans) this.startFetch(p, repo, desc, s);
      if (p.ranges.has(offset, end)) break;
      fetched = true;
      await p.waitFor(offset, end);
      if (round > 10_000) throw new RegfsError('IO', `blob ${digest}: range fetches keep settling without the bytes arriving`);
    }
    if (p.isComplete()) {
      // This read completed the blob: it waits for the verification, so corrupt content fails it.
      await this.finalize(p);
      return { fetched };
    }
    try {
      const bytes = await p.read(buf, offset, n);
      return { bytes, fetched };
    } catch (err) {
      if (p.dead) return { fetched };
      throw ioError(`cannot read partial blob ${digest}`, err);
    }
  }

  private partialFor(desc: Descriptor, digest: Digest): PartialBlob {
    const existing = this.partials.get(digest);
    if (existing && !existing.dead) {
      this.checkSize(existing.size, desc);
      return existing;
    }
    const p = this.newPartial(digest, desc.size, new RangeSet(), this.tick());
    this.partials.set(digest, p);
    return p;
  }

  private newPartial(digest: Digest, size: number, ranges: RangeSet, lastAccess: number): PartialBlob {
    const dataPath = this.layout.partialPath(digest);
    const key = `p:${digest}`;
    return new PartialBlob(digest, size, ranges, new ReadAhead(this.opts.readAheadStart, this.opts.readAheadMax), {
      dataPath,
      mapPath: this.layout.rangeMapPath(digest),
      open: () => this.fds.acquire(key, () => fsp.open(dataPath, C.O_RDWR | C.O_CREAT | C.O_NOFOLLOW, 0o600)),
      onBytes: (bytes) => {
        this.counters.bytesFetched += bytes;
      },
    }, lastAccess);
  }

  private startFetch(p: PartialBlob, repo: ReadableRepository, desc: Descriptor, span: ByteSpan): void {
    const task = p.startFetch(span, (s, signal) => repo.fetchBlob(desc, { start: s.start, end: s.end }, signal));
    this.track(
      task.done
        .catch(async (err: unknown) => {
          if (this.closed || p.dead) return;
          this.log.debug('range fetch failed', { digest: p.digest, start: span.start, end: span.end, error: errorMessage(err) });
          if (unanswered(err) || noSpace(err)) this.poison(p.digest, err as RegfsError, this.opts.retryBackoffMs);
          if (noSpace(err)) {
            // A full file system: give the space back instead of keeping a sparse file nobody can complete.
            this.log.warn('cache file system is full; discarding the partially fetched blob', { digest: p.digest, cache: this.layout.root });
            await this.discardPartial(p, err as RegfsError);
          }
        })
        .then(() => this.afterFetch(p)),
    );
  }

  /**
   * afterFetch persists the range map (unsynced, at most once a second while fetches stream on), promotes
   * a now-complete blob, and checks the cache size.
   */
  private async afterFetch(p: PartialBlob): Promise<void> {
    if (p.dead) return;
    try {
      if (p.tasks.size === 0 || Date.now() - p.lastPersist >= PERSIST_INTERVAL_MS) await p.persist();
    } catch (err) {
      this.log.warn('cannot persist range map', { digest: p.digest, error: errorMessage(err) });
    }
    if (!this.closed && !p.dead && p.tasks.size === 0 && p.isComplete()) {
      await this.finalize(p).catch(() => undefined); // failures are logged and remembered by finalize
    }
    this.maybeEvict();
  }

  /** finalize verifies a complete partial blob (single flight) and promotes it to blobs/, or discards it on mismatch. */
  private finalize(p: PartialBlob): Promise<void> {
    p.finalizing ??= this.promote(p).catch((err: unknown) => {
      if (!p.dead) p.finalizing = undefined; // a transient failure (not a mismatch): the next read tries again
      throw err;
    });
    return p.finalizing;
  }

  private async promote(p: PartialBlob): Promise<void> {
    await p.drain();
    if (p.dead) return;
    if (!p.isComplete()) throw new RegfsError('IO', `blob ${p.digest}: finalize called before every byte was present`);
    let got;
    try {
      got = await p.computeDigest();
    } catch (err) {
      throw ioError(`cannot verify partial blob ${p.digest}`, err);
    }
    if (got.digest !== p.digest || got.size !== p.size) {
      const err = new RegfsError(
        'DIGEST_MISMATCH',
        `blob ${p.digest}: fetched bytes hash to ${got.digest} (${got.size} bytes); discarded, reads fail for a short back-off, then fetch it again`,
      );
      this.log.warn('digest mismatch: discarding fetched ranges', { expected: p.digest, actual: got.digest });
      this.poison(p.digest, err);
      await this.discardPartial(p, err);
      throw err;
    }
    // Promote: the entry goes into blobs/ before the partial is retired, so woken readers find it.
    await p.freeze();
    const dest = this.layout.blobPath(p.digest);
    try {
      await fsp.rename(p.dataPath, dest);
      await fsyncDir(path.dirname(dest));
    } catch (err) {
      const e = ioError(`cannot move verified blob ${p.digest} into place`, err);
      await this.discardPartial(p, e);
      throw e;
    }
    this.blobs.set(p.digest, { digest: p.digest, size: p.size, path: dest, lastAccess: Math.max(p.lastAccess, this.tick()), verified: true, touched: true });
    if (this.partials.get(p.digest) === p) this.partials.delete(p.digest);
    this.fds.drop(`p:${p.digest}`);
    await p.retire();
    await fsp.rm(this.layout.rangeMapPath(p.digest), { force: true }).catch(() => undefined);
    // Make it durable in the background: no reader waits for the disk. A blob cut short by a power loss
    // is still safe: after a restart every blob is hashed before its first byte is served.
    this.track(fdatasyncFile(dest));
    this.maybeEvict();
  }

  /** discardPartial stops a partial blob's fetches, rejects its waiters with `err` (or lets them start over) and deletes its files. */
  private async discardPartial(p: PartialBlob, err?: RegfsError): Promise<void> {
    await p.retire(err);
    if (this.partials.get(p.digest) === p) this.partials.delete(p.digest);
    this.fds.drop(`p:${p.digest}`);
    await Promise.all([
      fsp.rm(this.layout.partialPath(p.digest), { force: true }),
      fsp.rm(this.layout.rangeMapPath(p.digest), { force: true }),
    ]).catch((e: unknown) => this.log.warn('cannot delete partial blob files', { digest: p.digest, error: errorMessage(e) }));
  }

  // ---------------------------------------------------------------------------------------------
  // whole fetches and verification

  /** fill caches the complete blob (single flight): gaps of an existing partial by ranges, else one whole verified fetch. */
  private fill(repo: ReadableRepository, desc: Descriptor): Promise<void> {
    const digest = desc.digest;
    return this.fills.run(digest, async () => {
      if (this.blobs.has(digest)) return;
      const p = this.partials.get(digest);
      if (p && !p.dead && p.ranges.covered() > 0) {
        this.checkSize(p.size, desc);
        await this.fillPartial(p, repo, desc);
        return;
      }
      await this.fetchWhole(repo, desc);
    });
  }

  private async fillPartial(p: PartialBlob, repo: ReadableRepository, desc: Descriptor): Promise<void> {
    for (;;) {
      if (p.dead) return;
      if (p.finalizing || p.isComplete()) {
        await this.finalize(p);
        return;
      }
      for (const s of p.plan(0, p.size, 0, Infinity)) this.startFetch(p, repo, desc, s);
      await p.waitFor(0, p.size);
    }
  }

  private async fetchWhole(repo: ReadableRepository, desc: Descriptor): Promise<void> {
    const digest = desc.digest;
    const controller = new AbortController();
    this.wholeFetches.add(controller);
    const dest = this.layout.blobPath(digest);
    try {
      const src = await abortable(repo.fetchBlob(desc, undefined, controller.signal), controller.signal);
      controller.signal.addEventListener('abort', () => src.destroy(), { once: true });
      await ingestBlob(src, desc, this.layout.ingest, dest, (bytes) => {
        this.counters.bytesFetched += bytes;
      });
    } catch (err) {
      if (controller.signal.aborted) throw closedError(digest);
      const e = ioError(`fetch of blob ${digest}`, err);
      if (e.code === 'DIGEST_MISMATCH' || e.code === 'SIZE_MISMATCH') {
        this.log.warn('digest mismatch: discarding fetched blob', { expected: digest, error: e.message });
        this.poison(digest, e);
      } else if (unanswered(e) || noSpace(e)) this.poison(digest, e, this.opts.retryBackoffMs);
      throw e;
    } finally {
      this.wholeFetches.delete(controller);
    }
    this.blobs.set(digest, { digest, size: desc.size, path: dest, lastAccess: this.tick(), verified: true, touched: true });
    const stale = this.partials.get(digest);
    if (stale) this.track(this.discardPartial(stale));
    this.maybeEvict();
  }

  /** ensureVerified hashes a complete blob the first time this process uses it; false when it was corrupt (and is now deleted). */
  private async ensureVerified(entry: BlobEntry): Promise<boolean> {
    if (entry.verified) return this.blobs.get(entry.digest) === entry;
    return this.verifications.run(entry.digest, () => this.hashEntry(entry));
  }

  private async hashEntry(entry: BlobEntry): Promise<boolean> {
    let got;
    try {
      got = await hashFileInWorker(entry.path, entry.digest);
    } catch (err) {
      if (errnoOf(err) === 'ENOENT' || errnoOf(err) === 'ELOOP') {
        this.forgetBlob(entry);
        return false;
      }
      throw ioError(`cannot verify cached blob ${entry.path}`, err);
    }
    if (got.digest === entry.digest && got.size === entry.size) {
      entry.verified = true;
      return this.blobs.get(entry.digest) === entry;
    }
    this.log.warn('cached blob does not match its digest (altered on disk); deleting it', { expected: entry.digest, actual: got.digest, size: got.size });
    await this.removeBlob(entry);
    return false;
  }

  // ---------------------------------------------------------------------------------------------
  // eviction

  private maybeEvict(): void {
    if (this.closed) return;
    if (this.evictCheck) {
      this.evictAgain = true;
      return;
    }
    const run = async (): Promise<void> => {
      do {
        this.evictAgain = false;
        const over = this.stats().bytesOnDisk > this.opts.maxSize;
        const low = this.opts.minFreeBytes > 0 && (await this.freeBytes()) < this.opts.minFreeBytes;
        if ((over || low) && !this.closed) await this.serialEvict(this.opts.maxSize);
      } while (this.evictAgain && !this.closed);
    };
    const p = run()
      .catch((err: unknown) => this.log.warn('eviction failed', { error: errorMessage(err) }))
      .finally(() => {
        this.evictCheck = undefined;
      });
    this.evictCheck = p;
    this.track(p);
  }

  private serialEvict(limit: number): Promise<EvictResult> {
    const run = this.evictChain.then(() => this.evictNow(limit));
    this.evictChain = run.catch(() => undefined);
    return run;
  }

  private async evictNow(limit: number): Promise<EvictResult> {
    const free = this.opts.minFreeBytes > 0 ? await this.freeBytes() : Infinity;
    const mustFree = Math.max(0, this.opts.minFreeBytes - free);
    const candidates: EvictionCandidate[] = [];
    for (const e of this.blobs.values()) {
      if (this.evictable(e.digest)) candidates.push({ key: `b:${e.digest}`, bytes: e.size, lastAccess: e.lastAccess });
    }
    for (const p of this.partials.values()) {
      if (this.evictable(p.digest) && p.tasks.size === 0 && !p.finalizing && !p.dead) {
        candidates.push({ key: `p:${p.digest}`, bytes: p.ranges.covered(), lastAccess: p.lastAccess });
      }
    }
    const victims = chooseVictims(candidates, this.stats().bytesOnDisk, limit, mustFree);
    let evicted = 0;
    let bytes = 0;
    for (const v of victims) {
      const digest = v.key.slice(2) as Digest;
      if (!this.evictable(digest)) continue; // pinned or read meanwhile
      if (v.key.startsWith('b:')) {
        const e = this.blobs.get(digest);
        if (!e) continue;
        await this.removeBlob(e);
        bytes += e.size;
      } else {
        const p = this.partials.get(digest);
        if (!p || p.tasks.size > 0 || p.finalizing || p.dead) continue;
        bytes += p.ranges.covered();
        await this.discardPartial(p);
      }
      evicted++;
      this.counters.evictions++;
    }
    if (evicted > 0) this.log.debug('evicted cache entries', { evicted, bytes });
    return { evicted, bytes };
  }

  private evictable(digest: Digest): boolean {
    return !this.pins.has(digest) && !this.active.has(digest);
  }

  private async freeBytes(): Promise<number> {
    try {
      const s = await fsp.statfs(this.layout.root);
      return s.bavail * s.bsize;
    } catch {
      return Infinity;
    }
  }

  private completeBytes(): number {
    let n = 0;
    for (const e of this.blobs.values()) n += e.size;
    return n;
  }

  private async removeBlob(entry: BlobEntry): Promise<void> {
    this.forgetBlob(entry);
    await fsp.rm(entry.path, { force: true }).catch((err: unknown) => this.log.warn('cannot delete cached blob', { path: entry.path, error: errorMessage(err) }));
  }

  private forgetBlob(entry: BlobEntry): void {
    if (this.blobs.get(entry.digest) === entry) this.blobs.delete(entry.digest);
    this.fds.drop(`b:${entry.digest}`);
  }

  // ---------------------------------------------------------------------------------------------
  // lifecycle

  /** load clears ingest/, indexes blobs/ and reloads partial/ range maps, deleting leftovers it cannot trust. */
  private async load(): Promise<void> {
    for (const name of await fsp.readdir(this.layout.ingest)) {
      await fsp.rm(path.join(this.layout.ingest, name), { recursive: true, force: true });
    }
    // extracted/ holds directories only: anything else (a planted symlink) is removed, never followed.
    for (const name of await fsp.readdir(this.layout.extracted)) {
      const file = path.join(this.layout.extracted, name);
      const st = await fsp.lstat(file).catch(() => undefined);
      if (st && !st.isDirectory()) await fsp.rm(file, { force: true });
    }
    for (const algDir of this.layout.algorithmDirs()) {
      const alg = path.basename(algDir);
      for (const name of await fsp.readdir(algDir)) {
        const file = path.join(algDir, name);
        const st = await fsp.lstat(file).catch(() => undefined);
        if (!st) continue;
        const digest = `${alg}:${name}`;
        if (!isDigest(digest) || !st.isFile()) {
          if (name.startsWith('.') || st.isSymbolicLink()) await fsp.rm(file, { force: true });
          else this.log.warn('ignoring unexpected file in cache', { path: file });
          continue;
        }
        this.blobs.set(digest, { digest, size: st.size, path: file, lastAccess: Math.max(st.atimeMs, st.mtimeMs), verified: false });
      }
    }
    const names = new Set(await fsp.readdir(this.layout.partial));
    for (const name of names) {
      const file = path.join(this.layout.partial, name);
      const m = /^([a-f0-9]+)\.ranges\.json$/.exec(name);
      const hex = m ? m[1]! : name;
      const alg = hexAlgorithm(hex);
      const digest = alg ? (`${alg}:${hex}` as Digest) : undefined;
      if (!digest) {
        await fsp.rm(file, { force: true, recursive: true });
        continue;
      }
      if (!m) {
        if (!names.has(`${hex}.ranges.json`)) await fsp.rm(file, { force: true, recursive: true }); // data without a map: nothing known
        continue;
      }
      await this.loadPartial(digest, file);
    }
  }

  private async loadPartial(digest: Digest, mapFile: string): Promise<void> {
    const dataFile = this.layout.partialPath(digest);
    const drop = async (why: string): Promise<void> => {
      if (why) this.log.warn('discarding partial blob', { digest, reason: why });
      await fsp.rm(dataFile, { force: true, recursive: true });
      await fsp.rm(mapFile, { force: true });
    };
    if (this.blobs.has(digest)) return drop('');
    let map;
    try {
      map = await readRangeMap(mapFile);
    } catch (err) {
      return drop(`unreadable range map: ${errorMessage(err)}`);
    }
    if (map.digest !== digest) return drop('range map names another digest');
    if (!trustworthy(map)) return drop('range map was written before a reboot without a flush of its data');
    const st = await fsp.lstat(dataFile).catch(() => undefined);
    if (!st || !st.isFile()) return drop('');
    const spans = map.ranges.spans();
    const lastEnd = spans.length ? spans[spans.length - 1]!.end : 0;
    if (st.size > map.size || lastEnd > st.size) return drop(`data file is ${st.size} bytes, range map disagrees`);
    this.partials.set(digest, this.newPartial(digest, map.size, map.ranges, Math.max(st.mtimeMs, st.atimeMs)));
  }

  private async shutdown(): Promise<void> {
    this.closed = true;
    for (const c of this.wholeFetches) c.abort();
    for (const p of this.partials.values()) p.abortAll();
    // Reads and ensureBlob calls in flight fail fast now (their fetches are aborted); wait for them,
    // and for promotions and evictions already running, so no file is touched after close.
    while (this.operations.size > 0) await Promise.allSettled([...this.operations]);
    await this.idle();
    await this.evictChain;
    for (const p of this.partials.values()) {
      p.stopHashing(); // the hash worker closes its file
      if (p.dead) continue;
      await p.persist(true).catch((err: unknown) => this.log.warn('cannot persist range map', { digest: p.digest, error: errorMessage(err) }));
    }
    await this.fds.closeAll();
    await this.recordAccessTimes();
    await this.lock?.release();
  }

  /** recordAccessTimes writes in-memory LRU times back as file times, so the next open seeds eviction order from them. */
  private async recordAccessTimes(): Promise<void> {
    for (const e of this.blobs.values()) {
      if (!e.touched) continue;
      const t = e.lastAccess / 1000;
      await fsp.lutimes(e.path, t, t).catch(() => undefined);
    }
  }

  private track(p: Promise<unknown>): void {
    const q = p.catch(() => undefined);
    this.background.add(q);
    void q.finally(() => this.background.delete(q));
  }

  /** operation runs one public call on a digest: it keeps the digest from eviction and lets close() wait for it. */
  private operation<T>(d: Digest, fn: () => Promise<T>): Promise<T> {
    this.enter(d);
    const p = (async () => {
      try {
        return await fn();
      } finally {
        this.leave(d);
      }
    })();
    const tracked = p.catch(() => undefined);
    this.operations.add(tracked);
    void tracked.finally(() => this.operations.delete(tracked));
    return p;
  }

  private enter(d: Digest): void {
    this.active.set(d, (this.active.get(d) ?? 0) + 1);
  }

  private leave(d: Digest): void {
    const n = (this.active.get(d) ?? 0) - 1;
    if (n > 0) this.active.set(d, n);
    else this.active.delete(d);
  }

  private tick(): number {
    this.clock = Math.max(Date.now(), this.clock + 0.001);
    return this.clock;
  }

  private assertOpen(): void {
    if (this.closed) throw new RegfsError('IO', `blob cache ${this.layout.root} is closed`);
  }

  private throwIfPoisoned(d: Digest): void {
    const p = this.poisoned.get(d);
    if (!p) return;
    if (Date.now() >= p.until) {
      this.poisoned.delete(d);
      return;
    }
    throw new RegfsError(p.error.code, p.error.message, { cause: p.error });
  }

  private poison(d: Digest, error: RegfsError, ms = this.opts.mismatchBackoffMs): void {
    this.poisoned.set(d, { error, until: Date.now() + ms });
  }

  private checkSize(cachedSize: number, desc: Descriptor): void {
    if (cachedSize !== desc.size) {
      throw new RegfsError('SIZE_MISMATCH', `blob ${desc.digest} is ${cachedSize} bytes in the cache, but the descriptor says ${desc.size}`);
    }
  }
}

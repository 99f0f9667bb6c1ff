/*
 * BlobCache is the facade of the local blob store; its parts live beside it:
 *   cache-context.ts   shared state: options, fd pool, counters, back-offs, background work
 *   complete-blobs.ts  the index of complete blobs under blobs/ and reads from them
 *   blob-verify.ts     hashing complete blobs before first use, checking fetched partial blobs
 *   blob-fetch.ts      partial blobs, range and whole fetches, promotion into blobs/
 *   eviction.ts        LRU eviction by size and free space
 *   stream-through.ts  reads of blobs the cache's file system cannot hold, from memory windows
 *
 * Ordering rules of the facade:
 * - Every public call on a digest runs as an operation(): while it runs the digest is `active` and never
 *   evicted, and close() waits for it. Pins (open files) keep a digest from eviction the same way.
 * - A read or ensureBlob loops (at most 8 times) over: back-off check, complete blob (verified first),
 *   else fill or range read; any part that finds its state gone returns "start over" instead of failing.
 * - close() sets `closed`, aborts fetches, waits for operations, background work and evictions, then
 *   persists range maps, closes files, records access times and releases the lock, in that order.
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import type { Readable } from 'node:stream';
import type { Descriptor } from '../registry/descriptor.js';
import { parseDigest, type Digest } from '../registry/digest.js';
import { RegfsError, errnoOf, ioError } from '../util/errors.js';
import type { ReadableRepository } from '../registry/storage.js';
import { nullLogger, type Logger } from '../util/log.js';
import { PartialBlobs, type BlobFetcher } from './blob-fetch.js';
import { teeFill } from './fill-tap.js';
import { DEFAULT_READ_STREAMS } from './partial-blob.js';
import { BlobVerifier } from './blob-verify.js';
import { CacheContext, noSpace, type ResolvedOptions } from './cache-context.js';
import { CacheLayout } from './cache-layout.js';
import { CompleteBlobs } from './complete-blobs.js';
import { acquireDirLock, type DirLock } from './dir-lock.js';
import { Evictor, type EvictResult } from './eviction.js';
import type { LayerBlobSource, OpenedBlob } from './layer-extract.js';
import { LayerTocStore } from './layer-toc.js';
import { StreamThrough } from './stream-through.js';

export type { EvictResult } from './eviction.js';

const MiB = 1024 * 1024;

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
  /** readAheadMax caps the read-ahead window, which grows with a sequential run's bytes; default 64 MiB. */
  readAheadMax?: number;
  /** readAheadStreams is how many range fetches of one blob may stream ahead of a reader at once; default 4 (1: one stream). */
  readAheadStreams?: number;
  /** readAheadChunk is the most one read-ahead fetch asks for, so a wide window becomes parallel streams; default 8 MiB. */
  readAheadChunk?: number;
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
  /** imageBytes is what image TOCs (tocs/) and extracted files (files/) hold, included in bytesOnDisk. */
  imageBytes: number;
}

function nonNegative(v: number | undefined, def: number, name: string): number {
  if (v === undefined) return def;
  if (typeof v !== 'number' || Number.isNaN(v) || v < 0) throw new RegfsError('INVALID_ARGUMENT', `BlobCache option ${name} must be a non-negative number, got ${String(v)}`);
  return v;
}

function checkIndex(v: number, name: string): void {
  if (!Number.isSafeInteger(v) || v < 0) throw new RegfsError('INVALID_ARGUMENT', `read ${name} must be a non-negative integer, got ${String(v)}`);
}

/**
 * BlobCache is the local content-addressed blob store behind the mount: complete verified blobs under
 * blobs/, large blobs filled lazily by HTTP ranges into sparse files under partial/ (with read-ahead and
 * single-flight fetches), whole fetches staged in ingest/, LRU eviction, and a one-process lock.
 * read() fills a caller's buffer and never keeps it; nothing on the read path blocks the event loop.
 */
export class BlobCache implements LayerBlobSource {
  /** layerTocs builds image layer TOCs and extracts their files (tocs/, files/), counted and evicted with the blobs. */
  readonly layerTocs: LayerTocStore;
  private readonly ctx: CacheContext;
  private readonly blobs: CompleteBlobs;
  private readonly verifier: BlobVerifier;
  private readonly partials: PartialBlobs;
  private readonly evictor: Evictor;
  private readonly streamer: StreamThrough;
  private readonly pins = new Map<Digest, number>();
  private readonly active = new Map<Digest, number>();
  private readonly operations = new Set<Promise<unknown>>();
  private closing?: Promise<void>;

  private constructor(
    /** layout names the cache's files. */
    readonly layout: CacheLayout,
    opts: ResolvedOptions,
    private readonly lock: DirLock | undefined,
    maxOpenFiles: number,
  ) {
    this.ctx = new CacheContext(layout, opts, maxOpenFiles);
    this.blobs = new CompleteBlobs(this.ctx);
    this.verifier = new BlobVerifier(this.ctx, this.blobs);
    this.partials = new PartialBlobs(this.ctx, this.blobs, () => this.evictor.maybeEvict());
    this.layerTocs = new LayerTocStore(layout.tocs, layout.files, undefined, (m) => opts.log.warn(m), this, () => this.evictor.maybeEvict());
    this.evictor = new Evictor(this.ctx, this.blobs, this.partials, (d) => this.evictable(d), () => this.stats().bytesOnDisk, [this.layerTocs.sideStore]);
    this.streamer = new StreamThrough(this.ctx, opts.smallBlobThreshold);
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
      readStreams: {
        streams: Math.max(1, Math.floor(nonNegative(opts.readAheadStreams, DEFAULT_READ_STREAMS.streams, 'readAheadStreams'))),
        chunk: Math.max(64 * 1024, nonNegative(opts.readAheadChunk, DEFAULT_READ_STREAMS.chunk, 'readAheadChunk')),
      },
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
    this.ctx.assertOpen();
    const digest = parseDigest(desc.digest);
    checkIndex(offset, 'offset');
    checkIndex(length, 'length');
    checkIndex(desc.size, 'descriptor size');
    if (!Buffer.isBuffer(buf)) throw new RegfsError('INVALID_ARGUMENT', 'read needs a Buffer to fill');
    if (length > buf.length) throw new RegfsError('INVALID_ARGUMENT', `read length ${length} exceeds the buffer's ${buf.length} bytes`);
    const { counters } = this.ctx;
    if (offset >= desc.size || length === 0) {
      counters.hits++;
      return 0;
    }
    const n = Math.min(length, desc.size - offset);
    return this.operation(digest, async () => {
      const { bytes, fetched } = await this.readBytes(this.partials.fetcher(repo, desc, digest), buf, offset, n);
      if (fetched) counters.misses++;
      else counters.hits++;
      counters.bytesServed += bytes;
      return bytes;
    });
  }

  /**
   * readFromMemory is read()'s synchronous fast path: the bytes of a complete, verified blob that a recent
   * chunk holds, or of a partial blob that a fetch just brought, copied without a promise (a warm sequential read is one FUSE round trip per 128 KiB, and
   * each promise hop is a large part of its cost). undefined when read() must serve it.
   */
  readFromMemory(repo: ReadableRepository, desc: Descriptor, buf: Buffer, offset: number, length: number): number | undefined {
    const { ctx } = this;
    if (ctx.closed || length === 0 || length > buf.length || offset < 0 || offset >= desc.size) return undefined;
    const digest = desc.digest as Digest;
    if (ctx.isPoisoned(digest)) return undefined;
    const n = Math.min(length, desc.size - offset);
    const entry = this.blobs.get(digest);
    if (entry) {
      if (entry.size !== desc.size || !this.blobs.readFromMemory(entry, buf, offset, n)) return undefined;
    } else {
      // A partial blob (lazy verify, large): bytes a range fetch just brought.
      const p = this.partials.get(digest);
      if (!p || p.size !== desc.size || ctx.opts.verify !== 'lazy' || ctx.streaming(digest)) return undefined;
      if (!this.partials.fetcher(repo, desc, digest).readPartialFromMemory(p, buf, offset, n)) return undefined;
    }
    ctx.counters.hits++;
    ctx.counters.bytesServed += n;
    return n;
  }

  /** ensureBlob makes sure the complete, verified blob is cached (single flight) and returns its path. */
  async ensureBlob(repo: ReadableRepository, desc: Descriptor): Promise<string> {
    this.ctx.assertOpen();
    const digest = parseDigest(desc.digest);
    checkIndex(desc.size, 'descriptor size');
    return this.operation(digest, async () => {
      const fetcher = this.partials.fetcher(repo, desc, digest);
      for (let attempt = 0; attempt < 8; attempt++) {
        this.ctx.throwIfPoisoned(digest);
        const entry = this.blobs.get(digest);
        if (entry) {
          this.ctx.checkSize(entry.size, desc);
          if (await this.verifier.ensureVerified(entry)) {
            entry.lastAccess = this.ctx.tick();
            entry.touched = true;
            return entry.path;
          }
          continue;
        }
        if (this.ctx.streaming(digest)) throw new RegfsError('IO', `blob ${digest} (${desc.size} bytes) does not fit in the cache file system (it is only streamed through)`);
        await fetcher.fill();
      }
      throw new RegfsError('IO', `blob ${digest}: could not be cached (it kept disappearing)`);
    });
  }

  /**
   * openBlob streams a blob from its start (image layers: TOC pass and file extraction). A complete cached
   * blob is read from its (verified) file. Otherwise, with cacheFirst, the blob is cached whole first
   * (ensureBlob); without, it is fetched whole into the cache while its bytes are passed on as they
   * arrive (the stream ends only once the cached blob matched its digest, and errors otherwise). A blob
   * the cache file system cannot hold is streamed from the registry, verified at its end.
   */
  async openBlob(repo: ReadableRepository, desc: Descriptor, opts: { cacheFirst: boolean }): Promise<OpenedBlob> {
    this.ctx.assertOpen();
    const digest = parseDigest(desc.digest);
    checkIndex(desc.size, 'descriptor size');
    this.ctx.throwIfPoisoned(digest);
    // fetchBlob's whole-blob stream errors at its end unless the bytes match (the ReadableRepository contract).
    const through = async (): Promise<OpenedBlob> => ({ stream: await repo.fetchBlob(desc), verifiedFirst: false });
    const cached = this.blobs.has(digest);
    if (!cached && (this.ctx.streaming(digest) || (await this.tooLargeToCache(desc, digest)))) return through();
    if (cached || opts.cacheFirst) {
      try {
        return { stream: await this.openComplete(repo, desc), verifiedFirst: true };
      } catch (err) {
        if (this.ctx.streaming(digest)) return through();
        throw err;
      }
    }
    return { stream: teeFill((tap) => this.operation(digest, () => this.partials.fetcher(repo, desc, digest).fill(tap)), () => this.openComplete(repo, desc)), verifiedFirst: false };
  }

  /** openComplete opens the complete, verified cached blob (caching it first) as a stream. */
  private async openComplete(repo: ReadableRepository, desc: Descriptor): Promise<Readable> {
    // Pinned from the fetch to the open, so an eviction check after the fetch cannot take it first; the open
    // descriptor then reads it even if it is evicted.
    this.pin(desc.digest);
    try {
      for (let attempt = 0; attempt < 4; attempt++) {
        const file = await this.ensureBlob(repo, desc);
        try {
          const fh = await fsp.open(file, 'r');
          return fh.createReadStream({ highWaterMark: MiB });
        } catch (err) {
          if (errnoOf(err) !== 'ENOENT') throw ioError(`cannot open cached blob ${file}`, err);
        }
      }
    } finally {
      this.unpin(desc.digest);
    }
    throw new RegfsError('IO', `blob ${desc.digest}: could not be opened from the cache (it kept disappearing)`);
  }

  /** has tells whether the complete blob is cached. */
  async has(digest: Digest): Promise<boolean> {
    return this.blobs.exists(parseDigest(digest));
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
    this.ctx.assertOpen();
    const d = parseDigest(digest);
    const entry = this.blobs.get(d);
    if (!entry) return false;
    return this.operation(d, () => this.verifier.rehash(entry));
  }

  /**
   * evict removes least-recently-used, unpinned, idle entries (complete blobs and partial blobs) until the
   * cache holds at most `maxSize` bytes (default: the cache's maxSize) and the file system has minFreeBytes
   * free. It also ends digest-mismatch back-offs, so the next read of such a blob starts over.
   */
  async evict(opts: { maxSize?: number } = {}): Promise<EvictResult> {
    this.ctx.assertOpen();
    const limit = nonNegative(opts.maxSize, this.ctx.opts.maxSize, 'maxSize');
    this.ctx.clearPoison();
    return this.evictor.evict(limit);
  }

  /** stats returns counters and the current size of the cache. */
  stats(): CacheStats {
    return {
      ...this.ctx.counters,
      blobs: this.blobs.count,
      bytesOnDisk: this.blobs.bytes() + this.partials.bytes() + this.layerTocs.sideStore.bytes(),
      partials: this.partials.count,
      imageBytes: this.layerTocs.sideStore.bytes(),
    };
  }

  /** idle resolves once no fetch, read-ahead, promotion or eviction is in flight (tests and orderly shutdown use it). */
  async idle(): Promise<void> {
    for (;;) {
      const work = [...this.ctx.backgroundWork(), ...this.partials.work()];
      const busy = this.ctx.backgroundBusy() || this.partials.fetching();
      await Promise.allSettled(work);
      if (!busy && !this.ctx.backgroundBusy()) return;
    }
  }

  /** close stops fetches in flight (keeping what was written), persists range maps, closes files and releases the lock. */
  close(): Promise<void> {
    this.closing ??= this.shutdown();
    return this.closing;
  }

  // ---------------------------------------------------------------------------------------------
  // reading

  private async readBytes(fetcher: BlobFetcher, buf: Buffer, offset: number, n: number): Promise<{ bytes: number; fetched: boolean }> {
    const { desc, digest } = fetcher;
    const { opts } = this.ctx;
    let fetched = false;
    for (let attempt = 0; attempt < 8; attempt++) {
      this.ctx.assertOpen();
      this.ctx.throwIfPoisoned(digest);
      const entry = this.blobs.get(digest);
      if (entry) {
        this.ctx.checkSize(entry.size, desc);
        if (await this.verifier.ensureVerified(entry)) {
          const got = await this.blobs.read(entry, buf, offset, n);
          if (got !== undefined) return { bytes: got, fetched };
        }
        continue; // corrupt or vanished: fetch again
      }
      if (this.ctx.streaming(digest) || (await this.tooLargeToCache(desc, digest))) {
        if (!this.ctx.canStream(desc.size)) {
          throw new RegfsError('IO', `blob ${digest} (${desc.size} bytes) does not fit in the cache file system, and --verify strict serves no byte before the whole blob is verified`);
        }
        return { bytes: await this.streamer.read(fetcher.repo, desc, digest, buf, offset, n), fetched: true };
      }
      try {
        if (opts.verify === 'strict' || desc.size <= opts.smallBlobThreshold) {
          fetched = true;
          await fetcher.fill();
          continue;
        }
        const r = await fetcher.readPartial(buf, offset, n);
        fetched ||= r.fetched;
        if (r.bytes !== undefined) return { bytes: r.bytes, fetched };
      } catch (err) {
        if (noSpace(err) && this.ctx.streaming(digest)) continue; // the cache filled up: read it through
        throw err;
      }
    }
    throw new RegfsError('IO', `blob ${digest}: could not be read from the cache (it kept disappearing)`);
  }

  /**
   * tooLargeToCache tells, before a blob's first byte is written, whether the cache's file system cannot
   * hold it even with everything the cache holds evicted; such a blob is read through (the decision is
   * remembered for the retry back-off, then made afresh). A blob already partly cached is not asked.
   */
  private async tooLargeToCache(desc: Descriptor, digest: Digest): Promise<boolean> {
    const p = this.partials.get(digest);
    if (p && !p.dead) return false;
    let free: number;
    try {
      const s = await fsp.statfs(this.layout.root);
      free = s.bavail * s.bsize;
    } catch {
      return false;
    }
    if (desc.size <= free + this.stats().bytesOnDisk) return false;
    this.ctx.streamFor(digest, this.ctx.opts.retryBackoffMs, `blob is ${desc.size} bytes, more than the cache file system can hold (${free} bytes free)`);
    return true;
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
    await this.blobs.load();
    await this.partials.load();
  }

  private async shutdown(): Promise<void> {
    this.ctx.closed = true;
    this.partials.abortAll();
    this.streamer.abortAll();
    // Reads and ensureBlob calls in flight fail fast now (their fetches are aborted); wait for them,
    // and for promotions and evictions already running, so no file is touched after close.
    while (this.operations.size > 0) await Promise.allSettled([...this.operations]);
    await this.idle();
    await this.evictor.settled();
    await this.layerTocs.close();
    await this.partials.persistAll();
    await this.ctx.fds.closeAll();
    await this.blobs.recordAccessTimes();
    await this.blobs.recordVerified();
    await this.lock?.release();
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

  private evictable(digest: Digest): boolean {
    return !this.pins.has(digest) && !this.active.has(digest);
  }
}

/*
 * Partial blobs and fetches: sparse files under partial/ filled by range fetches (with read-ahead),
 * whole verified fetches through ingest/, and promotion of a fully fetched partial blob into blobs/.
 * A BlobFetcher is made per (repository, descriptor) and binds its source once, as rclone binds the
 * source when it creates a downloader; the PartialBlobs store outlives it and is shared by all.
 *
 * Ordering rules:
 * - At most one fill (whole fetch or gap filling) of a digest runs at a time (single flight): the first
 *   caller's repository serves it, later callers wait for it.
 * - Range fetches of one partial blob never overlap: PartialBlob.plan() only returns spans no task covers.
 * - Promotion (finalize) runs once per partial blob: it drains the fetches, verifies, and adds the entry
 *   to CompleteBlobs before it retires the partial, so readers woken by the retirement find the blob.
 * - A partial blob is `dead` once discarded or retired; every path re-checks `dead` after each await and
 *   starts over (the caller loops) instead of touching its files.
 * - Nothing starts a fetch after close() began; close() aborts whole fetches first, then range fetches.
 */
import { promises as fsp, constants as C } from 'node:fs';
import path from 'node:path';
import type { Descriptor } from '../registry/descriptor.js';
import type { Digest } from '../registry/digest.js';
import type { ReadableRepository } from '../registry/storage.js';
import { RegfsError, errorMessage, ioError } from '../util/errors.js';
import { fdatasyncFile, fsyncDir } from '../util/fs-atomic.js';
import { abortable } from './abortable.js';
import { noSpace, unanswered, type CacheContext } from './cache-context.js';
import { checkPartial } from './blob-verify.js';
import type { CompleteBlobs } from './complete-blobs.js';
import { tapped, type FillTap } from './fill-tap.js';
import { ingestBlob } from './ingest.js';
import { closedError, PartialBlob } from './partial-blob.js';
import { readRangeMap, trustworthy } from './range-map-file.js';
import { RangeSet, type ByteSpan } from './range-set.js';
import { ReadAhead } from './read-ahead.js';
import { SingleFlight } from './single-flight.js';
import { statCount, statEnd, statStart } from '../util/read-stats.js';

const MiB = 1024 * 1024;
/** STREAM_AFTER_ENOSPC_MS is how long a blob whose fetch hit a full cache file system is read through without caching. */
export const STREAM_AFTER_ENOSPC_MS = 30_000;
/** PERSIST_INTERVAL_MS is how often a partial blob's range map is rewritten while its fetches stream on. */
const PERSIST_INTERVAL_MS = 1000;

function hexAlgorithm(hex: string): 'sha256' | 'sha512' | undefined {
  if (/^[a-f0-9]{64}$/.test(hex)) return 'sha256';
  if (/^[a-f0-9]{128}$/.test(hex)) return 'sha512';
  return undefined;
}

/** PartialBlobs holds a cache's partial blobs and the fetches in flight, and makes per-blob fetchers. */
export class PartialBlobs {
  private readonly partials = new Map<Digest, PartialBlob>();
  private readonly fills = new SingleFlight<Digest, void>();
  private readonly wholeFetches = new Set<AbortController>();
  /** splitDistance is the gap above which one read's missing ranges are fetched separately. */
  readonly splitDistance: number;

  constructor(
    /** ctx is the cache's shared state. */
    readonly ctx: CacheContext,
    /** blobs receives promoted and wholly fetched blobs. */
    readonly blobs: CompleteBlobs,
    /** maybeEvict asks for an eviction check after the cache grew. */
    readonly maybeEvict: () => void,
  ) {
    this.splitDistance = Math.max(2 * ctx.opts.readAheadStart, 4 * MiB);
  }

  /** fetcher returns a fetcher of one blob from one repository. */
  fetcher(repo: ReadableRepository, desc: Descriptor, digest: Digest): BlobFetcher {
    return new BlobFetcher(this, repo, desc, digest);
  }

  /** get returns the partial blob of a digest, if any. */
  get(d: Digest): PartialBlob | undefined {
    return this.partials.get(d);
  }

  /** values iterates the partial blobs. */
  values(): IterableIterator<PartialBlob> {
    return this.partials.values();
  }

  /** count is the number of partial blobs. */
  get count(): number {
    return this.partials.size;
  }

  /** bytes sums the fetched bytes of the partial blobs. */
  bytes(): number {
    let n = 0;
    for (const p of this.partials.values()) n += p.ranges.covered();
    return n;
  }

  /** partialFor returns the live partial blob of a digest, creating an empty one. */
  partialFor(desc: Descriptor, digest: Digest): PartialBlob {
    const existing = this.partials.get(digest);
    if (existing && !existing.dead) {
      this.ctx.checkSize(existing.size, desc);
      return existing;
    }
    const p = this.newPartial(digest, desc.size, new RangeSet(), this.ctx.tick());
    this.partials.set(digest, p);
    return p;
  }

  private newPartial(digest: Digest, size: number, ranges: RangeSet, lastAccess: number): PartialBlob {
    const { layout, opts, fds, counters } = this.ctx;
    const dataPath = layout.partialPath(digest);
    const key = `p:${digest}`;
    return new PartialBlob(digest, size, ranges, new ReadAhead(opts.readAheadStart, opts.readAheadMax), {
      dataPath,
      mapPath: layout.rangeMapPath(digest),
      open: () => fds.acquire(key, () => fsp.open(dataPath, C.O_RDWR | C.O_CREAT | C.O_NOFOLLOW, 0o600)),
      onBytes: (bytes) => {
        counters.bytesFetched += bytes;
      },
      onWritten: (start, bufs) => {
        let at = start;
        for (const b of bufs) {
          this.ctx.recent.add(digest, at, b);
          at += b.length;
        }
      },
    }, lastAccess);
  }

  /** fill runs fn as the one fill of a digest (single flight). */
  fill(digest: Digest, fn: () => Promise<void>): Promise<void> {
    return this.fills.run(digest, fn);
  }

  /** wholeFetch registers a whole fetch's controller until `run` settles, so close() can abort it. */
  async wholeFetch<T>(controller: AbortController, run: () => Promise<T>): Promise<T> {
    this.wholeFetches.add(controller);
    try {
      return await run();
    } finally {
      this.wholeFetches.delete(controller);
    }
  }

  /**
   * afterFetch persists the range map (unsynced, at most once a second while fetches stream on), promotes
   * a now-complete blob, and checks the cache size.
   */
  async afterFetch(p: PartialBlob): Promise<void> {
    if (p.dead) return;
    try {
      if (p.tasks.size === 0 || Date.now() - p.lastPersist >= PERSIST_INTERVAL_MS) await p.persist();
    } catch (err) {
      this.ctx.log.warn('cannot persist range map', { digest: p.digest, error: errorMessage(err) });
    }
    if (!this.ctx.closed && !p.dead && p.tasks.size === 0 && p.isComplete()) {
      await this.finalize(p).catch(() => undefined); // failures are logged and remembered by finalize
    }
    this.maybeEvict();
  }

  /** finalize verifies a complete partial blob (single flight) and promotes it to blobs/, or discards it on mismatch. */
  finalize(p: PartialBlob): Promise<void> {
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
    const mismatch = await checkPartial(this.ctx, p);
    if (mismatch) {
      this.ctx.poison(p.digest, mismatch);
      await this.discard(p, mismatch);
      throw mismatch;
    }
    // Promote: the entry goes into blobs/ before the partial is retired, so woken readers find it.
    await p.freeze();
    const dest = this.ctx.layout.blobPath(p.digest);
    try {
      await fsp.rename(p.dataPath, dest);
      await fsyncDir(path.dirname(dest));
    } catch (err) {
      const e = ioError(`cannot move verified blob ${p.digest} into place`, err);
      await this.discard(p, e);
      throw e;
    }
    this.blobs.add({ digest: p.digest, size: p.size, path: dest, lastAccess: Math.max(p.lastAccess, this.ctx.tick()), verified: true, touched: true });
    // The fetch's spans in memory would overlap the 1 MiB chunks complete-blob reads keep: drop them.
    this.ctx.recent.drop(p.digest);
    if (this.partials.get(p.digest) === p) this.partials.delete(p.digest);
    this.ctx.fds.drop(`p:${p.digest}`);
    await p.retire();
    await fsp.rm(this.ctx.layout.rangeMapPath(p.digest), { force: true }).catch(() => undefined);
    // Make it durable in the background: no reader waits for the disk. A blob cut short by a power loss
    // is still safe: after a restart every blob is hashed before its first byte is served.
    this.ctx.track(fdatasyncFile(dest));
    this.maybeEvict();
  }

  /** discard stops a partial blob's fetches, rejects its waiters with `err` (or lets them start over) and deletes its files. */
  async discard(p: PartialBlob, err?: RegfsError): Promise<void> {
    this.ctx.recent.drop(p.digest);
    await p.retire(err);
    this.ctx.recent.drop(p.digest);
    if (this.partials.get(p.digest) === p) this.partials.delete(p.digest);
    this.ctx.fds.drop(`p:${p.digest}`);
    await Promise.all([
      fsp.rm(this.ctx.layout.partialPath(p.digest), { force: true }),
      fsp.rm(this.ctx.layout.rangeMapPath(p.digest), { force: true }),
    ]).catch((e: unknown) => this.ctx.log.warn('cannot delete partial blob files', { digest: p.digest, error: errorMessage(e) }));
  }

  /** work returns what idle() waits for: fills, fetch drains and promotions in flight. */
  work(): Array<Promise<unknown>> {
    const work: Array<Promise<unknown>> = [this.fills.settled()];
    for (const p of this.partials.values()) {
      work.push(p.drain());
      if (p.finalizing) work.push(p.finalizing);
    }
    return work;
  }

  /** fetching tells whether any range fetch is in flight. */
  fetching(): boolean {
    return [...this.partials.values()].some((p) => p.tasks.size > 0);
  }

  /** abortAll aborts every whole fetch, then every range fetch (keeping what was written). */
  abortAll(): void {
    for (const c of this.wholeFetches) c.abort();
    for (const p of this.partials.values()) p.abortAll();
  }

  /** persistAll stops hashing and writes every live range map durably (at close). */
  async persistAll(): Promise<void> {
    for (const p of this.partials.values()) {
      p.stopHashing(); // the hash worker closes its file
      if (p.dead) continue;
      await p.persist(true).catch((err: unknown) => this.ctx.log.warn('cannot persist range map', { digest: p.digest, error: errorMessage(err) }));
    }
  }

  /** load reloads partial/ range maps, deleting leftovers it cannot trust; complete blobs must be loaded first. */
  async load(): Promise<void> {
    const { layout } = this.ctx;
    const names = new Set(await fsp.readdir(layout.partial));
    for (const name of names) {
      const file = path.join(layout.partial, name);
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
    const dataFile = this.ctx.layout.partialPath(digest);
    const drop = async (why: string): Promise<void> => {
      if (why) this.ctx.log.warn('discarding partial blob', { digest, reason: why });
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
}

/** BlobFetcher fetches one blob from one repository into the cache: by ranges into its partial blob, or whole. */
export class BlobFetcher {
  constructor(
    private readonly store: PartialBlobs,
    /** repo is the source every fetch of this fetcher uses. */
    readonly repo: ReadableRepository,
    /** desc is the blob fetched. */
    readonly desc: Descriptor,
    /** digest is desc.digest, parsed. */
    readonly digest: Digest,
  ) {}

  /** readPartial serves a large blob from its sparse file, fetching missing ranges (plus read-ahead); bytes is undefined when the caller must start over. */
  async readPartial(buf: Buffer, offset: number, n: number): Promise<{ bytes?: number; fetched: boolean }> {
    const { store, digest } = this;
    const p = store.partialFor(this.desc, digest);
    p.lastAccess = store.ctx.tick();
    const end = offset + n;
    const window = p.readAhead.advance(offset, end);
    let fetched = false;
    for (let round = 0; ; round++) {
      store.ctx.assertOpen();
      if (p.dead) return { fetched };
      if (p.finalizing || p.isComplete()) {
        await store.finalize(p);
        return { fetched };
      }
      const spans = p.plan(offset, end, window, store.splitDistance, store.ctx.opts.readStreams);
      // Later rounds (a fetch settled while this read waited) plan again: streams that finished ahead of a
      // waiting reader are replaced at once instead of when the reader moves on.
      for (const s of spans) this.startFetch(p, s);
      if (p.ranges.has(offset, end)) break;
      fetched = true;
      const t0 = statStart();
      // The bytes memory holds from offset on (written by a fetch) go first; the rest come from the fetches.
      const served = await p.waitFor(offset, end, buf, store.ctx.recent.readPrefix(digest, offset, buf, n));
      statEnd('partial.wait-range', t0, n);
      if (served) {
        // Copied from the fetch's stream as it arrived; the file gets the same bytes when the write lands.
        statCount('partial.from-stream');
        return { bytes: n, fetched };
      }
      if (round > 10_000) throw new RegfsError('IO', `blob ${digest}: range fetches keep settling without the bytes arriving`);
    }
    if (p.isComplete()) {
      // This read completed the blob: it waits for the verification, so corrupt content fails it.
      await store.finalize(p);
      return { fetched };
    }
    if (store.ctx.recent.read(digest, offset, buf, n)) {
      statCount('partial.from-memory');
      return { bytes: n, fetched };
    }
    try {
      const t0 = statStart();
      const bytes = await p.read(buf, offset, n);
      statEnd('partial.file-read', t0, bytes);
      return { bytes, fetched };
    } catch (err) {
      if (p.dead) return { fetched };
      throw ioError(`cannot read partial blob ${digest}`, err);
    }
  }

  /**
   * readPartialFromMemory is readPartial's synchronous fast path: bytes present and still in memory
   * (a fetch just brought them), with the same read-ahead bookkeeping; false when readPartial must serve.
   * A read of a blob that is complete goes the slow way, which waits for its verification.
   */
  readPartialFromMemory(p: PartialBlob, buf: Buffer, offset: number, n: number): boolean {
    const { store, digest } = this;
    const end = offset + n;
    if (p.dead || p.finalizing || p.isComplete() || !p.ranges.has(offset, end)) return false;
    if (!store.ctx.recent.read(digest, offset, buf, n)) return false;
    p.lastAccess = store.ctx.tick();
    const window = p.readAhead.advance(offset, end);
    for (const s of p.plan(offset, end, window, store.splitDistance, store.ctx.opts.readStreams)) this.startFetch(p, s);
    statCount('partial.from-memory-sync');
    return true;
  }

  /**
   * fill caches the complete blob (single flight): gaps of an existing partial by ranges, else one whole
   * verified fetch; `tap`, when this call runs the whole fetch, sees its bytes as they are written.
   */
  fill(tap?: FillTap): Promise<void> {
    const { store, desc } = this;
    const digest = desc.digest;
    return store.fill(digest, async () => {
      if (store.blobs.has(digest)) return;
      const p = store.get(digest);
      // A partial with bytes present or on their way (a read may return before its fetch's bytes are
      // written) is completed by ranges: a whole fetch would bring those bytes twice.
      if (p && !p.dead && (p.ranges.covered() > 0 || p.tasks.size > 0)) {
        store.ctx.checkSize(p.size, desc);
        await this.fillPartial(p);
        return;
      }
      await this.fetchWhole(tap);
    });
  }

  private async fillPartial(p: PartialBlob): Promise<void> {
    for (;;) {
      if (p.dead) return;
      if (p.finalizing || p.isComplete()) {
        await this.store.finalize(p);
        return;
      }
      for (const s of p.plan(0, p.size, 0, Infinity)) this.startFetch(p, s);
      await p.waitFor(0, p.size);
    }
  }

  private startFetch(p: PartialBlob, span: ByteSpan): void {
    const { store, repo, desc } = this;
    const { ctx } = store;
    const task = p.startFetch(span, (s, signal) => repo.fetchBlob(desc, { start: s.start, end: s.end }, signal));
    ctx.track(
      task.done
        .catch(async (err: unknown) => {
          if (ctx.closed || p.dead) return;
          ctx.log.debug('range fetch failed', { digest: p.digest, start: span.start, end: span.end, error: errorMessage(err) });
          if (unanswered(err) || (noSpace(err) && !ctx.canStream(p.size))) ctx.poison(p.digest, err as RegfsError, ctx.opts.retryBackoffMs);
          if (noSpace(err)) {
            // A full file system: give the space back instead of keeping a sparse file nobody can complete,
            // and read the blob through without caching it for a while (its waiters start over).
            ctx.log.warn('cache file system is full; discarding the partially fetched blob', { digest: p.digest, cache: ctx.layout.root });
            if (ctx.canStream(p.size)) ctx.streamFor(p.digest, STREAM_AFTER_ENOSPC_MS, 'the cache file system is full');
            await store.discard(p, err as RegfsError);
          }
        })
        .then(() => store.afterFetch(p)),
    );
  }

  private async fetchWhole(tap?: FillTap): Promise<void> {
    const { store, repo, desc } = this;
    const { ctx } = store;
    const digest = desc.digest;
    const controller = new AbortController();
    const dest = ctx.layout.blobPath(digest);
    await store.wholeFetch(controller, async () => {
      try {
        const src = await abortable(repo.fetchBlob(desc, undefined, controller.signal), controller.signal);
        controller.signal.addEventListener('abort', () => src.destroy(), { once: true });
        await ingestBlob(
          tap ? tapped(src, tap) : src,
          desc,
          ctx.layout.ingest,
          dest,
          (bytes) => {
            ctx.counters.bytesFetched += bytes;
          },
          // A tapped fetch (the TOC pass) trusts fetchBlob's own digest check (the ReadableRepository contract).
          { durable: !tap, sourceVerifies: tap !== undefined },
        );
      } catch (err) {
        if (controller.signal.aborted) throw closedError(digest);
        const e = ioError(`fetch of blob ${digest}`, err);
        if (e.code === 'DIGEST_MISMATCH' || e.code === 'SIZE_MISMATCH') {
          ctx.log.warn('digest mismatch: discarding fetched blob', { expected: digest, error: e.message });
          ctx.poison(digest, e);
        } else if (noSpace(e) && ctx.canStream(desc.size)) {
          ctx.streamFor(digest, STREAM_AFTER_ENOSPC_MS, 'the cache file system is full');
        } else if (unanswered(e) || noSpace(e)) ctx.poison(digest, e, ctx.opts.retryBackoffMs);
        throw e;
      }
    });
    // A tapped fetch (an image layer's TOC pass, which someone waits for) skips the fsyncs: the blob is
    // synced at close, before verified.json may vouch for it; after a crash it is hashed again before use.
    store.blobs.add({ digest, size: desc.size, path: dest, lastAccess: ctx.tick(), verified: true, touched: true, unsynced: tap !== undefined });
    const stale = store.get(digest);
    if (stale) ctx.track(store.discard(stale));
    store.maybeEvict();
  }
}

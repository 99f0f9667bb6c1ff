/*
 * Eviction: least-recently-used removal of complete and partial blobs, and of side stores' files (image
 * TOCs and extracted files), down to the size limit and the free-space floor.
 *
 * Ordering rules:
 * - Evictions run one at a time (a promise chain); evict() and the automatic checks queue on it.
 * - maybeEvict() coalesces: while a check runs, further requests only set a flag and the running check
 *   looks once more, so a burst of fetches costs one statfs, not one per fetch.
 * - Victims are chosen from a snapshot, then each is rechecked just before removal: a blob pinned, read
 *   or (for a partial) fetched or being promoted since the snapshot is skipped.
 * - Nothing is evicted once close() has begun; close() waits for the chain.
 */
import { promises as fsp } from 'node:fs';
import type { Digest } from '../registry/digest.js';
import { errorMessage } from '../util/errors.js';
import type { PartialBlobs } from './blob-fetch.js';
import type { CacheContext } from './cache-context.js';
import type { CompleteBlobs } from './complete-blobs.js';

/** EvictionCandidate is one removable cache entry: its key, bytes on disk and last access time (ms). */
export interface EvictionCandidate {
  key: string;
  bytes: number;
  lastAccess: number;
}

/**
 * chooseVictims picks least-recently-used candidates until the cache total is at most `maxSize` and at
 * least `mustFree` bytes are freed; candidates must already exclude pinned and busy entries.
 */
export function chooseVictims(candidates: readonly EvictionCandidate[], total: number, maxSize: number, mustFree: number): EvictionCandidate[] {
  const sorted = [...candidates].sort((a, b) => a.lastAccess - b.lastAccess);
  const out: EvictionCandidate[] = [];
  let left = total;
  let freed = 0;
  for (const c of sorted) {
    if (left <= maxSize && freed >= mustFree) break;
    out.push(c);
    left -= c.bytes;
    freed += c.bytes;
  }
  return out;
}

/**
 * SideStore is a set of rebuildable files kept beside the blobs (image TOCs and extracted files): counted
 * in the cache's size and evicted with the blobs, least recently used first.
 */
export interface SideStore {
  /** bytes is what the store holds on disk. */
  bytes(): number;
  /** candidates lists the removable entries now (busy ones left out), keys unique within the store. */
  candidates(): EvictionCandidate[];
  /** remove deletes one entry and returns the bytes freed (0 when it became busy or is gone). */
  remove(key: string): Promise<number>;
}

/** EvictResult says how many entries and bytes an eviction removed. */
export interface EvictResult {
  evicted: number;
  bytes: number;
}

/** Evictor runs a cache's evictions, one at a time. */
export class Evictor {
  private chain: Promise<unknown> = Promise.resolve();
  private check?: Promise<void>;
  private again = false;

  constructor(
    private readonly ctx: CacheContext,
    private readonly blobs: CompleteBlobs,
    private readonly partials: PartialBlobs,
    /** evictable tells whether a digest is neither pinned nor in use. */
    private readonly evictable: (digest: Digest) => boolean,
    /** bytesOnDisk returns the cache's current size (side stores included). */
    private readonly bytesOnDisk: () => number,
    /** sides are the side stores evicted with the blobs. */
    private readonly sides: readonly SideStore[] = [],
  ) {}

  /** maybeEvict starts a background check (coalesced) that evicts when the cache is over its size or the disk is low. */
  maybeEvict(): void {
    const { ctx } = this;
    if (ctx.closed) return;
    if (this.check) {
      this.again = true;
      return;
    }
    const run = async (): Promise<void> => {
      do {
        this.again = false;
        const over = this.bytesOnDisk() > ctx.opts.maxSize;
        const low = ctx.opts.minFreeBytes > 0 && (await this.freeBytes()) < ctx.opts.minFreeBytes;
        if ((over || low) && !ctx.closed) await this.evict(ctx.opts.maxSize);
      } while (this.again && !ctx.closed);
    };
    const p = run()
      .catch((err: unknown) => ctx.log.warn('eviction failed', { error: errorMessage(err) }))
      .finally(() => {
        this.check = undefined;
      });
    this.check = p;
    ctx.track(p);
  }

  /** evict queues one eviction down to `limit` bytes (and the free-space floor) and returns what it removed. */
  evict(limit: number): Promise<EvictResult> {
    const run = this.chain.then(() => this.evictNow(limit));
    this.chain = run.catch(() => undefined);
    return run;
  }

  /** settled resolves once the evictions queued now have finished. */
  settled(): Promise<unknown> {
    return this.chain;
  }

  private async evictNow(limit: number): Promise<EvictResult> {
    const { ctx, blobs, partials } = this;
    const free = ctx.opts.minFreeBytes > 0 ? await this.freeBytes() : Infinity;
    const mustFree = Math.max(0, ctx.opts.minFreeBytes - free);
    const candidates: EvictionCandidate[] = [];
    for (const e of blobs.values()) {
      if (this.evictable(e.digest)) candidates.push({ key: `b:${e.digest}`, bytes: e.size, lastAccess: e.lastAccess });
    }
    for (const p of partials.values()) {
      if (this.evictable(p.digest) && p.tasks.size === 0 && !p.finalizing && !p.dead) {
        candidates.push({ key: `p:${p.digest}`, bytes: p.ranges.covered(), lastAccess: p.lastAccess });
      }
    }
    this.sides.forEach((s, i) => {
      for (const c of s.candidates()) candidates.push({ ...c, key: `s${i}:${c.key}` });
    });
    const victims = chooseVictims(candidates, this.bytesOnDisk(), limit, mustFree);
    let evicted = 0;
    let bytes = 0;
    for (const v of victims) {
      if (v.key.startsWith('s')) {
        const colon = v.key.indexOf(':');
        const freed = await this.sides[Number(v.key.slice(1, colon))]!.remove(v.key.slice(colon + 1));
        if (freed > 0 || v.bytes === 0) {
          bytes += freed;
          evicted++;
          ctx.counters.evictions++;
        }
        continue;
      }
      const digest = v.key.slice(2) as Digest;
      if (!this.evictable(digest)) continue; // pinned or read meanwhile
      if (v.key.startsWith('b:')) {
        const e = blobs.get(digest);
        if (!e) continue;
        await blobs.remove(e);
        bytes += e.size;
      } else {
        const p = partials.get(digest);
        if (!p || p.tasks.size > 0 || p.finalizing || p.dead) continue;
        bytes += p.ranges.covered();
        await partials.discard(p);
      }
      evicted++;
      ctx.counters.evictions++;
    }
    if (evicted > 0) ctx.log.debug('evicted cache entries', { evicted, bytes });
    return { evicted, bytes };
  }

  private async freeBytes(): Promise<number> {
    try {
      const s = await fsp.statfs(this.ctx.layout.root);
      return s.bavail * s.bsize;
    } catch {
      return Infinity;
    }
  }
}

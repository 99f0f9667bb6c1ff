/*
 * Complete blobs: the in-memory index of whole blobs under blobs/ and reads from their files.
 *
 * Ordering rules:
 * - An entry is in the index only while its file is believed to be in blobs/. Whoever finds the file
 *   gone or short forgets the entry before anything refetches it, so a refetch never races a stale entry.
 * - forget() and remove() compare the entry object, not only the digest: an entry replaced meanwhile (by a
 *   promotion or a whole fetch) is never dropped by a late caller still holding the old one.
 * - A read holds an FdPool lease on `b:DIGEST`; forget() drops the key and the pool closes the fd only
 *   after the last lease is released, so no read has its fd closed under it.
 * - Nothing here checks content: callers pass an entry through BlobVerifier.ensureVerified first.
 * - verified.json is written at close (after every fdatasync and access time) and deleted at load, before
 *   anything is served: it lists the verified blobs with (inode, size, mtime, ctime) in nanoseconds. A blob
 *   whose file still has exactly those is loaded verified; any write to it since changes its ctime, so it
 *   is hashed again. Files whose ctime is under CTIME_SETTLE_MS old are left out: a write in the same
 *   coarse clock tick could keep the ctime. A crash leaves no list, so the next start hashes everything.
 */
import { promises as fsp, constants as C } from 'node:fs';
import path from 'node:path';
import { isDigest, type Digest } from '../registry/digest.js';
import { errnoOf, errorMessage, ioError } from '../util/errors.js';
import { fdatasyncFile, fsyncDir, writeFileAtomic } from '../util/fs-atomic.js';
import type { CacheContext } from './cache-context.js';
import { statCount, statEnd, statStart } from '../util/read-stats.js';

/** CHUNK is the unit large reads of a complete blob are read in (and kept in memory for the next reads). */
const CHUNK = 1024 * 1024;
/** MAX_SPARE_CHUNKS bounds the recycled chunk buffers kept. */
const MAX_SPARE_CHUNKS = 8;
/** PREFETCH_CHUNKS is how many chunks past a large read are read ahead into memory. */
const PREFETCH_CHUNKS = 4;
/** CHUNK_MIN_REQUEST: smaller requests (random reads) read only their own bytes. */
const CHUNK_MIN_REQUEST = 64 * 1024;

/** CTIME_SETTLE_MS: blobs changed more recently than this are not listed as verified at close. */
const CTIME_SETTLE_MS = 25;

/** VerifiedList is verified.json: digest → [inode, size, mtimeNs, ctimeNs] as decimal strings. */
interface VerifiedList {
  version: 1;
  blobs: Record<string, [string, string, string, string]>;
}

function fileKey(st: { ino: bigint; size: bigint; mtimeNs: bigint; ctimeNs: bigint }): [string, string, string, string] {
  return [String(st.ino), String(st.size), String(st.mtimeNs), String(st.ctimeNs)];
}

/** BlobEntry is one complete blob file in blobs/. */
export interface BlobEntry {
  digest: Digest;
  size: number;
  path: string;
  lastAccess: number;
  /** verified is true once this process hashed the file (or wrote it verified). */
  verified: boolean;
  /** touched is true once this process used it (its access time is written back at close). */
  touched?: boolean;
  /** unsynced: written without fsync (an image layer's TOC pass); synced at close before it is listed verified. */
  unsynced?: boolean;
}

/** CompleteBlobs indexes a cache's complete blobs and reads from them through the shared fd pool. */
export class CompleteBlobs {
  private readonly entries = new Map<Digest, BlobEntry>();
  /** chunkLoads are the chunk reads in flight (the kernel sends neighbouring reads in parallel). */
  private readonly chunkLoads = new Map<string, Promise<Buffer | undefined>>();
  /** spare holds full-size chunk buffers evicted from memory, for the next chunk reads. */
  private readonly spare: Buffer[] = [];
  private readonly recycle = (b: Buffer): void => {
    if (b.length === CHUNK && this.spare.length < MAX_SPARE_CHUNKS) this.spare.push(b);
  };

  constructor(private readonly ctx: CacheContext) {}

  /** get returns the entry of a digest, if indexed. */
  get(d: Digest): BlobEntry | undefined {
    return this.entries.get(d);
  }

  /** has tells whether a digest is indexed (without looking at the disk). */
  has(d: Digest): boolean {
    return this.entries.has(d);
  }

  /** add indexes a complete blob file (replacing any entry of its digest). */
  add(entry: BlobEntry): void {
    this.entries.set(entry.digest, entry);
  }

  /** values iterates the indexed entries. */
  values(): IterableIterator<BlobEntry> {
    return this.entries.values();
  }

  /** count is the number of indexed blobs. */
  get count(): number {
    return this.entries.size;
  }

  /** bytes sums the sizes of the indexed blobs. */
  bytes(): number {
    let n = 0;
    for (const e of this.entries.values()) n += e.size;
    return n;
  }

  /** exists tells whether a digest is indexed and its file is still there (forgetting it when not). */
  async exists(d: Digest): Promise<boolean> {
    const entry = this.entries.get(d);
    if (!entry) return false;
    try {
      const st = await fsp.lstat(entry.path);
      if (st.isFile()) return true;
    } catch {
      /* gone */
    }
    if (this.entries.get(d) === entry) this.forget(entry);
    return false;
  }

  /**
   * read serves a complete blob's bytes: from memory when a recent chunk holds them, else by one read of
   * the 1 MiB-aligned chunks around a large request (kept in memory for the reads that follow) or of just
   * a small one. undefined when the file vanished or is short (it is then forgotten).
   */
  async read(entry: BlobEntry, buf: Buffer, offset: number, n: number): Promise<number | undefined> {
    const { recent } = this.ctx;
    if (recent.read(entry.digest, offset, buf, n)) statCount('complete.from-memory');
    else {
      if (n < CHUNK_MIN_REQUEST) {
        if (!(await this.readFile(entry, buf, offset, n))) return undefined;
      } else {
        const start = Math.floor(offset / CHUNK) * CHUNK;
        const end = Math.min(entry.size, Math.ceil((offset + n) / CHUNK) * CHUNK);
        const chunk = await this.chunk(entry, start, end);
        if (!chunk) return undefined;
        chunk.copy(buf, 0, offset - start, offset - start + n);
      }
    }
    if (n >= CHUNK_MIN_REQUEST) this.prefetch(entry, offset + n);
    entry.lastAccess = this.ctx.tick();
    entry.touched = true;
    return n;
  }

  /**
   * readFromMemory serves a verified blob's bytes synchronously when a recent chunk holds all of them
   * (a sequential reader of a cached blob, after the first chunk), with the bookkeeping read() does;
   * false when they are not in memory (then read() is the way).
   */
  readFromMemory(entry: BlobEntry, buf: Buffer, offset: number, n: number): boolean {
    if (!entry.verified || !this.ctx.recent.read(entry.digest, offset, buf, n)) return false;
    statCount('complete.from-memory-sync');
    if (n >= CHUNK_MIN_REQUEST) this.prefetch(entry, offset + n);
    entry.lastAccess = this.ctx.tick();
    entry.touched = true;
    return true;
  }

  /** chunk returns the bytes [start, end) of a blob, reading them once however many reads ask at the same time. */
  private chunk(entry: BlobEntry, start: number, end: number): Promise<Buffer | undefined> {
    const key = `${entry.digest}:${start}:${end}`;
    let load = this.chunkLoads.get(key);
    if (load) statCount('complete.chunk-shared');
    else {
      load = this.loadChunk(entry, start, end).finally(() => this.chunkLoads.delete(key));
      this.chunkLoads.set(key, load);
    }
    return load;
  }

  /**
   * prefetch reads the PREFETCH_CHUNKS chunks after a large read into memory in the background, so a
   * sequential reader finds them there instead of waiting for a thread-pool read per chunk.
   */
  private prefetch(entry: BlobEntry, from: number): void {
    const first = Math.ceil(from / CHUNK) * CHUNK;
    for (let k = 0; k < PREFETCH_CHUNKS; k++) {
      const start = first + k * CHUNK;
      if (start >= entry.size) return;
      if (this.ctx.recent.holds(entry.digest, start)) continue;
      const end = Math.min(entry.size, start + CHUNK);
      if (this.chunkLoads.has(`${entry.digest}:${start}:${end}`)) continue;
      statCount('complete.prefetch');
      this.ctx.track(this.chunk(entry, start, end));
    }
  }

  private async loadChunk(entry: BlobEntry, start: number, end: number): Promise<Buffer | undefined> {
    const t0 = statStart();
    // Full chunks reuse buffers evicted from memory: fresh 1 MiB buffers cost page faults in the read
    // and garbage collection after it (measured: a third of a warm-cache read's main-thread time).
    const chunk = (end - start === CHUNK ? this.spare.pop() : undefined) ?? Buffer.allocUnsafe(end - start);
    if (!(await this.readFile(entry, chunk, start, chunk.length))) return undefined;
    statEnd('complete.chunk-read', t0, chunk.length);
    if (this.entries.get(entry.digest) === entry) this.ctx.recent.add(entry.digest, start, chunk, this.recycle);
    return chunk;
  }

  /** readFile fills buf[0..n) from the blob file at offset; false when the file vanished or is short (then forgotten). */
  private async readFile(entry: BlobEntry, buf: Buffer, offset: number, n: number): Promise<boolean> {
    const { fds, log } = this.ctx;
    let lease;
    const t0 = statStart();
    try {
      lease = await fds.acquire(`b:${entry.digest}`, () => fsp.open(entry.path, C.O_RDONLY | C.O_NOFOLLOW));
    } catch (err) {
      if (errnoOf(err) === 'ENOENT' || errnoOf(err) === 'ELOOP') {
        log.warn('cached blob vanished from disk; fetching it again', { digest: entry.digest });
        this.forget(entry);
        return false;
      }
      throw ioError(`cannot open cached blob ${entry.path}`, err);
    }
    statEnd('complete.fd-acquire', t0);
    try {
      let got = 0;
      while (got < n) {
        const { bytesRead } = await lease.fh.read(buf, got, n - got, offset + got);
        if (bytesRead === 0) break;
        got += bytesRead;
      }
      if (got < n) {
        log.warn('cached blob is shorter than its size; deleting it', { digest: entry.digest, size: entry.size });
        await this.remove(entry);
        return false;
      }
      return true;
    } catch (err) {
      throw ioError(`cannot read cached blob ${entry.path}`, err);
    } finally {
      lease.release();
    }
  }

  /** remove forgets an entry and deletes its file. */
  async remove(entry: BlobEntry): Promise<void> {
    this.forget(entry);
    await fsp.rm(entry.path, { force: true }).catch((err: unknown) => this.ctx.log.warn('cannot delete cached blob', { path: entry.path, error: errorMessage(err) }));
  }

  /** forget drops an entry (if still the indexed one) and its pooled fd, leaving the file alone. */
  forget(entry: BlobEntry): void {
    if (this.entries.get(entry.digest) === entry) this.entries.delete(entry.digest);
    this.ctx.recent.drop(entry.digest);
    this.ctx.fds.drop(`b:${entry.digest}`);
  }

  /** load indexes blobs/ (verified only when verified.json vouches for the unchanged file), deleting hidden leftovers and symlinks. */
  async load(): Promise<void> {
    const { layout, log } = this.ctx;
    const vouched = await this.takeVerifiedList();
    for (const algDir of layout.algorithmDirs()) {
      const alg = path.basename(algDir);
      for (const name of await fsp.readdir(algDir)) {
        const file = path.join(algDir, name);
        const st = await fsp.lstat(file, { bigint: true }).catch(() => undefined);
        if (!st) continue;
        const digest = `${alg}:${name}`;
        if (!isDigest(digest) || !st.isFile()) {
          if (name.startsWith('.') || st.isSymbolicLink()) await fsp.rm(file, { force: true });
          else log.warn('ignoring unexpected file in cache', { path: file });
          continue;
        }
        const key = vouched?.[digest];
        const verified = key !== undefined && fileKey(st).every((v, i) => v === key[i]);
        this.entries.set(digest, { digest, size: Number(st.size), path: file, lastAccess: Math.max(Number(st.atimeMs), Number(st.mtimeMs)), verified });
      }
    }
  }

  /** recordAccessTimes writes in-memory LRU times back as file times, so the next open seeds eviction order from them. */
  async recordAccessTimes(): Promise<void> {
    for (const e of this.entries.values()) {
      if (!e.touched) continue;
      const t = e.lastAccess / 1000;
      await fsp.lutimes(e.path, t, t).catch(() => undefined);
    }
  }

  /** recordVerified lists the verified blobs in verified.json (last at close, after recordAccessTimes: see the ordering rules). */
  async recordVerified(): Promise<void> {
    const verified = [...this.entries.values()].filter((e) => e.verified);
    if (verified.length === 0) return;
    // Access times just changed ctimes: let the clock move past them (coarse timestamps), so any later
    // write to a listed file gets a different ctime.
    await new Promise((r) => setTimeout(r, CTIME_SETTLE_MS + 5));
    const list: VerifiedList = { version: 1, blobs: {} };
    const settled = BigInt(Date.now() - CTIME_SETTLE_MS) * 1_000_000n;
    for (const e of verified) {
      if (e.unsynced && !(await fdatasyncFile(e.path).then(() => true, () => false))) continue;
      e.unsynced = false;
      const st = await fsp.lstat(e.path, { bigint: true }).catch(() => undefined);
      if (!st || !st.isFile() || Number(st.size) !== e.size || st.ctimeNs > settled) continue;
      list.blobs[e.digest] = fileKey(st);
    }
    await writeFileAtomic(this.ctx.layout.verified, JSON.stringify(list), 0o600, { durable: true }).catch((err: unknown) =>
      this.ctx.log.warn('cannot record verified blobs; the next start hashes them again', { error: errorMessage(err) }),
    );
  }

  /** takeVerifiedList reads and deletes verified.json (so a crash before the next close leaves none). */
  private async takeVerifiedList(): Promise<VerifiedList['blobs'] | undefined> {
    const file = this.ctx.layout.verified;
    let text: string;
    try {
      text = await fsp.readFile(file, 'utf8');
    } catch {
      return undefined;
    }
    await fsp.rm(file, { force: true });
    await fsyncDir(this.ctx.layout.root).catch(() => undefined);
    try {
      const v = JSON.parse(text) as VerifiedList;
      if (v.version !== 1 || typeof v.blobs !== 'object' || v.blobs === null) return undefined;
      return v.blobs;
    } catch {
      return undefined;
    }
  }
}

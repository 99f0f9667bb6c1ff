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
 */
import { promises as fsp, constants as C } from 'node:fs';
import path from 'node:path';
import { isDigest, type Digest } from '../registry/digest.js';
import { errnoOf, errorMessage, ioError } from '../util/errors.js';
import type { CacheContext } from './cache-context.js';

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
}

/** CompleteBlobs indexes a cache's complete blobs and reads from them through the shared fd pool. */
export class CompleteBlobs {
  private readonly entries = new Map<Digest, BlobEntry>();

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

  /** read reads from a complete blob's pooled fd; undefined when the file vanished or is short (it is then forgotten). */
  async read(entry: BlobEntry, buf: Buffer, offset: number, n: number): Promise<number | undefined> {
    const { fds, log } = this.ctx;
    let lease;
    try {
      lease = await fds.acquire(`b:${entry.digest}`, () => fsp.open(entry.path, C.O_RDONLY | C.O_NOFOLLOW));
    } catch (err) {
      if (errnoOf(err) === 'ENOENT' || errnoOf(err) === 'ELOOP') {
        log.warn('cached blob vanished from disk; fetching it again', { digest: entry.digest });
        this.forget(entry);
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
        log.warn('cached blob is shorter than its size; deleting it', { digest: entry.digest, size: entry.size });
        await this.remove(entry);
        return undefined;
      }
      entry.lastAccess = this.ctx.tick();
      entry.touched = true;
      return got;
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
    this.ctx.fds.drop(`b:${entry.digest}`);
  }

  /** load indexes blobs/ (unverified), deleting hidden leftovers and symlinks. */
  async load(): Promise<void> {
    const { layout, log } = this.ctx;
    for (const algDir of layout.algorithmDirs()) {
      const alg = path.basename(algDir);
      for (const name of await fsp.readdir(algDir)) {
        const file = path.join(algDir, name);
        const st = await fsp.lstat(file).catch(() => undefined);
        if (!st) continue;
        const digest = `${alg}:${name}`;
        if (!isDigest(digest) || !st.isFile()) {
          if (name.startsWith('.') || st.isSymbolicLink()) await fsp.rm(file, { force: true });
          else log.warn('ignoring unexpected file in cache', { path: file });
          continue;
        }
        this.entries.set(digest, { digest, size: st.size, path: file, lastAccess: Math.max(st.atimeMs, st.mtimeMs), verified: false });
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
}

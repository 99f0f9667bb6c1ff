import { createHash, type Hash } from 'node:crypto';
import { digestAlgorithm, type Digest } from '../registry/digest.js';
import type { FdLease } from './fd-pool.js';
import type { FileDigest } from './hash-file.js';

const HASH_CHUNK = 1024 * 1024;

/**
 * PrefixHasher hashes a sparse file's contiguous prefix [0, prefixEnd()) while the rest is still
 * downloading, so verifying a sequentially fetched blob costs little once its last byte lands. In-order
 * writes are hashed from the buffers just written; other bytes are read back from the file (1 MiB at a
 * time). A write landing inside the hashed prefix starts it over, so the digest always describes the
 * file's final bytes.
 */
export class PrefixHasher {
  private hash: Hash;
  private hashed = 0;
  private generation = 0;
  private running?: Promise<void>;
  private stopped = false;

  constructor(
    private readonly like: Digest,
    private readonly prefixEnd: () => number,
    private readonly open: () => Promise<FdLease>,
  ) {
    this.hash = createHash(digestAlgorithm(like));
  }

  /**
   * written is told about every write to the file, with the buffers written: a write that continues the
   * hashed prefix is hashed from memory at once; one that hits hashed bytes restarts the hash; after a gap
   * fills, the hasher catches up by reading the file.
   */
  written(start: number, bufs: readonly Buffer[]): void {
    if (this.stopped) return;
    if (start < this.hashed) this.reset();
    else if (start === this.hashed && !this.running) {
      for (const b of bufs) {
        this.hash.update(b);
        this.hashed += b.length;
      }
    }
    this.kick();
  }

  /** stop ends background hashing for good. */
  stop(): void {
    this.stopped = true;
    this.generation++;
  }

  /** result waits until [0, size) is hashed and returns the digest; undefined when the prefix does not reach size. */
  async result(size: number): Promise<FileDigest | undefined> {
    for (;;) {
      if (this.running) await this.running;
      if (this.stopped) return undefined;
      if (this.hashed >= size) {
        this.stopped = true;
        return { digest: `${digestAlgorithm(this.like)}:${this.hash.digest('hex')}` as Digest, size: this.hashed };
      }
      if (this.prefixEnd() <= this.hashed) return undefined;
      this.kick();
    }
  }

  private reset(): void {
    this.generation++;
    this.hash = createHash(digestAlgorithm(this.like));
    this.hashed = 0;
  }

  private kick(): void {
    if (this.running || this.stopped || this.prefixEnd() <= this.hashed) return;
    this.running = this.catchUp()
      .catch(() => this.reset()) // a read error: the final verification hashes the file from scratch
      .finally(() => {
        this.running = undefined;
      });
  }

  private async catchUp(): Promise<void> {
    const lease = await this.open();
    try {
      const buf = Buffer.allocUnsafe(HASH_CHUNK);
      for (;;) {
        const target = this.prefixEnd();
        if (this.stopped || this.hashed >= target) return;
        const gen = this.generation;
        const at = this.hashed;
        const { bytesRead } = await lease.fh.read(buf, 0, Math.min(buf.length, target - at), at);
        if (gen !== this.generation) continue; // restarted meanwhile: what was read is stale
        if (bytesRead === 0) return;
        this.hash.update(buf.subarray(0, bytesRead));
        this.hashed = at + bytesRead;
      }
    } finally {
      lease.release();
    }
  }
}

import type { Digest } from '../registry/digest.js';
import type { FileDigest } from './hash-service.js';
import { hashService } from './hash-service.js';

/** ADVANCE_STEP is how far the written prefix grows before the hashing worker is told about it. */
const ADVANCE_STEP = 4 * 1024 * 1024;

/**
 * PrefixHasher hashes a sparse file's contiguous written prefix [0, prefixEnd()) while the rest is still
 * downloading, so verifying a sequentially fetched blob costs little once its last byte lands. The
 * hashing runs in the hash worker thread, which reads the bytes back from the file; the main thread
 * only says how far the prefix reaches. A write landing inside the prefix already handed over starts
 * the hash over, so the digest always describes the file's final bytes.
 */
export class PrefixHasher {
  private readonly id = hashService.newJob();
  /** told is the prefix end the worker was last given. */
  private told = 0;
  private stopped = false;

  constructor(
    private readonly like: Digest,
    private readonly path: string,
    private readonly prefixEnd: () => number,
  ) {}

  /** written is told about every write to the file, by its first byte. */
  written(start: number): void {
    if (this.stopped) return;
    if (start < this.told) {
      hashService.reset(this.id);
      this.told = 0;
    }
    const prefix = this.prefixEnd();
    if (prefix >= this.told + ADVANCE_STEP) {
      this.told = prefix;
      hashService.advance(this.id, this.path, this.like, prefix);
    }
  }

  /** stop ends background hashing for good. */
  stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    hashService.stop(this.id);
  }

  /** result returns the digest of [0, size); undefined when the prefix does not reach size (or hashing failed: the caller hashes the file itself). */
  async result(size: number): Promise<FileDigest | undefined> {
    if (this.stopped || this.prefixEnd() < size) return undefined;
    this.stopped = true;
    try {
      return await hashService.result(this.id, this.path, this.like, size);
    } catch {
      return undefined;
    }
  }
}

/*
 * Verification: hashing complete blobs before this process first serves them, and checking a fully
 * fetched partial blob before it is promoted.
 *
 * Ordering rules:
 * - At most one hash of a digest runs at a time (single flight); concurrent callers share its answer.
 * - A hash runs in a worker thread and never blocks the event loop; the entry is marked verified only
 *   when the digest and size match, and the answer is true only if that entry is still the indexed one
 *   (it may have been evicted or replaced while the worker ran).
 * - A mismatch deletes the file before the answer is returned, so a caller that starts over refetches.
 */
import type { Digest } from '../registry/digest.js';
import { RegfsError, errnoOf, ioError } from '../util/errors.js';
import type { CacheContext } from './cache-context.js';
import type { BlobEntry, CompleteBlobs } from './complete-blobs.js';
import { hashFileInWorker } from './hash-service.js';
import type { PartialBlob } from './partial-blob.js';
import { SingleFlight } from './single-flight.js';
import { statEnd, statStart } from '../util/read-stats.js';

/** BlobVerifier hashes complete cached blobs (single flight per digest). */
export class BlobVerifier {
  private readonly verifications = new SingleFlight<Digest, boolean>();

  constructor(
    private readonly ctx: CacheContext,
    private readonly blobs: CompleteBlobs,
  ) {}

  /** ensureVerified hashes a complete blob the first time this process uses it; false when it was corrupt (and is now deleted). */
  async ensureVerified(entry: BlobEntry): Promise<boolean> {
    if (entry.verified) return this.blobs.get(entry.digest) === entry;
    return this.rehash(entry);
  }

  /** rehash hashes a complete blob even when it was verified before; false when it was corrupt (and is now deleted). */
  rehash(entry: BlobEntry): Promise<boolean> {
    return this.verifications.run(entry.digest, () => this.hashEntry(entry));
  }

  private async hashEntry(entry: BlobEntry): Promise<boolean> {
    let got;
    const t0 = statStart();
    try {
      got = await hashFileInWorker(entry.path, entry.digest);
      statEnd('verify.complete-blob', t0, entry.size);
    } catch (err) {
      if (errnoOf(err) === 'ENOENT' || errnoOf(err) === 'ELOOP') {
        this.blobs.forget(entry);
        return false;
      }
      throw ioError(`cannot verify cached blob ${entry.path}`, err);
    }
    if (got.digest === entry.digest && got.size === entry.size) {
      entry.verified = true;
      return this.blobs.get(entry.digest) === entry;
    }
    this.ctx.log.warn('cached blob does not match its digest (altered on disk); deleting it', { expected: entry.digest, actual: got.digest, size: got.size });
    await this.blobs.remove(entry);
    return false;
  }
}

/**
 * checkPartial hashes a partial blob whose every byte is present and returns the DIGEST_MISMATCH error
 * to fail it with, or undefined when its content matches its digest and size (logging a mismatch).
 */
export async function checkPartial(ctx: CacheContext, p: PartialBlob): Promise<RegfsError | undefined> {
  let got;
  try {
    got = await p.computeDigest();
  } catch (err) {
    throw ioError(`cannot verify partial blob ${p.digest}`, err);
  }
  if (got.digest === p.digest && got.size === p.size) return undefined;
  ctx.log.warn('digest mismatch: discarding fetched ranges', { expected: p.digest, actual: got.digest });
  return new RegfsError(
    'DIGEST_MISMATCH',
    `blob ${p.digest}: fetched bytes hash to ${got.digest} (${got.size} bytes); discarded, reads fail for a short back-off, then fetch it again`,
  );
}

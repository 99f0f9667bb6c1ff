import { createHash, type Hash } from 'node:crypto';
import { RegfsError } from '../util/errors.js';

/** Digest is a validated `algorithm:hex` content identifier. */
export type Digest = `sha256:${string}` | `sha512:${string}`;

const DIGEST_RE = /^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$/;

/** isDigest tells whether s is a digest regfs can verify (sha256 or sha512, lowercase hex, exact length). */
export function isDigest(s: unknown): s is Digest {
  return typeof s === 'string' && DIGEST_RE.test(s);
}

/** parseDigest validates s against the digest grammar before it touches a path or URL. */
export function parseDigest(s: unknown, what = 'digest'): Digest {
  if (isDigest(s)) return s;
  const shown = typeof s === 'string' ? JSON.stringify(s.slice(0, 80)) : typeof s;
  throw new RegfsError('INVALID_DIGEST', `invalid ${what} ${shown}: expected sha256:<64 lowercase hex> or sha512:<128 lowercase hex>`);
}

/** digestAlgorithm returns the hash algorithm name of a digest. */
export function digestAlgorithm(d: Digest): 'sha256' | 'sha512' {
  return d.startsWith('sha512:') ? 'sha512' : 'sha256';
}

/** digestHex returns the hex part of a digest. */
export function digestHex(d: Digest): string {
  return d.slice(d.indexOf(':') + 1);
}

/** shortDigest returns the first 12 hex characters, as ORAS prints them. */
export function shortDigest(d: Digest): string {
  return digestHex(d).slice(0, 12);
}

/** digestOf hashes bytes with sha256, or with the given algorithm. */
export function digestOf(data: Uint8Array | string, algorithm: 'sha256' | 'sha512' = 'sha256'): Digest {
  return `${algorithm}:${createHash(algorithm).update(data).digest('hex')}` as Digest;
}

/** Verifier hashes bytes as they pass and checks them against an expected digest and size. */
export class Verifier {
  private readonly hash: Hash;
  /** bytes counts what has been written so far. */
  bytes = 0;

  constructor(readonly expected: Digest, readonly expectedSize: number) {
    this.hash = createHash(digestAlgorithm(expected));
  }

  /** update adds a chunk; it throws at once when the chunk runs past the expected size. */
  update(chunk: Uint8Array): void {
    this.bytes += chunk.length;
    if (this.bytes > this.expectedSize) {
      throw new RegfsError('SIZE_MISMATCH', `content for ${this.expected} is longer than its descriptor size ${this.expectedSize}`);
    }
    this.hash.update(chunk);
  }

  /** verify checks the final size and digest; it throws DIGEST_MISMATCH naming both digests. */
  verify(): void {
    if (this.bytes !== this.expectedSize) {
      throw new RegfsError('SIZE_MISMATCH', `content for ${this.expected} has ${this.bytes} bytes, descriptor says ${this.expectedSize}`);
    }
    const actual = `${digestAlgorithm(this.expected)}:${this.hash.digest('hex')}`;
    if (actual !== this.expected) {
      throw new RegfsError('DIGEST_MISMATCH', `digest mismatch: expected ${this.expected}, got ${actual}`);
    }
  }
}

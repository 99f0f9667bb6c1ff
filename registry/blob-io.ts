import { createHash, type Hash } from 'node:crypto';
import { Readable } from 'node:stream';
import { finished } from 'node:stream/promises';
import { Verifier, type Digest } from './digest.js';
import { RegfsError } from '../util/errors.js';
import type { Descriptor } from './descriptor.js';

/**
 * verifying wraps a stream of a whole blob so it errors at the end (or as soon as it runs long) when
 * the bytes do not match `desc`. It is pull-based: nothing flows, and no error can fire, before a consumer reads.
 */
export function verifying(src: Readable, desc: Descriptor): Readable {
  return passThrough(src, (v: Verifier | undefined) => v ?? new Verifier(desc.digest, desc.size), (v, chunk) => v.update(chunk), (v) => v.verify());
}

/**
 * passThrough maps a stream through per-chunk and end-of-stream hooks as a lazy async generator, so
 * errors surface to whoever consumes it (never as an unhandled 'error' event) and the source is
 * destroyed when the consumer stops early.
 */
export function passThrough<S>(src: Readable, init: (s: S | undefined) => S, onChunk: (s: S, chunk: Buffer) => void, onEnd?: (s: S) => void): Readable {
  return Readable.from(
    (async function* () {
      const state = init(undefined);
      try {
        for await (const c of src) {
          const chunk = typeof c === 'string' ? Buffer.from(c) : (c as Buffer);
          onChunk(state, chunk);
          yield chunk;
        }
        onEnd?.(state);
      } finally {
        if (!src.destroyed) src.destroy();
      }
    })(),
    { objectMode: false },
  );
}

/** Hashed is a stream being hashed as it is read; `result` is valid once the stream has ended. */
export interface Hashed {
  stream: Readable;
  result(): { digest: Digest; size: number };
  /**
   * settled is result() once the stream has ended: a transport may see the server's answer (all the
   * announced bytes sent) before the source's end is read, so this drains what is left (at most EOF);
   * when the transport destroyed the stream after the announced bytes, it is their digest.
   */
  settled(): Promise<{ digest: Digest; size: number }>;
  /** failure is the size error the stream raised, if any (a transport may wrap it in its own error). */
  failure(): RegfsError | undefined;
}

/**
 * hashing wraps a stream so its sha256 and length are computed as it is consumed; with `size` it
 * errors as soon as the bytes run long, and at the end when they run short.
 */
export function hashing(src: Readable, size?: number): Hashed {
  let done: { digest: Digest; size: number } | undefined;
  // allSent is the digest of exactly `size` bytes, taken when the last announced byte passed: a transport
  // that has sent Content-Length bytes may get its answer and destroy the body before the source's EOF is
  // read, and the registry then holds exactly these bytes (the closing PUT names this digest and the
  // registry checks it against what it received, so bytes buffered here but never sent fail there).
  let allSent: { digest: Digest; size: number } | undefined;
  let failed: RegfsError | undefined;
  const fail = (msg: string): never => {
    failed = new RegfsError('SIZE_MISMATCH', msg);
    throw failed;
  };
  const stream = passThrough(
    src,
    (s: { h: Hash; n: number } | undefined) => s ?? { h: createHash('sha256'), n: 0 },
    (s, chunk) => {
      s.n += chunk.length;
      if (size !== undefined && s.n > size) fail(`upload source is longer than the ${size} bytes announced (did the file change?)`);
      s.h.update(chunk);
      if (size !== undefined && s.n === size) allSent = { digest: `sha256:${s.h.copy().digest('hex')}`, size };
    },
    (s) => {
      if (size !== undefined && s.n !== size) fail(`upload source has ${s.n} bytes, ${size} were announced (did the file change?)`);
      done = { digest: `sha256:${s.h.digest('hex')}`, size: s.n };
    },
  );
  return {
    stream,
    result: () => {
      if (!done) throw new RegfsError('IO', 'upload stream ended before it was read to the end');
      return done;
    },
    settled: async () => {
      if (!done && !failed && !stream.destroyed) {
        const ended = finished(stream, { readable: true, writable: false }).catch(() => undefined);
        stream.resume();
        await ended;
      }
      if (failed) throw failed;
      const got = done ?? allSent;
      if (!got) throw new RegfsError('IO', 'upload stream ended before it was read to the end');
      return got;
    },
    failure: () => failed,
  };
}

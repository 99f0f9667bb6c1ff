/** Streams of blob byte ranges: skip a prefix, pass exactly n bytes, resume a broken download with a Range from where it stopped. */
import { Readable } from 'node:stream';
import type { Descriptor } from './descriptor.js';
import { RegfsError } from '../util/errors.js';

/** RangeOpener opens one blob GET for [start, end) positioned at `start` (RemoteRepository.openRange). */
export interface RangeOpener {
  openRange(desc: Descriptor, start: number, end: number, signal?: AbortSignal): Promise<Readable>;
}

/** discard drops a response body unread; undici's destroy() emits an error that must not go unhandled. */
export function discard(body: Readable): void {
  body.on('error', () => undefined);
  body.destroy();
}

/** skip drops the first n bytes of a stream. */
export function skip(src: Readable, n: number): Readable {
  if (n === 0) return src;
  let left = n;
  return Readable.from(
    (async function* () {
      for await (const c of src) {
        const b = c as Buffer;
        if (left >= b.length) {
          left -= b.length;
          continue;
        }
        yield left > 0 ? b.subarray(left) : b;
        left = 0;
      }
    })(),
    { objectMode: false },
  );
}

/**
 * limit passes exactly n bytes; fewer is a (resumable) NETWORK error. More is trimmed when the body
 * goes on legitimately (a 200 answer to a Range request); with `exact` the body must end after n bytes,
 * so the last chunk is held back until it does, and trailing bytes are a SIZE_MISMATCH.
 */
export function limit(src: Readable, n: number, what: string, exact: boolean): Readable {
  let got = 0;
  return Readable.from(
    (async function* () {
      try {
        let held: Buffer | undefined;
        for await (const c of src) {
          const b = c as Buffer;
          if (b.length === 0) continue;
          if (got + b.length > n) {
            if (exact) throw new RegfsError('SIZE_MISMATCH', `${what}: registry sent more than the ${n} bytes expected (trailing bytes)`);
            const want = n - got;
            got = n;
            if (want > 0) yield b.subarray(0, want);
            break;
          }
          got += b.length;
          if (exact && got === n) held = b;
          else yield b;
        }
        if (held) yield held;
      } finally {
        if (!src.destroyed) src.destroy();
      }
      if (got < n) throw new RegfsError('NETWORK', `${what}: connection ended after ${got} of ${n} bytes`);
    })(),
    { objectMode: false },
  );
}

/**
 * resuming reads [start, end) of a blob from an already opened first response and, when the
 * connection breaks midway, asks again with a Range from where it stopped (at most 5 times), so a
 * cut never duplicates or loses bytes.
 */
export function resuming(repo: RangeOpener, desc: Descriptor, first: Readable, start: number, end: number, signal?: AbortSignal): Readable {
  return Readable.from(
    (async function* () {
      let pos = start;
      let src = first;
      for (let resumes = 0; ; resumes++) {
        try {
          for await (const c of src) {
            const b = c as Buffer;
            pos += b.length;
            yield b;
          }
          return;
        } catch (err) {
          const retryable = err instanceof RegfsError ? err.code === 'NETWORK' || err.code === 'TIMEOUT' : isConnectionError(err);
          if (!retryable || resumes >= 5 || signal?.aborted || pos >= end) throw err;
          src = await repo.openRange(desc, pos, end, signal);
        }
      }
    })(),
    { objectMode: false },
  );
}

function isConnectionError(err: unknown): boolean {
  const code = (err as { code?: string })?.code ?? '';
  return /^(ECONNRESET|EPIPE|ETIMEDOUT|UND_ERR_SOCKET|UND_ERR_BODY_TIMEOUT|UND_ERR_ABORTED|ERR_STREAM_PREMATURE_CLOSE)$/.test(code) || (err as Error)?.message === 'terminated';
}

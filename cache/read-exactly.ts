import type { Readable } from 'node:stream';
import { RegfsError, type ErrorCode } from '../util/errors.js';

/**
 * readExactly collects a stream that must carry exactly `want` bytes (a range fetch), reading no further
 * than one chunk past it; any other count fails with `code` and destroys the stream.
 */
export async function readExactly(src: Readable, want: number, code: ErrorCode, what: string): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const c of src as AsyncIterable<Buffer>) {
    chunks.push(c);
    n += c.length;
    if (n > want) break;
  }
  if (n !== want) {
    src.destroy();
    throw new RegfsError(code, `${what} returned ${n} bytes, expected ${want}`);
  }
  return Buffer.concat(chunks, n);
}

import type { FileHandle } from 'node:fs/promises';
import { RegfsError } from '../util/errors.js';
import { statEnd, statStart } from '../util/read-stats.js';

/** MAX_BATCH_BUFFERS bounds the buffers of one writev call (well under IOV_MAX). */
const MAX_BATCH_BUFFERS = 256;
/** MAX_BATCH_BYTES bounds one writev call, so waiting readers are woken at least every this many bytes. */
const MAX_BATCH_BYTES = 1024 * 1024;

/** writevAll writes every buffer at `position` onwards, retrying short writes. */
export async function writevAll(fh: FileHandle, bufs: Buffer[], position: number): Promise<void> {
  let list = bufs;
  let pos = position;
  while (list.length > 0) {
    const { bytesWritten } = await fh.writev(list, pos);
    if (bytesWritten === 0) throw new RegfsError('IO', `write at ${pos} made no progress`);
    pos += bytesWritten;
    let skip = bytesWritten;
    const rest: Buffer[] = [];
    for (const b of list) {
      if (skip >= b.length) {
        skip -= b.length;
        continue;
      }
      rest.push(skip > 0 ? b.subarray(skip) : b);
      skip = 0;
    }
    list = rest;
  }
}

/**
 * BatchedWriter writes a stream's chunks to consecutive file positions without a round trip per chunk:
 * the first chunk is written at once, and chunks arriving while a write runs go out together in the
 * next writev. Memory stays bounded: push() returns a promise to await once `maxPending` bytes queue up.
 * onWritten is called with each [start, end) and its buffers as soon as they are on the file.
 */
export class BatchedWriter {
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  /** writingBufs are the buffers of the writev in progress, from writingAt on (not yet reported written). */
  private writingBufs: readonly Buffer[] = [];
  private writingAt = 0;
  private writing = false;
  private idle: Promise<void> = Promise.resolve();
  private error?: unknown;
  /** position is the file offset the next pushed byte goes to. */
  position: number;

  constructor(
    private readonly fh: FileHandle,
    start: number,
    private readonly onWritten: (start: number, end: number, bufs: readonly Buffer[]) => void,
    private readonly maxPending = 8 * 1024 * 1024,
  ) {
    this.position = start;
  }

  /** push queues a chunk; it throws an earlier write error, and returns a promise to await when too much is queued. */
  push(chunk: Buffer): Promise<void> | undefined {
    if (this.error !== undefined) throw this.error;
    if (chunk.length === 0) return undefined;
    this.pending.push(chunk);
    this.pendingBytes += chunk.length;
    this.position += chunk.length;
    this.kick();
    return this.pendingBytes >= this.maxPending ? this.idle : undefined;
  }

  /**
   * copyOut copies the pushed bytes not yet reported written (being written, or queued) from file position
   * `pos` on into dst, where dst[0] is the byte at `dstStart`, up to `dstEnd`; it returns the position after
   * the last byte copied (`pos` when it holds no byte at pos).
   */
  copyOut(pos: number, dst: Buffer, dstStart: number, dstEnd: number): number {
    if (this.error !== undefined) return pos;
    let at = this.writingBufs.length > 0 ? this.writingAt : this.position - this.pendingBytes;
    for (const list of [this.writingBufs, this.pending]) {
      for (const b of list) {
        const bEnd = at + b.length;
        if (pos >= at && pos < bEnd && pos < dstEnd) {
          const upto = Math.min(bEnd, dstEnd);
          b.copy(dst, pos - dstStart, pos - at, upto - at);
          pos = upto;
        }
        at = bEnd;
      }
    }
    return pos;
  }

  /** drain waits until everything pushed is written, and throws the first write error. */
  async drain(): Promise<void> {
    this.kick();
    await this.idle;
    if (this.error !== undefined) throw this.error;
  }

  private kick(): void {
    if (this.writing || this.pending.length === 0) return;
    this.writing = true;
    this.idle = (async () => {
      try {
        while (this.pending.length > 0 && this.error === undefined) {
          let take = 0;
          let n = 0;
          while (take < this.pending.length && take < MAX_BATCH_BUFFERS && (take === 0 || n + this.pending[take]!.length <= MAX_BATCH_BYTES)) {
            n += this.pending[take]!.length;
            take++;
          }
          const bufs = this.pending.splice(0, take);
          this.pendingBytes -= n;
          const at = this.position - this.pendingBytes - n;
          const t0 = statStart();
          this.writingBufs = bufs;
          this.writingAt = at;
          try {
            await writevAll(this.fh, bufs, at);
          } finally {
            this.writingBufs = [];
          }
          statEnd('write.writev', t0, n);
          this.onWritten(at, at + n, bufs);
        }
      } catch (err) {
        this.error = err;
        this.pending = [];
        this.pendingBytes = 0;
      } finally {
        this.writing = false;
      }
    })();
  }
}

import type { Readable } from 'node:stream';
import type { Descriptor } from '../registry/descriptor.js';
import { Verifier } from '../registry/digest.js';
import { RegfsError } from '../util/errors.js';
import { writeAtomic } from '../util/fs-atomic.js';
import { BatchedWriter } from './batched-writer.js';

/** IngestOptions tune ingestBlob. */
export interface IngestOptions {
  /** durable false skips both fsyncs, for a caller that syncs later; default true. */
  durable?: boolean;
  /**
   * sourceVerifies: `src` is a whole-blob stream of ReadableRepository.fetchBlob, which fails at its end
   * unless its bytes match the descriptor (that interface's contract), so only the size is checked here
   * (an image layer's TOC pass, which hashes nothing twice on the main thread); default false.
   */
  sourceVerifies?: boolean;
}

/** SizeCheck is the Verifier of a source that verifies its digest itself: it checks the size only. */
class SizeCheck {
  private bytes = 0;
  constructor(private readonly desc: Descriptor) {}
  update(chunk: Uint8Array): void {
    this.bytes += chunk.length;
    if (this.bytes > this.desc.size) throw new RegfsError('SIZE_MISMATCH', `content for ${this.desc.digest} is longer than its descriptor size ${this.desc.size}`);
  }
  verify(): void {
    if (this.bytes !== this.desc.size) throw new RegfsError('SIZE_MISMATCH', `content for ${this.desc.digest} has ${this.bytes} bytes, descriptor says ${this.desc.size}`);
  }
}

/**
 * ingestBlob streams a whole blob into a fresh temp file under `ingestDir`, verifies it against `desc`
 * as it goes, fsyncs it, renames it to `dest` and fsyncs dest's directory (writeAtomic; `durable` false
 * skips both fsyncs, for a caller that syncs later). On any error
 * (including a digest or size mismatch) the temp file is removed, `dest` is untouched, and the error is rethrown.
 */
export async function ingestBlob(src: Readable, desc: Descriptor, ingestDir: string, dest: string, onChunk?: (bytes: number) => void, opts: IngestOptions = {}): Promise<void> {
  const verifier = opts.sourceVerifies ? new SizeCheck(desc) : new Verifier(desc.digest, desc.size);
  try {
    await writeAtomic(
      dest,
      async (fh) => {
        const writer = new BatchedWriter(fh, 0, (a, b) => onChunk?.(b - a));
        try {
          for await (const c of src) {
            const chunk = typeof c === 'string' ? Buffer.from(c) : (c as Buffer);
            verifier.update(chunk);
            const full = writer.push(chunk);
            if (full) await full;
          }
        } finally {
          await writer.drain().catch(() => undefined); // never close the file under a write in flight
        }
        await writer.drain();
        verifier.verify();
      },
      { tempDir: ingestDir, durable: opts.durable },
    );
  } catch (err) {
    src.destroy();
    throw err;
  }
}

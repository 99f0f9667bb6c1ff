import type { Readable } from 'node:stream';
import type { Descriptor } from '../registry/descriptor.js';
import { Verifier } from '../registry/digest.js';
import { writeAtomic } from '../util/fs-atomic.js';
import { BatchedWriter } from './batched-writer.js';

/**
 * ingestBlob streams a whole blob into a fresh temp file under `ingestDir`, verifies it against `desc`
 * as it goes, fsyncs it, renames it to `dest` and fsyncs dest's directory (writeAtomic; `durable` false
 * skips both fsyncs, for a caller that syncs later). On any error
 * (including a digest or size mismatch) the temp file is removed, `dest` is untouched, and the error is rethrown.
 */
export async function ingestBlob(src: Readable, desc: Descriptor, ingestDir: string, dest: string, onChunk?: (bytes: number) => void, durable = true): Promise<void> {
  const verifier = new Verifier(desc.digest, desc.size);
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
      { tempDir: ingestDir, durable },
    );
  } catch (err) {
    src.destroy();
    throw err;
  }
}

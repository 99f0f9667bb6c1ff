import { randomBytes } from 'node:crypto';
import { promises as fsp, constants as C } from 'node:fs';
import path from 'node:path';
import type { Readable } from 'node:stream';
import type { Descriptor } from '../registry/descriptor.js';
import { digestHex, Verifier } from '../registry/digest.js';
import { fsyncDir } from '../util/fs-atomic.js';
import { BatchedWriter } from './batched-writer.js';

/**
 * ingestBlob streams a whole blob into a fresh temp file under `ingestDir`, verifies it against `desc`
 * as it goes, fsyncs it, renames it to `dest` and fsyncs dest's directory. On any error (including a
 * digest or size mismatch) the temp file is removed, `dest` is untouched, and the error is rethrown.
 */
export async function ingestBlob(src: Readable, desc: Descriptor, ingestDir: string, dest: string, onChunk?: (bytes: number) => void): Promise<void> {
  const tmp = path.join(ingestDir, `${digestHex(desc.digest)}.${randomBytes(6).toString('hex')}`);
  const verifier = new Verifier(desc.digest, desc.size);
  const fh = await fsp.open(tmp, C.O_WRONLY | C.O_CREAT | C.O_EXCL | C.O_NOFOLLOW, 0o600);
  try {
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
    await fh.sync();
    await fh.close();
    await fsp.rename(tmp, dest);
  } catch (err) {
    src.destroy();
    await fh.close().catch(() => undefined);
    await fsp.rm(tmp, { force: true });
    throw err;
  }
  await fsyncDir(path.dirname(dest));
}

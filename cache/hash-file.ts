import { createHash } from 'node:crypto';
import { promises as fsp, constants as C } from 'node:fs';
import { digestAlgorithm, type Digest } from '../registry/digest.js';

const HASH_CHUNK = 1024 * 1024;

/** FileDigest is what hashing a file found: its digest (same algorithm as asked) and its length. */
export interface FileDigest {
  digest: Digest;
  size: number;
}

/** hashFile hashes a file with the algorithm of `like`, reading it in 1 MiB chunks (async, bounded memory, never following a symlink). */
export async function hashFile(file: string, like: Digest): Promise<FileDigest> {
  const alg = digestAlgorithm(like);
  const hash = createHash(alg);
  const buf = Buffer.allocUnsafe(HASH_CHUNK);
  const fh = await fsp.open(file, C.O_RDONLY | C.O_NOFOLLOW);
  let size = 0;
  try {
    for (;;) {
      const { bytesRead } = await fh.read(buf, 0, buf.length, size);
      if (bytesRead === 0) break;
      hash.update(buf.subarray(0, bytesRead));
      size += bytesRead;
    }
  } finally {
    await fh.close();
  }
  return { digest: `${alg}:${hash.digest('hex')}` as Digest, size };
}

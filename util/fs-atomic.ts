import { randomBytes } from 'node:crypto';
import { promises as fsp, constants as C } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import path from 'node:path';

/**
 * writeFileAtomic writes data to a temp file beside `file`, fsyncs it, renames it into place and fsyncs
 * the directory. With `durable: false` it skips both fsyncs: readers still never see a half-written file,
 * but a power loss may lose the new version (for state that is worthless after a reboot anyway).
 */
export async function writeFileAtomic(file: string, data: string | Uint8Array, mode = 0o600, opts: { durable?: boolean } = {}): Promise<void> {
  const durable = opts.durable !== false;
  const dir = path.dirname(file);
  const tmp = path.join(dir, `.${path.basename(file)}.${randomBytes(6).toString('hex')}.tmp`);
  const fh = await fsp.open(tmp, C.O_WRONLY | C.O_CREAT | C.O_EXCL | C.O_NOFOLLOW, mode);
  try {
    await fh.writeFile(data);
    await fh.chmod(mode);
    if (durable) await fh.sync();
  } catch (err) {
    await fh.close();
    await fsp.rm(tmp, { force: true });
    throw err;
  }
  await fh.close();
  try {
    await fsp.rename(tmp, file);
  } catch (err) {
    await fsp.rm(tmp, { force: true });
    throw err;
  }
  if (durable) await fsyncDir(dir);
}

/** fsyncDir flushes a directory entry change (a rename or create) to disk. */
export function fsyncDir(dir: string): Promise<void> {
  return syncPath(dir, C.O_DIRECTORY, (h) => h.sync());
}

/** fdatasyncFile flushes a file's data to disk (never following a symlink). */
export function fdatasyncFile(file: string): Promise<void> {
  return syncPath(file, C.O_NOFOLLOW, (h) => h.datasync());
}

async function syncPath(p: string, flags: number, sync: (h: FileHandle) => Promise<void>): Promise<void> {
  const h = await fsp.open(p, C.O_RDONLY | flags);
  try {
    await sync(h);
  } finally {
    await h.close();
  }
}

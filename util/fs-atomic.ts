import { randomBytes } from 'node:crypto';
import { promises as fsp, constants as C } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';

/** AtomicWriteOptions tune writeAtomic; every field has a default. */
export interface AtomicWriteOptions {
  /** mode is the temp file's creation mode (the umask applies; fill may chmod); default 0o600. */
  mode?: number;
  /**
   * durable: false skips both fsyncs: readers still never see a half-written file, but a power loss may
   * lose the new version (for state that is worthless after a reboot, or files fsynced as a batch); default true.
   */
  durable?: boolean;
  /** tempDir holds the temp file instead of the target's directory; it must be on the same file system (a cache's ingest/). */
  tempDir?: string;
}

/** NAME_MAX_BYTES is the longest file name Linux file systems take (255 bytes). */
const NAME_MAX_BYTES = 255;
const TEMP_OVERHEAD = '.'.length + '.'.length + 12 + '.part'.length;

/** shortenTo cuts a name to at most `max` UTF-8 bytes, on a character boundary. */
function shortenTo(name: string, max: number): string {
  if (Buffer.byteLength(name) <= max) return name;
  let out = '';
  for (const ch of name) {
    if (Buffer.byteLength(out + ch) > max) break;
    out += ch;
  }
  return out;
}

/**
 * tempPathFor returns a hidden, unique temp file name `.<name>.<12 hex>.part` for `file`, in `dir`
 * (default: beside it); a long name is shortened so the temp name still fits in 255 bytes.
 */
export function tempPathFor(file: string, dir = path.dirname(file)): string {
  const name = shortenTo(path.basename(file), NAME_MAX_BYTES - TEMP_OVERHEAD);
  return path.join(dir, `.${name}.${randomBytes(6).toString('hex')}.part`);
}

/**
 * writeAtomic is the one write-temp-then-rename: it creates a temp file (exclusively, never following a
 * symlink) beside `file`, lets `fill` write it, fsyncs it, renames it over `file` and fsyncs the
 * directory. On any error the temp file is removed, `file` is untouched, and the error is rethrown.
 * Only the FileHandle owns the fd, so an error never closes a descriptor twice.
 */
export async function writeAtomic(file: string, fill: (fh: FileHandle) => Promise<void>, opts: AtomicWriteOptions = {}): Promise<void> {
  const durable = opts.durable !== false;
  const tmp = tempPathFor(file, opts.tempDir);
  const fh = await fsp.open(tmp, C.O_WRONLY | C.O_CREAT | C.O_EXCL | C.O_NOFOLLOW, opts.mode ?? 0o600);
  try {
    await fill(fh);
    if (durable) await fh.sync();
    await fh.close();
    await fsp.rename(tmp, file);
  } catch (err) {
    await fh.close().catch(() => undefined);
    await fsp.rm(tmp, { force: true });
    throw err;
  }
  if (durable) await fsyncDir(path.dirname(file));
}

/**
 * writeFileAtomic writes data atomically (writeAtomic) with exactly `mode`. With `durable: false` it
 * skips both fsyncs.
 */
export function writeFileAtomic(file: string, data: string | Uint8Array, mode = 0o600, opts: { durable?: boolean } = {}): Promise<void> {
  return writeAtomic(
    file,
    async (fh) => {
      await fh.writeFile(data);
      await fh.chmod(mode);
    },
    { mode, durable: opts.durable },
  );
}

/**
 * writeStreamAtomic writes a stream atomically (writeAtomic, created with `mode` under the umask); on any
 * error the source is destroyed, the temp file removed and `file` untouched.
 */
export async function writeStreamAtomic(src: Readable, file: string, mode = 0o644): Promise<void> {
  try {
    await writeAtomic(
      file,
      async (fh) => {
        for await (const chunk of src) await writeAll(fh, typeof chunk === 'string' ? Buffer.from(chunk) : (chunk as Buffer));
      },
      { mode },
    );
  } catch (err) {
    src.destroy();
    throw err;
  }
}

/** writeAll writes a whole buffer at the file's current position, looping over short writes. */
export async function writeAll(fh: FileHandle, chunk: Buffer): Promise<void> {
  let off = 0;
  while (off < chunk.length) off += (await fh.write(chunk, off, chunk.length - off)).bytesWritten;
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

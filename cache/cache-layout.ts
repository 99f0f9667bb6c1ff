import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { digestAlgorithm, digestHex, type Digest } from '../registry/digest.js';
import { RegfsError } from '../registry/errors.js';

/** CacheLayout names the files of a cache directory: blobs/<alg>/<hex>, ingest/, partial/<hex>[.ranges.json], lock. */
export class CacheLayout {
  /** blobs holds complete, verified blobs by algorithm. */
  readonly blobs: string;
  /** ingest holds temp files of whole fetches. */
  readonly ingest: string;
  /** partial holds sparse files of blobs being filled by ranges, with their range maps. */
  readonly partial: string;
  /** lock is the one-process-per-directory lock file. */
  readonly lock: string;

  constructor(readonly root: string) {
    this.blobs = path.join(root, 'blobs');
    this.ingest = path.join(root, 'ingest');
    this.partial = path.join(root, 'partial');
    this.lock = path.join(root, 'lock');
  }

  /** blobDir returns the directory of complete blobs of a digest's algorithm. */
  blobDir(d: Digest): string {
    return path.join(this.blobs, digestAlgorithm(d));
  }

  /** blobPath returns where the complete blob of a (validated) digest lives. */
  blobPath(d: Digest): string {
    return path.join(this.blobDir(d), digestHex(d));
  }

  /** partialPath returns the sparse data file of a blob being filled. */
  partialPath(d: Digest): string {
    return path.join(this.partial, digestHex(d));
  }

  /** rangeMapPath returns the range map persisted beside a partial data file. */
  rangeMapPath(d: Digest): string {
    return path.join(this.partial, `${digestHex(d)}.ranges.json`);
  }

  /** algorithmDirs lists the blobs/<alg> directories regfs uses. */
  algorithmDirs(): string[] {
    return [path.join(this.blobs, 'sha256'), path.join(this.blobs, 'sha512')];
  }

  /**
   * prepare creates the directory tree (0700) and refuses to use it when the root or a subdirectory is a
   * symlink or not a directory, is not owned by this user, or is group/world-writable; a directory that
   * is only readable by others is tightened to 0700.
   */
  async prepare(): Promise<void> {
    await fsp.mkdir(path.dirname(this.root), { recursive: true, mode: 0o700 });
    await mkdirChecked(this.root);
    for (const d of [this.blobs, ...this.algorithmDirs(), this.ingest, this.partial]) await mkdirChecked(d);
  }
}

/** mkdirChecked creates dir (0700) unless present, then checks it is a real, private directory owned by us. */
async function mkdirChecked(dir: string): Promise<void> {
  try {
    await fsp.mkdir(dir, { mode: 0o700 });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') {
      throw new RegfsError('IO', `cannot create cache directory ${dir}: ${(err as Error).message}`, { cause: err });
    }
  }
  const st = await fsp.lstat(dir);
  if (st.isSymbolicLink()) throw new RegfsError('UNSAFE_PATH', `cache directory ${dir} is a symlink; refusing to use it (point regfs at the real directory)`);
  if (!st.isDirectory()) throw new RegfsError('UNSAFE_PATH', `cache path ${dir} exists and is not a directory`);
  const uid = process.getuid?.();
  if (uid !== undefined && st.uid !== uid) {
    throw new RegfsError('UNSAFE_PATH', `cache directory ${dir} is owned by uid ${st.uid}, not by this user (uid ${uid}); refusing to use it`);
  }
  if ((st.mode & 0o022) !== 0) {
    throw new RegfsError(
      'UNSAFE_PATH',
      `cache directory ${dir} is group- or world-writable (mode ${(st.mode & 0o777).toString(8).padStart(4, '0')}); run \`chmod 700 ${dir}\``,
    );
  }
  // Readable by others is not unsafe for us, but cached content may be private: tighten it to 0700.
  if ((st.mode & 0o077) !== 0) await fsp.chmod(dir, 0o700);
}

import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { digestAlgorithm, digestHex, type Digest } from '../registry/digest.js';
import { ensurePrivateDir } from '../util/private-dir.js';

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
  /** extracted holds directory layers extracted by the mount (`extracted/<hex>`). */
  readonly extracted: string;
  /** verified records, at close, which complete blob files were verified and unchanged since (cache/complete-blobs.ts). */
  readonly verified: string;
  /** tocs holds image layer TOCs (`tocs/<hex>.json`); files holds their extracted files (`files/<xx>/<sha256 hex>`). */
  readonly tocs: string;
  readonly files: string;

  constructor(readonly root: string) {
    this.blobs = path.join(root, 'blobs');
    this.ingest = path.join(root, 'ingest');
    this.partial = path.join(root, 'partial');
    this.lock = path.join(root, 'lock');
    this.extracted = path.join(root, 'extracted');
    this.verified = path.join(root, 'verified.json');
    this.tocs = path.join(root, 'tocs');
    this.files = path.join(root, 'files');
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
    for (const d of [this.root, this.blobs, ...this.algorithmDirs(), this.ingest, this.partial, this.extracted, this.tocs, this.files]) await ensurePrivateDir(d, 'cache directory');
  }
}

import { createHash, type Hash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { pipeline, Transform, type Readable, type TransformCallback } from 'node:stream';
import { createGunzip } from 'node:zlib';
import tar from 'tar-stream';
import { digestAlgorithm, digestHex, type Digest } from '../registry/digest.js';
import { checkTitle } from '../registry/safe-path.js';
import { RegfsError, isRegfsError } from '../util/errors.js';
import { tempPathFor, writeAll, writeFileAtomic } from '../util/fs-atomic.js';

/*
 * A layer's table of contents (TOC): every entry of an image layer's tar, built once per layer digest by
 * streaming the blob once from the registry while hashing it (nothing is kept unless the digest matches), and kept in the cache directory
 * as `tocs/<hex>.json` (immutable, digest-keyed, shared by every tag, image and repository). Regular files
 * are extracted while the TOC is built into `files/<sha256 of the content>` (content-addressed, written to
 * a temp file and renamed), so a read in an image's rootfs/ is a read of a local, verified file.
 */

/** TocEntry is one kept entry of a layer: a path (checked like a title) and what the tar header said. */
export interface TocEntry {
  /** p is the normalised path (no `./`, no trailing slash). */
  p: string;
  /** t is the type: f file, d directory, l symlink, h hard link (to `l`, a path of this layer). */
  t: 'f' | 'd' | 'l' | 'h';
  /** m is the mode's permission bits (with setuid/setgid/sticky). */
  m: number;
  u: number;
  g: number;
  /** mt is the mtime in ms since the epoch. */
  mt: number;
  /** s is the file size (f; h copies its target's). */
  s?: number;
  /** h is the sha256 hex of the file's content (f; h copies its target's). */
  h?: string;
  /** l is the symlink target as stored, or the hard link's target path (normalised). */
  l?: string;
}

/** LayerToc is the stored TOC of one layer. */
export interface LayerToc {
  v: 1;
  digest: Digest;
  entries: TocEntry[];
  /** hidden counts entries left out (unsafe names, devices, fifos, unknown hard-link targets). */
  hidden: number;
}

/** TocLimits bound what one layer may hold. */
export interface TocLimits {
  maxEntries: number;
  maxTocBytes: number;
}

/** DEFAULT_TOC_LIMITS: 1,000,000 entries, 256 MiB of TOC JSON (REGFS_TOC_MAX_ENTRIES overrides the count). */
export function defaultTocLimits(): TocLimits {
  const env = Number(process.env.REGFS_TOC_MAX_ENTRIES);
  return { maxEntries: Number.isInteger(env) && env > 0 ? env : 1_000_000, maxTocBytes: 256 * 1024 * 1024 };
}

/** LayerCompression is how a layer's tar is stored. */
export type LayerCompression = 'gzip' | 'none' | 'zstd';

/** layerCompression tells from a layer media type how its tar is compressed, or undefined if it is not a tar layer. */
export function layerCompression(mediaType: string): LayerCompression | undefined {
  if (/tar\+gzip$|tar\.gzip$/.test(mediaType)) return 'gzip';
  if (/tar\+zstd$/.test(mediaType)) return 'zstd';
  if (/\.tar$|\.rootfs\.diff\.tar$/.test(mediaType) || mediaType.endsWith('layer.v1.tar')) return 'none';
  return undefined;
}

/** entryName normalises a raw tar name (`./` stripped); '' is the layer root; it throws UNSAFE_PATH. */
function entryName(raw: string): string {
  let n = raw;
  if (n.startsWith('/')) throw new RegfsError('UNSAFE_PATH', `unsafe path ${JSON.stringify(raw.slice(0, 80))}: absolute path`);
  while (n.startsWith('./')) n = n.slice(2);
  if (n === '' || n === '.' || n === './') return '';
  return checkTitle(n);
}

/** LayerTocStore builds, stores and loads layer TOCs and the files extracted with them. */
export class LayerTocStore {
  private readonly building = new Map<string, Promise<LayerToc>>();
  private readonly loaded = new Map<string, LayerToc>();

  constructor(
    readonly tocDir: string,
    readonly filesDir: string,
    private readonly limits: TocLimits = defaultTocLimits(),
    private readonly warn: (msg: string) => void = () => undefined,
  ) {}

  tocPath(d: Digest): string {
    return path.join(this.tocDir, `${digestHex(d)}.json`);
  }

  /** filePath is where a file of a TOC (by content sha256 hex) is kept. */
  filePath(hex: string): string {
    return path.join(this.filesDir, hex.slice(0, 2), hex);
  }

  /**
   * toc returns the layer's TOC, building it (single flight) when it is not stored yet from the stream
   * `open()` gives (the registry's bytes, straight through: hashed while streamed, kept only if they match).
   */
  toc(digest: Digest, compression: LayerCompression, open: () => Promise<Readable>): Promise<LayerToc> {
    const have = this.loaded.get(digest);
    if (have) return Promise.resolve(have);
    let p = this.building.get(digest);
    if (!p) {
      p = (async () => {
        const stored = await this.load(digest);
        if (stored) return stored;
        if (compression === 'zstd') throw new RegfsError('UNSUPPORTED', `layer ${digest} is zstd-compressed, which this Node cannot decompress`);
        const toc = await this.build(await open(), digest, compression);
        const json = JSON.stringify(toc);
        if (json.length > this.limits.maxTocBytes) throw new RegfsError('TOO_LARGE', `layer ${digest} has a TOC of ${json.length} bytes, over the limit of ${this.limits.maxTocBytes}`);
        await fsp.mkdir(this.tocDir, { recursive: true, mode: 0o700 });
        await writeFileAtomic(this.tocPath(digest), json, 0o600, { durable: false });
        return toc;
      })();
      p.then((t) => {
        if (this.loaded.size > 256) this.loaded.clear();
        this.loaded.set(digest, t);
      }, () => undefined).finally(() => this.building.delete(digest));
      this.building.set(digest, p);
    }
    return p;
  }

  private async load(digest: Digest): Promise<LayerToc | undefined> {
    let text: string;
    try {
      text = await fsp.readFile(this.tocPath(digest), 'utf8');
    } catch {
      return undefined;
    }
    try {
      const t = JSON.parse(text) as LayerToc;
      if (t.v === 1 && t.digest === digest && Array.isArray(t.entries)) return t;
    } catch {
      // a torn or foreign file: rebuilt below
    }
    this.warn(`rebuilding unreadable layer TOC ${this.tocPath(digest)}`);
    return undefined;
  }

  /** build streams the layer once: re-hashes the compressed bytes, lists every entry, extracts regular files. */
  async build(src: Readable, digest: Digest, compression: LayerCompression): Promise<LayerToc> {
    const blobHash = createHash(digestAlgorithm(digest));
    const hasher = new Transform({
      transform(chunk: Buffer, _enc, cb: TransformCallback) {
        blobHash.update(chunk);
        cb(null, chunk);
      },
    });
    const ex = tar.extract();
    const input = compression === 'gzip' ? pipeline(src, hasher, createGunzip(), () => undefined) : pipeline(src, hasher, () => undefined);
    const inputDone = new Promise<void>((resolve, reject) => {
      input.on('error', (err) => {
        if (!ex.destroyed) ex.destroy(err);
        reject(err);
      });
      input.on('end', resolve);
    });
    inputDone.catch(() => undefined);
    const entries = ex[Symbol.asyncIterator]();
    input.pipe(ex);
    const toc: LayerToc = { v: 1, digest, entries: [], hidden: 0 };
    const files = new Map<string, TocEntry>();
    const hide = (raw: string, reason: string): void => {
      toc.hidden++;
      if (toc.hidden <= 20) this.warn(`hiding tar entry ${JSON.stringify(raw.slice(0, 120))} of layer ${digest}: ${reason}`);
    };
    await fsp.mkdir(this.filesDir, { recursive: true, mode: 0o700 });
    try {
      for await (const entry of { [Symbol.asyncIterator]: () => entries }) {
        const h = entry.header;
        let name: string | undefined;
        try {
          name = entryName(h.name);
        } catch (err) {
          if (!isRegfsError(err, 'UNSAFE_PATH')) throw err;
          hide(h.name, err.message);
        }
        if (name !== undefined && name !== '' && toc.entries.length >= this.limits.maxEntries) {
          throw new RegfsError('TOO_LARGE', `layer ${digest} has more than ${this.limits.maxEntries} entries`);
        }
        const base = { m: (h.mode ?? 0o644) & 0o7777, u: h.uid ?? 0, g: h.gid ?? 0, mt: h.mtime?.getTime() ?? 0 };
        if (name === undefined || name === '') {
          await drain(entry);
          continue;
        }
        switch (h.type) {
          case 'file':
          case 'contiguous-file': {
            const { hex, size } = await this.storeFile(entry);
            const e: TocEntry = { p: name, t: 'f', ...base, s: size, h: hex };
            files.set(name, e);
            toc.entries.push(e);
            break;
          }
          case 'directory':
            await drain(entry);
            toc.entries.push({ p: name, t: 'd', ...base });
            break;
          case 'symlink':
            await drain(entry);
            // Stored as is: regfs never follows a link, so an escaping or absolute target is harmless here.
            toc.entries.push({ p: name, t: 'l', ...base, l: h.linkname ?? '' });
            break;
          case 'link': {
            await drain(entry);
            let target: string | undefined;
            try {
              target = entryName(h.linkname ?? '');
            } catch {
              target = undefined;
            }
            const to = target ? files.get(target) : undefined;
            if (!to) {
              hide(h.name, `hard link target ${JSON.stringify(h.linkname ?? '')} is not a file earlier in this layer`);
              break;
            }
            const e: TocEntry = { p: name, t: 'h', ...base, s: to.s, h: to.h, l: target };
            files.set(name, e);
            toc.entries.push(e);
            break;
          }
          default:
            // character/block devices, fifos and other types are left out (a mount of unprivileged files cannot make them)
            await drain(entry);
            hide(h.name, `${h.type} entries are not shown`);
        }
      }
      await inputDone;
    } catch (err) {
      input.unpipe(ex);
      if (!ex.destroyed) ex.destroy();
      if (!input.destroyed) input.destroy();
      throw err;
    }
    const actual = `${digestAlgorithm(digest)}:${blobHash.digest('hex')}`;
    if (actual !== digest) throw new RegfsError('DIGEST_MISMATCH', `layer digest mismatch while building its TOC: expected ${digest}, got ${actual}`);
    return toc;
  }

  /** storeFile writes an entry's content to a temp file while hashing it, then renames it to its content address. */
  private async storeFile(entry: AsyncIterable<unknown>): Promise<{ hex: string; size: number }> {
    const tmp = tempPathFor(path.join(this.filesDir, 'file'));
    const hash: Hash = createHash('sha256');
    let size = 0;
    const fh = await fsp.open(tmp, 'wx', 0o600);
    try {
      for await (const chunk of entry as AsyncIterable<Buffer>) {
        hash.update(chunk);
        await writeAll(fh, chunk);
        size += chunk.length;
      }
    } catch (err) {
      await fh.close().catch(() => undefined);
      await fsp.rm(tmp, { force: true });
      throw err;
    }
    await fh.close();
    const hex = hash.digest('hex');
    const dest = this.filePath(hex);
    try {
      await fsp.mkdir(path.dirname(dest), { recursive: true, mode: 0o700 });
      await fsp.rename(tmp, dest);
    } catch (err) {
      await fsp.rm(tmp, { force: true });
      throw err;
    }
    return { hex, size };
  }
}

async function drain(entry: AsyncIterable<unknown>): Promise<void> {
  for await (const _c of entry) {
    // discard
  }
}

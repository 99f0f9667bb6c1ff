import { promises as fsp } from 'node:fs';
import path from 'node:path';
import type { Readable } from 'node:stream';
import type { Descriptor } from '../registry/descriptor.js';
import { digestHex, type Digest } from '../registry/digest.js';
import { checkTitle } from '../registry/safe-path.js';
import type { ReadableRepository } from '../registry/storage.js';
import { RegfsError, isRegfsError } from '../util/errors.js';
import { writeFileAtomic } from '../util/fs-atomic.js';
import type { SideStore } from './eviction.js';
import { LayerExtractor, registrySource, type LayerBlobSource } from './layer-extract.js';
import { FileIndex } from './layer-files.js';
import { ByteCursor, scanTar, untar } from './tar-scan.js';

export { untar } from './tar-scan.js';

export type { LayerBlobSource, OpenedBlob } from './layer-extract.js';

/*
 * A layer's table of contents (TOC): every entry of an image layer's tar, built once per layer digest by
 * streaming the blob once (through the blob cache, which keeps the compressed bytes as a complete,
 * verified blob while they stream; nothing is kept unless the digest matches), and kept in the cache
 * directory as `tocs/<hex>.json` (immutable, digest-keyed, shared by every tag, image and repository).
 * The TOC pass writes no file data: each regular file's entry records where its bytes lie in the
 * uncompressed tar (`o`, `s`); a file is extracted on first open (layer-extract.ts) into
 * `files/<layer hex>/<offset>`, so a read in an image's rootfs/ is a read of a local, verified file.
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
  /** h is the sha256 hex of the file's content, when a TOC source knows it (v1 TOCs did; v2 tar TOCs do not). */
  h?: string;
  /** o is where the file's data starts in the layer's uncompressed tar stream (f; h copies its target's). */
  o?: number;
  /** l is the symlink target as stored, or the hard link's target path (normalised). */
  l?: string;
}

/** LayerToc is the stored TOC of one layer (v2: file data by offset; v1 TOCs, with extracted files, are rebuilt). */
export interface LayerToc {
  v: 1 | 2;
  digest: Digest;
  entries: TocEntry[];
  /** hidden counts entries left out (unsafe names, devices, fifos, unknown hard-link targets). */
  hidden: number;
}

const TOC_VERSION = 2;

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

/** LayerTocStore builds, stores and loads layer TOCs, and extracts their files on demand. */
export class LayerTocStore {
  private readonly building = new Map<string, Promise<LayerToc>>();
  private readonly loaded = new Map<string, LayerToc>();
  /** index counts tocs/ and files/ for the cache's size bound and eviction. */
  readonly index: FileIndex;
  private readonly extractor: LayerExtractor;

  constructor(
    readonly tocDir: string,
    readonly filesDir: string,
    private readonly limits: TocLimits = defaultTocLimits(),
    private readonly warn: (msg: string) => void = () => undefined,
    /** blobs gives layer bytes: the blob cache when the store belongs to one, else straight from the registry (verified). */
    readonly blobs: LayerBlobSource = registrySource,
    /** grew is told when files were added (the cache checks its size bound). */
    grew: () => void = () => undefined,
  ) {
    this.index = new FileIndex(tocDir, filesDir, grew);
    this.extractor = new LayerExtractor(filesDir, this.index, blobs);
  }

  /** sideStore is the store's face for the cache's eviction (tocs/ and files/). */
  get sideStore(): SideStore {
    return this.index;
  }

  tocPath(d: Digest): string {
    return path.join(this.tocDir, `${digestHex(d)}.json`);
  }

  /** filePath is where a content-addressed file (by sha256 hex: manifests) is kept. */
  filePath(hex: string): string {
    return path.join(this.filesDir, hex.slice(0, 2), hex);
  }

  /** entryPath is where a layer's file is (or will be) extracted: `files/<layer hex>/<data offset>`. */
  entryPath(layer: Digest, e: TocEntry): string {
    return this.extractor.entryPath(layer, e);
  }

  /**
   * materialize makes sure a file of a layer's TOC is extracted (from the verified blob) and returns its
   * local path; see layer-extract.ts for the policy (paused cursors, then whole-layer passes).
   */
  materialize(repo: ReadableRepository, layer: Descriptor, toc: LayerToc, e: TocEntry): Promise<string> {
    return this.extractor.materialize(repo, layer, toc, e, layerCompression(layer.mediaType) ?? 'none');
  }

  /** noteCreated records a file written into filesDir by others (manifest.json copies), for eviction. */
  noteCreated(file: string, bytes: number): void {
    this.index.add(file, bytes);
  }

  /**
   * toc returns the layer's TOC, building it (single flight) when it is not stored yet from the stream
   * `open()` gives, which must error instead of ending unless its bytes matched the layer digest.
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
        this.index.add(this.tocPath(digest), json.length);
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

  /** close stops paused extraction cursors. */
  close(): Promise<void> {
    return this.extractor.close();
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
      if (t.v === TOC_VERSION && t.digest === digest && Array.isArray(t.entries)) {
        this.index.touch(this.tocPath(digest));
        return t;
      }
      if (t.v !== 1) this.warn(`rebuilding unreadable layer TOC ${this.tocPath(digest)}`);
    } catch {
      this.warn(`rebuilding unreadable layer TOC ${this.tocPath(digest)}`);
    }
    return undefined;
  }

  /** build reads the layer stream once: it lists every entry and where each file's data lies; no file is written. */
  async build(src: Readable, digest: Digest, compression: LayerCompression): Promise<LayerToc> {
    const input = untar(src, compression);
    const cur = new ByteCursor(input[Symbol.asyncIterator]() as AsyncIterator<Buffer>);
    const toc: LayerToc = { v: TOC_VERSION, digest, entries: [], hidden: 0 };
    const files = new Map<string, TocEntry>();
    const hide = (raw: string, reason: string): void => {
      toc.hidden++;
      if (toc.hidden <= 20) this.warn(`hiding tar entry ${JSON.stringify(raw.slice(0, 120))} of layer ${digest}: ${reason}`);
    };
    try {
      await scanTar(cur, (h) => {
        let name: string | undefined;
        try {
          name = entryName(h.name);
        } catch (err) {
          if (!isRegfsError(err, 'UNSAFE_PATH')) throw err;
          hide(h.name, err.message);
        }
        if (name === undefined || name === '') return;
        if (toc.entries.length >= this.limits.maxEntries) throw new RegfsError('TOO_LARGE', `layer ${digest} has more than ${this.limits.maxEntries} entries`);
        const base = { m: h.mode & 0o7777, u: h.uid, g: h.gid, mt: h.mtime };
        switch (h.type) {
          case 'file':
          case 'contiguous-file': {
            const e: TocEntry = { p: name, t: 'f', ...base, s: h.size, o: h.offset };
            files.set(name, e);
            toc.entries.push(e);
            break;
          }
          case 'directory':
            toc.entries.push({ p: name, t: 'd', ...base });
            break;
          case 'symlink':
            // Stored as is: regfs never follows a link, so an escaping or absolute target is harmless here.
            toc.entries.push({ p: name, t: 'l', ...base, l: h.linkname });
            break;
          case 'link': {
            let target: string | undefined;
            try {
              target = entryName(h.linkname);
            } catch {
              target = undefined;
            }
            const to = target ? files.get(target) : undefined;
            if (!to) {
              hide(h.name, `hard link target ${JSON.stringify(h.linkname)} is not a file earlier in this layer`);
              break;
            }
            const e: TocEntry = { p: name, t: 'h', ...base, s: to.s, o: to.o, l: target };
            files.set(name, e);
            toc.entries.push(e);
            break;
          }
          default:
            // character/block devices, fifos and other types are left out (a mount of unprivileged files cannot make them)
            hide(h.name, `${h.type} entries are not shown`);
        }
      });
      // The rest of the stream (end-of-archive padding) is read too: the source checks the digest at its end.
      await cur.drain();
    } catch (err) {
      if (!input.destroyed) input.destroy();
      if (!src.destroyed) src.destroy();
      throw err;
    }
    return toc;
  }
}

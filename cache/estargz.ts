import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { createGunzip } from 'node:zlib';
import { digestHex, type Digest } from '../registry/digest.js';
import type { Descriptor } from '../registry/descriptor.js';
import type { ReadableRepository } from '../registry/storage.js';
import { RegfsError, errorMessage, isRegfsError } from '../util/errors.js';
import { tempPathFor, writeFileAtomic } from '../util/fs-atomic.js';
import { convertToc, FOOTER_SIZE, parseFooter, TOC_DIGEST_ANNOTATION, unpackToc, type EsChunk, type EstargzToc } from './estargz-toc.js';
import { defaultTocLimits, layerCompression, type LayerToc, type LayerTocStore, type TocLimits } from './layer-toc.js';
import { readExactly } from './read-exactly.js';

/*
 * eStargz layers, read lazily by HTTP Range. A gzip layer whose descriptor carries the
 * `containerd.io/snapshot/stargz/toc.digest` annotation is read as eStargz: its footer (last 51 bytes)
 * and TOC member are fetched by Range, the TOC JSON is checked against the annotation, converted to a
 * LayerToc and kept as `tocs/<layer hex>.estargz-<toc hex>.json`. A file is fetched on its first open:
 * only the gzip members of its chunks, each inflated and checked against its chunkDigest, the whole file
 * checked against its TOC digest, then written atomically into `files/` (content-addressed, like the gzip
 * path's files). The layer digest is never checked on this path (the whole blob is never fetched): trust
 * runs manifest (descriptor annotation) -> TOC digest -> chunk digests.
 * Without the annotation nothing in the blob can be trusted before the whole of it is hashed, so the layer
 * is read as plain gzip. A layer that is not usable eStargz (no footer, TOC not matching the annotation,
 * malformed TOC) also falls back to the plain gzip path (logged once); limits are refusals (EIO) as there.
 */

/** MAX_LAYERS is how many eStargz layers are kept ready for file fetches (the image view keeps 64 rootfs trees). */
const MAX_LAYERS = 1024;
/** FILL_PARALLEL is how many chunks of one file are fetched at once. */
const FILL_PARALLEL = 4;

/** LayerSource is what a file fetch needs: the repository last seen with the layer, the layer and its TOC. */
interface LayerSource {
  repo: ReadableRepository;
  layer: Descriptor;
  toc: EstargzToc;
}

/** EstargzLayers builds eStargz TOCs and fetches files chunk by chunk. */
export class EstargzLayers {
  private readonly building = new Map<string, Promise<EstargzToc | undefined>>();
  private readonly layers = new Map<string, LayerSource>();
  /** byHash maps a file content (sha256 hex) to the layer key that holds it. */
  private readonly byHash = new Map<string, string>();
  private readonly fetching = new Map<string, Promise<string>>();
  /** fetched counts chunk requests made (for tests and logs). */
  chunkFetches = 0;

  constructor(
    private readonly tocs: LayerTocStore,
    private readonly warn: (msg: string) => void = () => undefined,
    private readonly limits: TocLimits = defaultTocLimits(),
  ) {}

  /** tocDigestOf returns the layer's eStargz TOC digest annotation (a gzip layer only), or undefined. */
  static tocDigestOf(layer: Descriptor): Digest | undefined {
    const v = layer.annotations?.[TOC_DIGEST_ANNOTATION];
    if (typeof v !== 'string' || !/^sha256:[0-9a-f]{64}$/.test(v) || layerCompression(layer.mediaType) !== 'gzip') return undefined;
    return v as Digest;
  }

  private storePath(layer: Digest, toc: Digest): string {
    return path.join(this.tocs.tocDir, `${digestHex(layer)}.estargz-${digestHex(toc)}.json`);
  }

  /**
   * toc returns the layer's TOC read the eStargz way, or undefined when the layer is to be read as plain
   * gzip (no annotation, or not usable eStargz: logged). Limits and registry failures are thrown.
   */
  async toc(repo: ReadableRepository, layer: Descriptor): Promise<LayerToc | undefined> {
    const tocDigest = EstargzLayers.tocDigestOf(layer);
    if (!tocDigest) return undefined;
    const key = `${layer.digest} ${tocDigest}`;
    let p = this.building.get(key);
    if (!p) {
      p = (async () => {
        const toc = (await this.load(layer.digest, tocDigest)) ?? (await this.build(repo, layer, tocDigest));
        if (toc) this.register(key, repo, layer, toc);
        return toc;
      })();
      this.building.set(key, p);
      p.catch(() => undefined).finally(() => this.building.delete(key));
    }
    const toc = await p;
    if (toc) this.register(key, repo, layer, toc);
    return toc;
  }

  private register(key: string, repo: ReadableRepository, layer: Descriptor, toc: EstargzToc): void {
    this.layers.delete(key);
    // Bounded: the oldest layer is forgotten (its files already fetched stay readable; the others are found again when its rootfs is rebuilt).
    while (this.layers.size >= MAX_LAYERS) {
      const [oldKey, old] = this.layers.entries().next().value as [string, LayerSource];
      this.layers.delete(oldKey);
      for (const hex of Object.keys(old.toc.estargz.files)) if (this.byHash.get(hex) === oldKey) this.byHash.delete(hex);
    }
    this.layers.set(key, { repo, layer, toc });
    for (const hex of Object.keys(toc.estargz.files)) this.byHash.set(hex, key);
  }

  private async load(layer: Digest, tocDigest: Digest): Promise<EstargzToc | undefined> {
    let text: string;
    try {
      text = await fsp.readFile(this.storePath(layer, tocDigest), 'utf8');
    } catch {
      return undefined;
    }
    try {
      const t = JSON.parse(text) as EstargzToc;
      if (t.v === 1 && t.digest === layer && Array.isArray(t.entries) && t.estargz?.toc === tocDigest && typeof t.estargz.files === 'object') return t;
    } catch {
      // torn or foreign: rebuilt
    }
    this.warn(`rebuilding unreadable eStargz TOC ${this.storePath(layer, tocDigest)}`);
    return undefined;
  }

  private async build(repo: ReadableRepository, layer: Descriptor, tocDigest: Digest): Promise<EstargzToc | undefined> {
    try {
      if (layer.size < FOOTER_SIZE + 20) throw new RegfsError('INVALID_ARGUMENT', `the layer is only ${layer.size} bytes`);
      const footer = await readExactly(await repo.fetchBlob(layer, { start: layer.size - FOOTER_SIZE, end: layer.size }), FOOTER_SIZE, 'SIZE_MISMATCH', 'the footer range fetch');
      const tocOffset = parseFooter(footer, layer.size);
      const memberLen = layer.size - FOOTER_SIZE - tocOffset;
      if (memberLen > this.limits.maxTocBytes) throw new RegfsError('TOO_LARGE', `layer ${layer.digest} has an eStargz TOC member of ${memberLen} bytes, over the limit of ${this.limits.maxTocBytes}`);
      const member = await readExactly(await repo.fetchBlob(layer, { start: tocOffset, end: layer.size - FOOTER_SIZE }), memberLen, 'SIZE_MISMATCH', 'the TOC range fetch');
      const json = await unpackToc(member, this.limits);
      const actual = `sha256:${createHash('sha256').update(json).digest('hex')}`;
      if (actual !== tocDigest) throw new RegfsError('INVALID_ARGUMENT', `its TOC has digest ${actual}, the manifest's ${TOC_DIGEST_ANNOTATION} annotation says ${tocDigest}`);
      const toc = convertToc(json, layer.digest, tocDigest, layer.size, tocOffset, this.limits, this.warn);
      const text = JSON.stringify(toc);
      if (text.length > this.limits.maxTocBytes) throw new RegfsError('TOO_LARGE', `layer ${layer.digest} has a TOC of ${text.length} bytes, over the limit of ${this.limits.maxTocBytes}`);
      await fsp.mkdir(this.tocs.tocDir, { recursive: true, mode: 0o700 });
      await writeFileAtomic(this.storePath(layer.digest, tocDigest), text, 0o600, { durable: false });
      this.tocs.noteCreated(this.storePath(layer.digest, tocDigest), text.length); // counted by eviction
      return toc;
    } catch (err) {
      if (!isRegfsError(err, 'INVALID_ARGUMENT')) throw err;
      this.warn(`reading layer ${layer.digest} as plain gzip, not eStargz: ${errorMessage(err)}`);
      return undefined;
    }
  }

  /** lazyFile returns a fetcher for a file content (sha256 hex) held by an eStargz layer, or undefined. */
  lazyFile(hex: string): (() => Promise<string>) | undefined {
    const key = this.byHash.get(hex);
    if (!key) return undefined;
    return () => this.materialize(hex);
  }

  /** materialize returns the local path of a file content, fetching its chunks first when it is not there yet (single flight). */
  materialize(hex: string): Promise<string> {
    let p = this.fetching.get(hex);
    if (!p) {
      p = (async () => {
        const dest = this.tocs.filePath(hex);
        try {
          await fsp.access(dest);
          return dest;
        } catch {
          // not there yet
        }
        const src = this.layers.get(this.byHash.get(hex) ?? '');
        const chunks = src?.toc.estargz.files[hex];
        if (!src || !chunks) throw new RegfsError('NOT_FOUND', `no eStargz layer holds file ${hex}`);
        await fsp.mkdir(path.dirname(dest), { recursive: true, mode: 0o700 });
        // Temp file then rename (util/fs-atomic's temp name), opened read-write: fill reads it back to hash it.
        const tmp = tempPathFor(dest);
        const fh = await fsp.open(tmp, 'wx+', 0o600);
        try {
          await this.fill(fh, src, hex, chunks);
          const { size } = await fh.stat();
          await fh.close();
          await fsp.rename(tmp, dest);
          this.tocs.noteCreated(dest, size); // counted by eviction
        } catch (err) {
          await fh.close().catch(() => undefined);
          await fsp.rm(tmp, { force: true });
          throw err;
        }
        return dest;
      })();
      this.fetching.set(hex, p);
      p.catch(() => undefined).finally(() => this.fetching.delete(hex));
    }
    return p;
  }

  /**
   * fill streams a file's chunks into the temp file at their offsets (up to FILL_PARALLEL chunks at once),
   * each checked against its chunkDigest; then the whole file, read back in order, against the file digest
   * (its content address). Any failure throws, so the temp file is dropped and nothing is served.
   */
  private async fill(fh: FileHandle, src: LayerSource, hex: string, chunks: EsChunk[]): Promise<void> {
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < chunks.length) {
        const i = next++;
        const c = chunks[i]!;
        this.chunkFetches++;
        const h = createHash('sha256');
        let pos = c.co;
        await inflateChunk(await src.repo.fetchBlob(src.layer, { start: c.o, end: c.e }), c, async (buf) => {
          h.update(buf);
          for (let off = 0; off < buf.length; ) {
            const { bytesWritten } = await fh.write(buf, off, buf.length - off, pos);
            off += bytesWritten;
            pos += bytesWritten;
          }
        });
        const got = h.digest('hex');
        if (got !== c.d) throw new RegfsError('DIGEST_MISMATCH', `chunk ${i} of file ${hex} in layer ${src.layer.digest} has sha256 ${got}, its TOC chunkDigest says ${c.d}`);
      }
    };
    const workers = Array.from({ length: Math.min(FILL_PARALLEL, chunks.length) }, () => worker());
    const results = await Promise.allSettled(workers);
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw failed.reason;
    const whole = createHash('sha256');
    const buf = Buffer.allocUnsafe(1024 * 1024);
    for (let pos = 0; ; ) {
      const { bytesRead } = await fh.read(buf, 0, buf.length, pos);
      if (bytesRead === 0) break;
      whole.update(buf.subarray(0, bytesRead));
      pos += bytesRead;
    }
    const got = whole.digest('hex');
    if (got !== hex) throw new RegfsError('DIGEST_MISMATCH', `file ${hex} from layer ${src.layer.digest} has sha256 ${got}`);
  }
}

/** inflateChunk inflates a chunk's member(s) and hands bytes [io, io + s) of the output to `take`; the rest is not inflated. */
async function inflateChunk(src: Readable, c: EsChunk, take: (b: Buffer) => Promise<void>): Promise<void> {
  const gunzip = createGunzip();
  src.on('error', (err) => gunzip.destroy(err));
  src.pipe(gunzip);
  const want = c.io + c.s;
  let pos = 0;
  try {
    for await (const b of gunzip as AsyncIterable<Buffer>) {
      const from = Math.max(0, c.io - pos);
      const to = Math.min(b.length, want - pos);
      pos += b.length;
      if (to > from) await take(b.subarray(from, to));
      if (pos >= want) break;
    }
  } finally {
    src.unpipe(gunzip);
    src.destroy();
    gunzip.destroy();
  }
  if (pos < want) throw new RegfsError('DIGEST_MISMATCH', `an eStargz chunk inflated to ${pos} bytes, its TOC needs ${want}`);
}

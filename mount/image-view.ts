import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { EstargzLayers } from '../cache/estargz.js';
import { layerCompression, type LayerTocStore } from '../cache/layer-toc.js';
import { digestHex } from '../registry/digest.js';
import type { Descriptor } from '../registry/descriptor.js';
import type { ImageManifest, Manifest } from '../registry/manifest.js';
import type { FetchedManifest, ReadableRepository } from '../registry/storage.js';
import { errorMessage, isRegfsError } from '../util/errors.js';
import { writeFileAtomic } from '../util/fs-atomic.js';
import type { Logger } from '../util/log.js';
import { Errno, MountError } from './errno.js';
import { findNode, mergeLayers, type RootDir, type RootNode } from './image-tree.js';
import { makeAttr, type Attr, type Resolved } from './ports.js';

/*
 * The view of a container image (an image manifest whose config is an image config):
 *   config.json  manifest.json  layers/NN-<hex12>.tar.gz  rootfs/ (the merged filesystem)
 * rootfs/ is built from each layer's TOC (cache/layer-toc.ts) on first access; a file's bytes are
 * extracted from its layer on first open (nodeResolved, the one place file data is resolved).
 */

const IMAGE_CONFIG_TYPES = new Set(['application/vnd.oci.image.config.v1+json', 'application/vnd.docker.container.image.v1+json']);

/** isImageManifest tells whether a manifest is a container image (not an ORAS artifact). */
export function isImageManifest(m: Manifest): m is ImageManifest {
  return m.kind === 'manifest' && IMAGE_CONFIG_TYPES.has(m.config.mediaType);
}

/** layerFileName is `NN-<hex12>` plus `.tar.gz`, `.tar.zst` or `.tar` by media type (`.blob` for anything else). */
export function layerFileName(i: number, d: Descriptor): string {
  const c = layerCompression(d.mediaType);
  const ext = c === 'gzip' ? '.tar.gz' : c === 'zstd' ? '.tar.zst' : c === 'none' ? '.tar' : '.blob';
  return `${String(i).padStart(2, '0')}-${digestHex(d.digest).slice(0, 12)}${ext}`;
}

const DIR_MODE = 0o040555;
const FILE_MODE = 0o100444;

export interface ImageViewOptions {
  tocs: LayerTocStore;
  log: Logger;
}

/** ImageView resolves paths inside an image manifest's folder. */
export class ImageView {
  private readonly roots = new Map<string, Promise<RootDir>>();
  private readonly warned = new Set<string>();
  /** estargz reads layers with a TOC digest annotation by Range (cache/estargz.ts); the others stream whole. */
  readonly estargz: EstargzLayers;

  constructor(private readonly o: ImageViewOptions) {
    this.estargz = new EstargzLayers(o.tocs, (msg) => this.warnOnce(msg));
  }

  private warnOnce(msg: string): void {
    if (this.warned.has(msg)) return;
    if (this.warned.size > 10_000) this.warned.clear();
    this.warned.add(msg);
    this.o.log.warn(msg);
  }

  async resolve(repo: ReadableRepository, fm: FetchedManifest, rest: string[], mtime: Date, xattrs: Record<string, string>): Promise<Resolved> {
    const m = fm.manifest as ImageManifest;
    const dir = (list: string[], x: Record<string, string> = {}): Resolved => ({ type: 'dir', attr: makeAttr(DIR_MODE, 0, mtime), xattrs: x, list: async () => list });
    const blobFile = (d: Descriptor): Resolved => ({ type: 'file', attr: makeAttr(FILE_MODE, d.size, mtime), repo, layer: d, xattrs: { 'user.oci.digest': d.digest, 'user.oci.mediatype': d.mediaType } });
    const [first, ...more] = rest;
    if (first === undefined) return dir(['config.json', 'layers', 'manifest.json', 'rootfs'], xattrs);
    if (first === 'config.json' && more.length === 0) return blobFile(m.config);
    if (first === 'manifest.json' && more.length === 0) {
      // materialize: the copy in files/ is evictable, so open makes it again if it went meanwhile.
      return { type: 'local-file', attr: makeAttr(FILE_MODE, fm.bytes.length, mtime), file: await this.manifestFile(fm), materialize: () => this.manifestFile(fm), xattrs: {} };
    }
    if (first === 'layers') {
      const names = m.layers.map((l, i) => layerFileName(i, l));
      if (more.length === 0) return dir(names);
      const i = more.length === 1 ? names.indexOf(more[0]!) : -1;
      if (i < 0) throw new MountError(Errno.ENOENT, `no layer ${more.join('/')} in ${fm.descriptor.digest}`);
      return blobFile(m.layers[i]!);
    }
    if (first === 'rootfs') {
      const root = await this.rootfs(repo, fm);
      const node = findNode(root, more);
      if (!node) throw new MountError(Errno.ENOENT, `no ${more.join('/')} in the rootfs of ${fm.descriptor.digest}`);
      return this.nodeResolved(node, repo, m);
    }
    throw new MountError(Errno.ENOENT, `no ${first} in image ${fm.descriptor.digest}`);
  }

  private nodeResolved(node: RootNode, repo: ReadableRepository, m: ImageManifest): Resolved {
    const mtime = new Date(node.meta.mtime);
    const attr = (type: number, size: number, nlink: number): Attr => ({ ...makeAttr(type | node.meta.mode, size, mtime), uid: node.meta.uid, gid: node.meta.gid, nlink, exact: true });
    if (node.kind === 'dir') {
      const subdirs = [...node.children.values()].filter((c) => c.kind === 'dir').length;
      return { type: 'dir', attr: attr(0o040000, 0, 2 + subdirs), xattrs: {}, list: async () => [...node.children.keys()].sort() };
    }
    // Linux shows every symlink as 0777, whatever its tar header says (umoci and the kernel agree).
    if (node.kind === 'symlink') return { type: 'symlink', attr: { ...attr(0o120000, Buffer.byteLength(node.target), 1), mode: 0o120777 }, target: node.target, xattrs: {} };
    const { toc, entry } = node.src;
    const { tocs } = this.o;
    // An eStargz layer's file is fetched chunk by chunk on first open (cache/estargz.ts).
    const lazy = 'estargz' in toc ? this.estargz.lazyFile(node.hash) : undefined;
    if (lazy) return { type: 'local-file', attr: attr(0o100000, node.size, Math.max(1, node.link.nlink)), file: tocs.filePath(node.hash), materialize: lazy, xattrs: {} };
    const layer = m.layers.find((l) => l.digest === toc.digest);
    const materialize = async (): Promise<string> => {
      if (!layer) throw new MountError(Errno.EIO, `layer ${toc.digest} is not in ${m.layers.length} layers of this image`);
      try {
        return await tocs.materialize(repo, layer, toc, entry);
      } catch (err) {
        if (err instanceof MountError) throw err;
        const msg = `cannot extract ${entry.p} from layer ${toc.digest}: ${errorMessage(err)}`;
        this.warnOnce(msg);
        throw new MountError(Errno.EIO, msg);
      }
    };
    return { type: 'local-file', attr: attr(0o100000, node.size, Math.max(1, node.link.nlink)), file: tocs.entryPath(toc.digest, entry), materialize, xattrs: {} };
  }

  /** manifestFile keeps the (verified) manifest bytes as a content-addressed file, for reads through the kernel. */
  private async manifestFile(fm: FetchedManifest): Promise<string> {
    const file = this.o.tocs.filePath(digestHex(fm.descriptor.digest));
    try {
      await fsp.access(file);
      this.o.tocs.index.touch(file);
    } catch {
      await fsp.mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
      await writeFileAtomic(file, fm.bytes, 0o600, { durable: false });
      this.o.tocs.noteCreated(file, fm.bytes.length);
    }
    return file;
  }

  /** rootfs merges the layers' TOCs once per manifest; a failure (limits, a bad layer) is EIO for rootfs/ and logged once. */
  private rootfs(repo: ReadableRepository, fm: FetchedManifest): Promise<RootDir> {
    const key = fm.descriptor.digest;
    let p = this.roots.get(key);
    if (!p) {
      const m = fm.manifest as ImageManifest;
      p = (async () => {
        for (const layer of m.layers) {
          if (!layerCompression(layer.mediaType)) throw new MountError(Errno.EIO, `layer ${layer.digest} has media type ${layer.mediaType}, which is not a tar layer`);
        }
        // Layers are indexed in parallel: an eStargz layer (TOC digest annotation) by Range (undefined from
        // it means: read it as plain gzip), any other streamed once into the blob cache (a later read of
        // layers/ fetches nothing).
        const { tocs: store } = this.o;
        const tocs = await Promise.all(
          m.layers.map(async (layer) => (await this.estargz.toc(repo, layer)) ?? store.toc(layer.digest, layerCompression(layer.mediaType)!, async () => (await store.blobs.openBlob(repo, layer, { cacheFirst: false })).stream)),
        );
        return mergeLayers(tocs);
      })();
      p.catch((err: unknown) => {
        this.roots.delete(key);
        this.warnOnce(`cannot show the rootfs of ${key}: ${errorMessage(err)}`);
      });
      if (this.roots.size > 64) this.roots.clear();
      this.roots.set(key, p);
    }
    return p.catch((err: unknown) => {
      if (err instanceof MountError) throw err;
      if (isRegfsError(err, 'UNSUPPORTED')) throw new MountError(Errno.ENOTSUP, errorMessage(err));
      throw new MountError(Errno.EIO, errorMessage(err));
    });
  }
}

/**
 * Test support: an eStargz layer writer (https://github.com/containerd/stargz-snapshotter/blob/main/docs/estargz.md).
 * The blob is a concatenation of gzip members that is also one valid tar.gz: each non-empty regular file's
 * payload starts a new gzip member (one per chunk of `chunkSize` bytes; the tar padding and the next headers
 * ride in the last chunk's member, as the Go writer does), then a member holding a tar with `stargz.index.json`
 * (the TOC) and the end-of-archive blocks, then the 51-byte footer (an empty gzip member whose extra field is
 * `%016xSTARGZ` of the TOC member's offset).
 */
import { createHash } from 'node:crypto';
import { gzipSync } from 'node:zlib';
import { entryTar, packTar, type BuiltLayer, type ImageEntry, type TarHeader } from './oci-image.js';

export const TOC_DIGEST_ANNOTATION = 'containerd.io/snapshot/stargz/toc.digest';

/** EstargzTocEntry is one TOC entry as the Go writer emits it (omitempty fields left out when zero). */
export interface EstargzTocEntry {
  name: string;
  type: 'dir' | 'reg' | 'symlink' | 'hardlink' | 'chunk';
  size?: number;
  modtime?: string;
  linkName?: string;
  mode?: number;
  uid?: number;
  gid?: number;
  offset?: number;
  innerOffset?: number;
  digest?: string;
  chunkOffset?: number;
  chunkSize?: number;
  chunkDigest?: string;
}

/** EstargzLayer is a built eStargz blob: `gz` is the blob, `annotations` carries the TOC digest for its descriptor. */
export interface EstargzLayer extends BuiltLayer {
  tocDigest: string;
  toc: { version: 1; entries: EstargzTocEntry[] };
  tocJson: Buffer;
  annotations: Record<string, string>;
}

export interface EstargzOptions {
  /** chunkSize splits larger files into several members (default 4 MiB, the Go writer's default). */
  chunkSize?: number;
  /** level is the gzip level (default 1); 0 stores, so same-length content gives same-length members. */
  level?: number;
  /**
   * minChunkSize, when set, lets small payloads share a gzip member (ctr-remote's --estargz-min-chunk-size):
   * a payload starts a new member only once the current one holds this many uncompressed bytes, otherwise
   * its TOC entry points at the current member with an `innerOffset`.
   */
  minChunkSize?: number;
  /** landmark adds `.no.prefetch.landmark` (one 0xf byte) first, as the Go writer does (default true). */
  landmark?: boolean;
}

const sha = (b: Buffer | string): string => createHash('sha256').update(b).digest('hex');
const pad512 = (n: number): number => (512 - (n % 512)) % 512;

/** packOne returns one entry's tar bytes (headers, content, padding) without the end-of-archive blocks. */
async function packOne(header: TarHeader, content?: Buffer): Promise<Buffer> {
  const all = await packTar([{ header, content }]);
  return all.subarray(0, all.length - 1024);
}

/** footer is the 51-byte eStargz footer pointing at the TOC member. */
export function estargzFooter(tocOffset: number): Buffer {
  const subfield = Buffer.from(`${tocOffset.toString(16).padStart(16, '0')}STARGZ`);
  const extra = Buffer.concat([Buffer.from([0x53, 0x47, subfield.length, 0]), subfield]);
  const head = Buffer.from([0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 255, extra.length, 0]);
  return Buffer.concat([head, extra, Buffer.from([1, 0, 0, 0xff, 0xff]), Buffer.alloc(8)]);
}

/** estargzLayer builds an eStargz blob from entries (same shape as tarLayer's), lowest byte first. */
export async function estargzLayer(input: Iterable<ImageEntry>, o: EstargzOptions = {}): Promise<EstargzLayer> {
  const chunkSize = o.chunkSize ?? 4 * 1024 * 1024;
  const level = o.level ?? 1;
  const members: Buffer[] = [];
  let blobLen = 0;
  let cur: Buffer[] = [];
  const diff = createHash('sha256');
  const cut = (): void => {
    if (cur.length === 0) return;
    const raw = Buffer.concat(cur);
    cur = [];
    diff.update(raw);
    const gz = gzipSync(raw, { level });
    members.push(gz);
    blobLen += gz.length;
  };
  const entries: EstargzTocEntry[] = [];
  const all: ImageEntry[] = [...input];
  if (o.landmark !== false) all.unshift({ name: '.no.prefetch.landmark', content: Buffer.from([0xf]) });
  for (const e of all) {
    const type = e.type ?? 'file';
    const { header, content } = entryTar(e);
    const { mtime, mode } = header;
    const bytes = await packOne(header, content);
    const base: EstargzTocEntry = {
      name: e.name,
      type: type === 'file' ? 'reg' : type === 'directory' ? 'dir' : type === 'symlink' ? 'symlink' : 'hardlink',
      modtime: mtime.toISOString().replace(/\.\d{3}Z$/, 'Z'),
      mode,
      ...(e.uid ? { uid: e.uid } : {}),
      ...(e.gid ? { gid: e.gid } : {}),
      ...(e.linkname !== undefined ? { linkName: e.linkname } : {}),
    };
    if (!content || content.length === 0) {
      cur.push(bytes);
      entries.push(content ? { ...base, size: 0 } : base);
      continue;
    }
    const headLen = bytes.length - content.length - pad512(content.length);
    cur.push(bytes.subarray(0, headLen));
    for (let off = 0; off < content.length; off += chunkSize) {
      const inner = cur.reduce((a, b) => a + b.length, 0);
      if (!o.minChunkSize || inner >= o.minChunkSize) cut();
      const innerOffset = cur.reduce((a, b) => a + b.length, 0);
      const piece = content.subarray(off, Math.min(off + chunkSize, content.length));
      const last = off + chunkSize >= content.length;
      const chunk: EstargzTocEntry = off === 0
        ? { ...base, size: content.length, offset: blobLen, digest: `sha256:${sha(content)}` }
        : { name: e.name, type: 'chunk', offset: blobLen, chunkOffset: off };
      if (innerOffset > 0) chunk.innerOffset = innerOffset;
      if (!last) chunk.chunkSize = piece.length;
      chunk.chunkDigest = `sha256:${sha(piece)}`;
      entries.push(chunk);
      cur.push(piece);
    }
    cur.push(Buffer.alloc(pad512(content.length)));
  }
  cut();
  const toc = { version: 1 as const, entries };
  const tocJson = Buffer.from(JSON.stringify(toc, null, '\t'));
  const tocOffset = blobLen;
  cur.push(await packOne({ name: 'stargz.index.json', type: 'file', mode: 0o444, mtime: new Date(0) }, tocJson), Buffer.alloc(1024));
  cut();
  members.push(estargzFooter(tocOffset));
  const gz = Buffer.concat(members);
  const tocDigest = `sha256:${sha(tocJson)}`;
  return { gz, digest: `sha256:${sha(gz)}`, diffId: `sha256:${diff.digest('hex')}`, tocDigest, toc, tocJson, annotations: { [TOC_DIGEST_ANNOTATION]: tocDigest } };
}

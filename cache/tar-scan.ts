import { pipeline, Transform, type Readable, type TransformCallback } from 'node:stream';
import { createGunzip } from 'node:zlib';
import { RegfsError } from '../util/errors.js';
import type { LayerCompression } from './layer-toc.js';

/*
 * A small streaming tar reader that knows where each entry's data lies in the (uncompressed) tar stream,
 * which tar-stream does not expose. It reads ustar, GNU (long names `L`/`N`, long link names `K`, base-256
 * numbers) and pax (`x` per entry, `g` global: path, linkpath, size, uid, gid, mtime) headers, as
 * tar-stream does, and never copies an entry's data unless asked to.
 */

const BLOCK = 512;
/** MAX_LONG_HEADER bounds a pax or GNU long-name header (as tar-stream does). */
const MAX_LONG_HEADER = 1024 * 1024;

/** ByteCursor reads an async stream of chunks by byte counts, counting the bytes consumed (`pos`). */
export class ByteCursor {
  /** pos is how many bytes of the stream were consumed so far. */
  pos = 0;
  private buf: Buffer | undefined;
  private ended = false;

  constructor(private readonly it: AsyncIterator<Buffer>) {}

  private async fill(): Promise<boolean> {
    if (this.buf && this.buf.length > 0) return true;
    if (this.ended) return false;
    const r = await this.it.next();
    if (r.done) {
      this.ended = true;
      return false;
    }
    this.buf = r.value;
    return true;
  }

  /** take returns the next n bytes (fewer only at the end of the stream). */
  async take(n: number): Promise<Buffer> {
    if ((await this.fill()) && this.buf!.length >= n) return this.cut(n);
    const parts: Buffer[] = [];
    let got = 0;
    while (got < n && (await this.fill())) {
      const b = this.cut(Math.min(n - got, this.buf!.length));
      parts.push(b);
      got += b.length;
    }
    return Buffer.concat(parts, got);
  }

  /** skip discards n bytes; it throws when the stream ends first. */
  async skip(n: number): Promise<void> {
    let left = n;
    while (left > 0) {
      if (!(await this.fill())) throw truncated(this.pos);
      left -= this.cut(Math.min(left, this.buf!.length)).length;
    }
  }

  /** copy hands the next n bytes to sink, chunk by chunk (awaiting it); it throws when the stream ends first. */
  async copy(n: number, sink: (chunk: Buffer) => Promise<void> | void): Promise<void> {
    let left = n;
    while (left > 0) {
      if (!(await this.fill())) throw truncated(this.pos);
      const b = this.cut(Math.min(left, this.buf!.length));
      left -= b.length;
      await sink(b);
    }
  }

  /** drain reads the stream to its end (so a verifying source checks its digest). */
  async drain(): Promise<void> {
    this.buf = undefined;
    for (;;) {
      const r = await this.it.next();
      if (r.done) break;
      this.pos += r.value.length;
    }
    this.ended = true;
  }

  /** close stops reading (the source is released). */
  async close(): Promise<void> {
    this.buf = undefined;
    this.ended = true;
    await this.it.return?.();
  }

  private cut(n: number): Buffer {
    const b = this.buf!;
    const out = n === b.length ? b : b.subarray(0, n);
    this.buf = n === b.length ? undefined : b.subarray(n);
    this.pos += n;
    return out;
  }
}

function truncated(at: number): RegfsError {
  return new RegfsError('IO', `layer tar ends in the middle of an entry (at byte ${at} of the uncompressed tar)`);
}

/** TarHeader is one entry as the tar headers (with pax and GNU long names applied) describe it. */
export interface TarHeader {
  name: string;
  /** type is tar-stream's name of the type flag (file, directory, symlink, link, character-device, ...). */
  type: string;
  mode: number;
  uid: number;
  gid: number;
  /** mtime in ms since the epoch. */
  mtime: number;
  size: number;
  linkname: string;
  /** offset is where the entry's data starts in the uncompressed tar stream. */
  offset: number;
}

const TYPES: Record<string, string> = {
  '0': 'file',
  '\0': 'file',
  '1': 'link',
  '2': 'symlink',
  '3': 'character-device',
  '4': 'block-device',
  '5': 'directory',
  '6': 'fifo',
  '7': 'contiguous-file',
};

function str(b: Buffer, off: number, len: number): string {
  const end = b.indexOf(0, off);
  return b.toString('utf8', off, end < 0 || end > off + len ? off + len : end);
}

function num(b: Buffer, off: number, len: number): number {
  const f = b.subarray(off, off + len);
  if (f[0]! & 0x80) {
    // base-256 (GNU): 0x80 positive, 0xff negative (two's complement)
    const positive = f[0] === 0x80;
    let sum = 0;
    for (let i = 1; i < f.length; i++) sum = sum * 256 + (positive ? f[i]! : 0xff - f[i]!);
    return positive ? sum : -sum;
  }
  let i = 0;
  while (i < f.length && f[i] === 32) i++;
  let end = f.indexOf(32, i);
  if (end < 0) end = f.length;
  while (i < end && f[i] === 0) i++;
  const nul = f.indexOf(0, i);
  if (nul >= 0 && nul < end) end = nul;
  if (end === i) return 0;
  return parseInt(f.toString('latin1', i, end), 8);
}

function checksum(b: Buffer): number {
  let sum = 8 * 32;
  for (let i = 0; i < 148; i++) sum += b[i]!;
  for (let i = 156; i < BLOCK; i++) sum += b[i]!;
  return sum;
}

function decodePax(b: Buffer): Record<string, string> {
  const out: Record<string, string> = {};
  let rest = b;
  while (rest.length) {
    const sp = rest.indexOf(32);
    if (sp < 0) break;
    const len = parseInt(rest.toString('latin1', 0, sp), 10);
    if (!len || len > rest.length) break;
    const rec = rest.toString('utf8', sp + 1, len - 1);
    const eq = rec.indexOf('=');
    if (eq < 0) break;
    out[rec.slice(0, eq)] = rec.slice(eq + 1);
    rest = rest.subarray(len);
  }
  return out;
}

const padded = (n: number): number => Math.ceil(n / BLOCK) * BLOCK;

/**
 * scanTar reads headers from `cur` (positioned at the start of a tar) and calls onEntry for each entry,
 * skipping its data (onEntry must not read `cur`). It returns at the end-of-archive block or at the end
 * of the stream; a bad checksum, an unknown format or a truncated entry throws.
 */
export async function scanTar(cur: ByteCursor, onEntry: (h: TarHeader) => Promise<void> | void): Promise<void> {
  let pax: Record<string, string> | undefined;
  let globalPax: Record<string, string> | undefined;
  let longName: string | undefined;
  let longLink: string | undefined;
  for (;;) {
    const at = cur.pos;
    const b = await cur.take(BLOCK);
    if (b.length === 0) return;
    if (b.length < BLOCK) throw truncated(cur.pos);
    const sum = checksum(b);
    if (sum === 8 * 32) return; // a zero block: end of archive
    if (sum !== num(b, 148, 8)) throw new RegfsError('IO', `invalid tar header at byte ${at} of the uncompressed layer (bad checksum; corrupt, or not a tar)`);
    const magic = b.toString('latin1', 257, 263);
    const ustar = magic === 'ustar\0' && b.toString('latin1', 263, 265) === '00';
    const gnu = magic === 'ustar ' && b.toString('latin1', 263, 265) === ' \0';
    if (!ustar && !gnu) throw new RegfsError('IO', `invalid tar header at byte ${at} of the uncompressed layer: unknown format`);
    const flag = String.fromCharCode(b[156]!);
    let size = num(b, 124, 12);
    if (!(size >= 0)) throw new RegfsError('IO', `invalid tar header at byte ${at}: bad size`);
    if (flag === 'x' || flag === 'g' || flag === 'L' || flag === 'N' || flag === 'K') {
      if (size > MAX_LONG_HEADER) throw new RegfsError('IO', `tar header at byte ${at} exceeds ${MAX_LONG_HEADER} bytes`);
      const body = await cur.take(size);
      if (body.length < size) throw truncated(cur.pos);
      await cur.skip(padded(size) - size);
      if (flag === 'x') pax = { ...globalPax, ...decodePax(body) };
      else if (flag === 'g') globalPax = decodePax(body);
      else if (flag === 'K') longLink = str(body, 0, body.length);
      else longName = str(body, 0, body.length);
      continue;
    }
    let name = str(b, 0, 100);
    if (ustar && b[345]) name = `${str(b, 345, 155)}/${name}`;
    let linkname = b[157] === 0 ? '' : str(b, 157, 100);
    let type = TYPES[flag] ?? `type-${JSON.stringify(flag)}`;
    if (flag === '\0' || flag === '0') if (name.endsWith('/')) type = 'directory';
    let uid = num(b, 108, 8);
    let gid = num(b, 116, 8);
    let mtime = num(b, 136, 12) * 1000;
    if (longName !== undefined) name = longName;
    if (longLink !== undefined) linkname = longLink;
    const p = pax ?? globalPax;
    if (p) {
      if (p.path) name = p.path;
      if (p.linkpath) linkname = p.linkpath;
      if (p.size && /^\d+$/.test(p.size)) size = parseInt(p.size, 10);
      if (p.uid && /^\d+$/.test(p.uid)) uid = parseInt(p.uid, 10);
      if (p.gid && /^\d+$/.test(p.gid)) gid = parseInt(p.gid, 10);
      if (p.mtime && /^-?\d+(\.\d+)?$/.test(p.mtime)) mtime = Math.floor(parseFloat(p.mtime)) * 1000;
    }
    pax = undefined;
    longName = undefined;
    longLink = undefined;
    const offset = cur.pos;
    // A directory's size field carries no data (tar-stream reads none either).
    const data = type === 'directory' ? 0 : size;
    await onEntry({ name, type, mode: num(b, 100, 8), uid, gid, mtime, size: data, linkname, offset });
    await cur.skip(padded(data));
  }
}

/** INFLATE_CHUNK: inflate input is gathered to, and its output given in, 1 MiB chunks. */
const INFLATE_CHUNK = 1024 * 1024;

/**
 * untar returns the uncompressed tar stream of a layer stream. Gzip input is gathered into 1 MiB chunks
 * first: fed an HTTP body's 16-64 KiB chunks, Node's inflate costs about 13 times the CPU (measured:
 * 840 ms against 65 ms for 100 MiB), its per-chunk overhead dwarfing the inflation.
 */
export function untar(src: Readable, compression: LayerCompression): Readable {
  if (compression === 'zstd') throw new RegfsError('UNSUPPORTED', 'zstd layers cannot be decompressed by this Node');
  if (compression !== 'gzip') return src;
  return pipeline(src, gather(INFLATE_CHUNK), createGunzip({ chunkSize: INFLATE_CHUNK }), () => undefined);
}

/** gather joins a stream's chunks into chunks of at least `min` bytes (the last one may be shorter). */
function gather(min: number): Transform {
  let parts: Buffer[] = [];
  let n = 0;
  const take = (): Buffer => {
    const b = parts.length === 1 ? parts[0]! : Buffer.concat(parts, n);
    parts = [];
    n = 0;
    return b;
  };
  return new Transform({
    transform(chunk: Buffer, _enc, cb: TransformCallback) {
      parts.push(chunk);
      n += chunk.length;
      if (n >= min) cb(null, take());
      else cb();
    },
    flush(cb: TransformCallback) {
      if (n > 0) cb(null, take());
      else cb();
    },
  });
}


import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import { gunzipSync } from 'node:zlib';
import tar from 'tar-stream';
import type { Digest } from '../registry/digest.js';
import { checkTitle } from '../registry/safe-path.js';
import { RegfsError, isRegfsError } from '../util/errors.js';
import type { LayerToc, TocEntry, TocLimits } from './layer-toc.js';

/*
 * The pure half of eStargz (https://github.com/containerd/stargz-snapshotter/blob/main/docs/estargz.md):
 * parse the 51-byte footer, unpack the TOC member (a gzip member holding a tar with `stargz.index.json`),
 * and turn the TOC into this cache's LayerToc shape plus, per file content, the list of gzip members
 * (chunks) that hold it. Everything here throws RegfsError('INVALID_ARGUMENT') for a blob or TOC that is
 * not usable eStargz (the caller then falls back to the plain gzip path) and TOO_LARGE over the limits.
 */

export const TOC_DIGEST_ANNOTATION = 'containerd.io/snapshot/stargz/toc.digest';
export const FOOTER_SIZE = 51;
const TOC_NAME = 'stargz.index.json';
/** Landmark files mark the prefetch boundary: format metadata, never shown (as stargz-snapshotter does). */
const LANDMARKS = new Set(['.prefetch.landmark', '.no.prefetch.landmark', TOC_NAME]);

/** EsChunk is one chunk of a file: its gzip member [o, e) in the blob, `io` bytes into the inflated member, `s` bytes at `co` of the file. */
export interface EsChunk {
  o: number;
  e: number;
  io: number;
  co: number;
  s: number;
  /** d is the sha256 hex of the chunk's uncompressed bytes (chunkDigest). */
  d: string;
}

/** EstargzToc is a LayerToc plus where each file content (by sha256 hex) lives in the blob. */
export interface EstargzToc extends LayerToc {
  estargz: { toc: Digest; files: Record<string, EsChunk[]> };
}

const bad = (msg: string): RegfsError => new RegfsError('INVALID_ARGUMENT', msg);

/** parseFooter returns the TOC member's offset from the last 51 bytes of a blob of `size` bytes. */
export function parseFooter(b: Buffer, size: number): number {
  if (b.length !== FOOTER_SIZE || b[0] !== 0x1f || b[1] !== 0x8b || b[2] !== 8 || (b[3]! & 4) === 0) throw bad('the layer has no eStargz footer (no gzip header with an extra field in its last 51 bytes)');
  const xlen = b.readUInt16LE(10);
  const extra = b.subarray(12, 12 + xlen);
  if (xlen !== 26 || extra[0] !== 0x53 || extra[1] !== 0x47 || extra.readUInt16LE(2) !== 22) throw bad('the layer footer has no eStargz (SG) extra subfield');
  const sub = extra.subarray(4).toString('latin1');
  if (!/^[0-9a-f]{16}STARGZ$/.test(sub)) throw bad('the layer footer lacks the %016xSTARGZ marker');
  const off = Number.parseInt(sub.slice(0, 16), 16);
  if (!Number.isSafeInteger(off) || off < 0 || off >= size - FOOTER_SIZE) throw bad(`the layer footer points at TOC offset ${off}, outside the blob of ${size} bytes`);
  return off;
}

/** unpackToc inflates the TOC member and returns the bytes of its `stargz.index.json` entry (bounded by the TOC limit). */
export async function unpackToc(member: Buffer, limits: TocLimits): Promise<Buffer> {
  let raw: Buffer;
  try {
    raw = gunzipSync(member, { maxOutputLength: limits.maxTocBytes + 64 * 1024 });
  } catch (err) {
    if (err instanceof RangeError) throw new RegfsError('TOO_LARGE', `eStargz TOC is over the limit of ${limits.maxTocBytes} bytes`);
    throw bad(`the eStargz TOC member does not inflate: ${(err as Error).message}`);
  }
  const ex = tar.extract();
  Readable.from([raw]).pipe(ex);
  let json: Buffer | undefined;
  try {
    for await (const entry of ex) {
      const parts: Buffer[] = [];
      for await (const c of entry as AsyncIterable<Buffer>) parts.push(c);
      if (entry.header.name === TOC_NAME && entry.header.type === 'file') json = Buffer.concat(parts);
    }
  } catch (err) {
    throw bad(`the eStargz TOC member is not a tar: ${(err as Error).message}`);
  }
  if (!json) throw bad(`the eStargz TOC member holds no ${TOC_NAME}`);
  return json;
}

interface RawEntry {
  name?: unknown;
  type?: unknown;
  size?: unknown;
  modtime?: unknown;
  linkName?: unknown;
  mode?: unknown;
  uid?: unknown;
  gid?: unknown;
  offset?: unknown;
  innerOffset?: unknown;
  digest?: unknown;
  chunkOffset?: unknown;
  chunkSize?: unknown;
  chunkDigest?: unknown;
}

const int = (v: unknown, what: string, dflt = 0): number => {
  if (v === undefined) return dflt;
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) throw bad(`eStargz TOC ${what} is not a non-negative integer`);
  return v;
};
const sha256Hex = (v: unknown, what: string): string => {
  const m = typeof v === 'string' ? /^sha256:([0-9a-f]{64})$/.exec(v) : null;
  if (!m) throw bad(`eStargz TOC ${what} is not a sha256 digest`);
  return m[1]!;
};
const EMPTY_SHA = createHash('sha256').digest('hex');

/** entryName normalises a TOC name like a tar name (`./` and trailing `/` stripped); '' is the root; throws UNSAFE_PATH. */
function entryName(raw: string): string {
  if (raw.startsWith('/')) throw new RegfsError('UNSAFE_PATH', `unsafe path ${JSON.stringify(raw.slice(0, 80))}: absolute path`);
  let n = raw;
  while (n.startsWith('./')) n = n.slice(2);
  while (n.endsWith('/')) n = n.slice(0, -1);
  if (n === '' || n === '.') return '';
  return checkTitle(n);
}

/**
 * convertToc turns a verified TOC JSON into an EstargzToc: names checked like tar names (unsafe ones hidden),
 * hard links only to files earlier in the layer, devices and fifos left out, each file's chunks contiguous.
 */
export function convertToc(json: Buffer, layer: Digest, tocDigest: Digest, blobSize: number, tocOffset: number, limits: TocLimits, hideWarn: (msg: string) => void): EstargzToc {
  let parsed: { version?: unknown; entries?: unknown };
  try {
    parsed = JSON.parse(json.toString('utf8')) as typeof parsed;
  } catch (err) {
    throw bad(`the eStargz TOC is not JSON: ${(err as Error).message}`);
  }
  if (parsed?.version !== 1 || !Array.isArray(parsed.entries)) throw bad('the eStargz TOC is not version 1 with an entries array');
  const out: EstargzToc = { v: 1, digest: layer, entries: [], hidden: 0, estargz: { toc: tocDigest, files: {} } };
  const hide = (raw: string, reason: string): void => {
    out.hidden++;
    if (out.hidden <= 20) hideWarn(`hiding tar entry ${JSON.stringify(raw.slice(0, 120))} of layer ${layer}: ${reason}`);
  };
  const files = new Map<string, TocEntry>();
  // open is the file whose chunks are being collected (its `chunk` entries follow its `reg` entry).
  let open: { name: string; size: number; hex: string; chunks: EsChunk[]; keep: boolean } | undefined;
  const offsets = new Set<number>([tocOffset]);
  const close = (): void => {
    if (!open) return;
    const end = open.chunks.reduce((a, c) => a + c.s, 0);
    if (end !== open.size) throw bad(`eStargz TOC chunks of ${JSON.stringify(open.name)} cover ${end} of its ${open.size} bytes`);
    if (open.keep && !out.estargz.files[open.hex]) out.estargz.files[open.hex] = open.chunks;
    open = undefined;
  };
  const addChunk = (e: RawEntry, co: number): void => {
    const o = int(e.offset, 'offset');
    if (o >= tocOffset) throw bad(`eStargz TOC chunk offset ${o} is not before the TOC at ${tocOffset}`);
    const size = open!.size;
    const cs = int(e.chunkSize, 'chunkSize');
    const s = cs === 0 ? size - co : cs;
    if (s <= 0 || co + s > size) throw bad(`eStargz TOC chunk of ${JSON.stringify(open!.name)} at ${co} has a bad size ${s}`);
    const prev = open!.chunks.at(-1);
    if ((prev ? prev.co + prev.s : 0) !== co) throw bad(`eStargz TOC chunks of ${JSON.stringify(open!.name)} are not contiguous at ${co}`);
    offsets.add(o);
    open!.chunks.push({ o, e: 0, io: int(e.innerOffset, 'innerOffset'), co, s, d: sha256Hex(e.chunkDigest, 'chunkDigest') });
  };
  for (const item of parsed.entries as RawEntry[]) {
    if (typeof item !== 'object' || item === null || typeof item.name !== 'string' || typeof item.type !== 'string') throw bad('an eStargz TOC entry has no name or type');
    const rawName = item.name;
    if (item.type === 'chunk') {
      if (!open || open.name !== rawName) throw bad(`eStargz TOC chunk of ${JSON.stringify(rawName.slice(0, 80))} does not follow its file`);
      addChunk(item, int(item.chunkOffset, 'chunkOffset'));
      continue;
    }
    close();
    let name: string | undefined;
    try {
      name = entryName(rawName);
    } catch (err) {
      if (!isRegfsError(err, 'UNSAFE_PATH')) throw err;
      hide(rawName, err.message);
    }
    if (name !== undefined && name !== '' && out.entries.length >= limits.maxEntries) throw new RegfsError('TOO_LARGE', `layer ${layer} has more than ${limits.maxEntries} entries`);
    const mtime = typeof item.modtime === 'string' ? Date.parse(item.modtime) : 0;
    const base = { m: int(item.mode, 'mode') & 0o7777, u: int(item.uid, 'uid'), g: int(item.gid, 'gid'), mt: Number.isFinite(mtime) ? mtime : 0 };
    if (item.type === 'reg') {
      const size = int(item.size, 'size');
      const hex = size === 0 ? EMPTY_SHA : sha256Hex(item.digest, `digest of ${JSON.stringify(rawName.slice(0, 80))}`);
      const keep = name !== undefined && name !== '' && !LANDMARKS.has(name);
      if (size > 0) {
        open = { name: rawName, size, hex, chunks: [], keep };
        addChunk(item, 0);
      } else if (keep) out.estargz.files[hex] ??= [];
      if (!keep) continue;
      const e: TocEntry = { p: name!, t: 'f', ...base, s: size, h: hex };
      files.set(name!, e);
      out.entries.push(e);
      continue;
    }
    if (name === undefined || name === '') continue;
    if (item.type === 'dir') out.entries.push({ p: name, t: 'd', ...base });
    else if (item.type === 'symlink') out.entries.push({ p: name, t: 'l', ...base, l: typeof item.linkName === 'string' ? item.linkName : '' });
    else if (item.type === 'hardlink') {
      let target: string | undefined;
      try {
        target = entryName(typeof item.linkName === 'string' ? item.linkName : '');
      } catch {
        target = undefined;
      }
      const to = target ? files.get(target) : undefined;
      if (!to) {
        hide(rawName, `hard link target ${JSON.stringify(item.linkName ?? '')} is not a file earlier in this layer`);
        continue;
      }
      const e: TocEntry = { p: name, t: 'h', ...base, s: to.s, h: to.h, l: target };
      files.set(name, e);
      out.entries.push(e);
    } else hide(rawName, `${item.type} entries are not shown`);
  }
  close();
  // A member ends where the next one starts (the next chunk's offset, else the TOC member).
  const sorted = [...offsets].sort((a, b) => a - b);
  const nextAfter = (o: number): number => {
    let lo = 0;
    let hi = sorted.length - 1;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (sorted[mid]! > o) hi = mid;
      else lo = mid + 1;
    }
    return sorted[lo]! > o ? sorted[lo]! : blobSize - FOOTER_SIZE;
  };
  for (const chunks of Object.values(out.estargz.files)) for (const c of chunks) c.e = nextAfter(c.o);
  return out;
}

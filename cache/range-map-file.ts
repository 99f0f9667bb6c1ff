import { randomUUID } from 'node:crypto';
import { promises as fsp, readFileSync, constants as C } from 'node:fs';
import { isDigest, type Digest } from '../registry/digest.js';
import { RegfsError } from '../util/errors.js';
import { writeFileAtomic } from '../util/fs-atomic.js';
import { RangeSet } from './range-set.js';

/** RangeMap is the persisted state of a partial blob: which bytes of which blob are in its sparse file. */
export interface RangeMap {
  digest: Digest;
  size: number;
  ranges: RangeSet;
  /**
   * synced is true when the data file was fdatasync-ed before the map was written, so the map holds
   * across a power loss. An unsynced map is written while bytes stream in (no flush on the read path):
   * it is trusted only within the same boot (`bootId`), where the page cache still has every byte
   * written, even if the process crashed.
   */
  synced: boolean;
  /** bootId is the kernel boot the map was written in. */
  bootId: string;
}

let cachedBootId: string | undefined;

/** currentBootId is this boot's id (/proc/sys/kernel/random/boot_id), or a per-process id when unreadable (then an unsynced map is never trusted by another process). */
export function currentBootId(): string {
  if (cachedBootId === undefined) {
    try {
      cachedBootId = readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim() || randomUUID();
    } catch {
      cachedBootId = randomUUID();
    }
  }
  return cachedBootId;
}

/** trustworthy tells whether a loaded map's ranges can be believed: synced, or written in this boot. */
export function trustworthy(m: RangeMap): boolean {
  return m.synced || m.bootId === currentBootId();
}

const MAX_MAP_BYTES = 16 * 1024 * 1024;

/** parseRangeMap validates untrusted range-map JSON; ranges must lie inside [0, size). */
export function parseRangeMap(text: string, where: string): RangeMap {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    throw new RegfsError('INVALID_ARGUMENT', `${where} is not JSON`);
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new RegfsError('INVALID_ARGUMENT', `${where} is not an object`);
  const r = raw as Record<string, unknown>;
  if (r.version !== 1 && r.version !== 2) throw new RegfsError('INVALID_ARGUMENT', `${where} has unknown version ${JSON.stringify(r.version)}`);
  if (!isDigest(r.digest)) throw new RegfsError('INVALID_ARGUMENT', `${where} has an invalid digest`);
  const size = r.size;
  if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0) throw new RegfsError('INVALID_ARGUMENT', `${where} has an invalid size`);
  const ranges = RangeSet.fromJSON(r.ranges);
  const spans = ranges.spans();
  const last = spans[spans.length - 1];
  if (last && last.end > size) throw new RegfsError('INVALID_ARGUMENT', `${where} has a range past the blob size ${size}`);
  // Version 1 maps were only ever written after an fdatasync of the data.
  const synced = r.version === 1 || r.synced === true;
  const bootId = typeof r.bootId === 'string' ? r.bootId : '';
  return { digest: r.digest, size, ranges, synced, bootId };
}

/** serializeRangeMap renders a range map as its persisted JSON. */
export function serializeRangeMap(m: RangeMap): string {
  return JSON.stringify({ version: 2, digest: m.digest, size: m.size, ranges: m.ranges.toJSON(), synced: m.synced, bootId: m.bootId });
}

/** readRangeMap loads and validates a persisted range map (never following a symlink). */
export async function readRangeMap(file: string): Promise<RangeMap> {
  const fh = await fsp.open(file, C.O_RDONLY | C.O_NOFOLLOW);
  try {
    const st = await fh.stat();
    if (!st.isFile() || st.size > MAX_MAP_BYTES) throw new RegfsError('INVALID_ARGUMENT', `${file} is not a plausible range map`);
    return parseRangeMap(await fh.readFile({ encoding: 'utf8' }), file);
  } finally {
    await fh.close();
  }
}

/** writeRangeMap persists a range map atomically (temp file and rename; with fsyncs when the map is `synced`). */
export async function writeRangeMap(file: string, m: RangeMap): Promise<void> {
  await writeFileAtomic(file, serializeRangeMap(m), 0o600, { durable: m.synced });
}

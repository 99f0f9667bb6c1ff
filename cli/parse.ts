import { RegfsError } from '../util/errors.js';
import { parseSizeValue } from '../util/units.js';

/** parseSize reads a byte size like 512M, 10G or 1024 (binary units) given to a flag. */
export function parseSize(v: string, flag: string): number {
  return parseSizeValue(v, `invalid ${flag} ${JSON.stringify(v)}`);
}

/** parseSeconds reads a duration in seconds (integer or decimal). */
export function parseSeconds(v: string, flag: string): number {
  const n = Number(v);
  if (!Number.isFinite(n) || n < 0) throw new RegfsError('INVALID_ARGUMENT', `invalid ${flag} ${JSON.stringify(v)}: expected seconds, e.g. 30`);
  return n;
}

/** parseIntInRange reads an integer flag value between min and max (inclusive), e.g. --concurrency or --page-size. */
export function parseIntInRange(v: string, flag: string, min: number, max: number): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < min || n > max) throw new RegfsError('INVALID_ARGUMENT', `invalid ${flag} ${v}: expected ${min}-${max}`);
  return n;
}

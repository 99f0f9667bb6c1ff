import { RegfsError } from './errors.js';

/** parseSizeValue reads 512M, 10G, 1024 (binary units) or a number of bytes. */
export function parseSizeValue(v: unknown, where: string): number {
  if (typeof v === 'number' && Number.isSafeInteger(v) && v >= 0) return v;
  const m = typeof v === 'string' ? /^(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?$/i.exec(v.trim()) : null;
  if (!m) throw new RegfsError('INVALID_ARGUMENT', `${where}: must be a size like 512M or 10G`);
  const mult = { B: 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3, T: 1024 ** 4 }[(m[2] ?? 'B').toUpperCase()[0] as 'B'];
  return Math.floor(Number(m[1]) * mult);
}

/** EvictionCandidate is one removable cache entry: its key, bytes on disk and last access time (ms). */
export interface EvictionCandidate {
  key: string;
  bytes: number;
  lastAccess: number;
}

/**
 * chooseVictims picks least-recently-used candidates until the cache total is at most `maxSize` and at
 * least `mustFree` bytes are freed; candidates must already exclude pinned and busy entries.
 */
export function chooseVictims(candidates: readonly EvictionCandidate[], total: number, maxSize: number, mustFree: number): EvictionCandidate[] {
  const sorted = [...candidates].sort((a, b) => a.lastAccess - b.lastAccess);
  const out: EvictionCandidate[] = [];
  let left = total;
  let freed = 0;
  for (const c of sorted) {
    if (left <= maxSize && freed >= mustFree) break;
    out.push(c);
    left -= c.bytes;
    freed += c.bytes;
  }
  return out;
}

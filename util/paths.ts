import path from 'node:path';

/** isInside tells whether `child` is `parent` or below it (both resolved the same way by the caller). */
export function isInside(parent: string, child: string): boolean {
  const rel = path.relative(parent, child);
  return rel === '' || (!rel.startsWith('..') && !path.isAbsolute(rel));
}

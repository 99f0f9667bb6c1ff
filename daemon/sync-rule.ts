import type { SyncDirection } from './settings.js';

/** SyncAction is what one tag needs, decided from the base and both sides (decideSync). */
export type SyncAction =
  | { kind: 'none' }
  | { kind: 'compare' }
  | { kind: 'pull'; why?: string }
  | { kind: 'push'; why?: string }
  | { kind: 'delete-local'; why: string }
  | { kind: 'delete-remote'; why: string }
  | { kind: 'forget'; why: string };

/**
 * decideSync is the sync rule for one tag, given its base (undefined before the first sync), the registry's
 * manifest digest and the local fingerprint (undefined when that side has no such tag). `compare` means both
 * sides hold the tag and at least one changed in a way only the contents can settle: equal contents just
 * record the base, different ones are a conflict.
 */
export function decideSync(base: { digest: string; fingerprint: string } | undefined, remote: string | undefined, local: string | undefined, direction: SyncDirection, propagateDeletes: boolean): SyncAction {
  const up = direction !== 'down';
  const down = direction !== 'up';
  const none: SyncAction = { kind: 'none' };
  if (!base) {
    if (remote && local) return { kind: 'compare' };
    if (remote) return down ? { kind: 'pull' } : none;
    if (local) return up ? { kind: 'push' } : none;
    return none;
  }
  const remoteChanged = remote !== base.digest;
  const localChanged = local !== base.fingerprint;
  if (!remoteChanged && !localChanged) return none;
  if (!remote && !local) return { kind: 'forget', why: 'deleted on both sides' };
  if (remoteChanged && !localChanged) {
    if (remote) return down ? { kind: 'pull' } : none;
    if (propagateDeletes && down) return { kind: 'delete-local', why: 'deleted in the registry (propagateDeletes)' };
    if (up) return { kind: 'push', why: 'deleted in the registry; restoring it from the local folder because propagateDeletes is off' };
    return { kind: 'forget', why: 'deleted in the registry; the local folder is kept (a down-only pair never writes the registry)' };
  }
  if (!remoteChanged && localChanged) {
    if (local) return up ? { kind: 'push' } : none;
    if (propagateDeletes && up) return { kind: 'delete-remote', why: 'deleted locally (propagateDeletes)' };
    if (down) return { kind: 'pull', why: 'deleted locally; restoring it from the registry because propagateDeletes is off' };
    return { kind: 'forget', why: 'deleted locally; the registry keeps it (an up-only pair never writes the local folder)' };
  }
  if (remote && local) return { kind: 'compare' };
  if (local) {
    if (up) return { kind: 'push', why: 'deleted in the registry but edited locally: the edit wins, restoring it' };
    return { kind: 'forget', why: 'deleted in the registry but edited locally; the local folder is kept' };
  }
  if (down) return { kind: 'pull', why: 'deleted locally but changed in the registry: the change wins, restoring it' };
  return { kind: 'forget', why: 'deleted locally but changed in the registry; the registry keeps it' };
}

/** tagMatcher turns a pair's tag glob (`*`, `?`, alternatives separated by commas) into a test; none matches every tag. */
export function tagMatcher(pattern: string | undefined): (tag: string) => boolean {
  if (!pattern || pattern === '*') return () => true;
  const alts = pattern.split(',').map((p) => new RegExp(`^${p.replace(/[.+^${}()|[\]\\-]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.')}$`));
  return (tag) => alts.some((re) => re.test(tag));
}

/** conflictTag names the kept version: `<tag>-conflict-<12 hex>`, the tag shortened so the name (and a `-N` suffix) stays a valid tag. */
export function conflictTag(tag: string, hex: string): string {
  return `${tag.slice(0, 100)}-conflict-${hex.slice(0, 12)}`;
}

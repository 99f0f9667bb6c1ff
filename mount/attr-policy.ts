import { RegfsError } from '../util/errors.js';
import type { Attr } from './ports.js';

/**
 * AttrPolicy is what a mount shows as owner and permission bits, as rclone's --uid, --gid, --umask,
 * --file-perms and --dir-perms: a file shows `fileMode & ~umask`, a directory `dirMode & ~umask`,
 * both owned by `uid:gid` (default: the mounting process). Symlinks keep 0777. It changes only what
 * stat shows: writes stay refused where they are (EROFS without a staging folder).
 */
export interface AttrPolicy {
  uid?: number;
  gid?: number;
  fileMode: number;
  dirMode: number;
  umask: number;
}

/** DEFAULT_ATTR_POLICY is 0644 files and 0755 directories, as rclone and mountpoint-s3 show them: a `cp -r` out of the mount leaves a tree its user can change and remove. */
export const DEFAULT_ATTR_POLICY: AttrPolicy = { fileMode: 0o644, dirMode: 0o755, umask: 0 };

const S_IFMT = 0o170000;
const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;

/** applyAttrPolicy returns attr with the policy's owner and permission bits (the file type is kept). */
export function applyAttrPolicy(attr: Attr, policy: AttrPolicy): Attr {
  if (attr.exact) return attr;
  const type = attr.mode & S_IFMT;
  const perm = type === S_IFDIR ? policy.dirMode & ~policy.umask : type === S_IFREG ? policy.fileMode & ~policy.umask : attr.mode & 0o7777;
  return { ...attr, mode: type | (perm & 0o7777), uid: policy.uid ?? attr.uid, gid: policy.gid ?? attr.gid };
}

/** parseMode reads an octal permission like 0644, 644 or 0o644 (at most 0777) for `what` (a flag or config key). */
export function parseMode(v: unknown, what: string): number {
  const s = typeof v === 'string' ? v.trim().replace(/^0o/i, '') : '';
  if (!/^[0-7]{1,4}$/.test(s) || parseInt(s, 8) > 0o777) throw new RegfsError('INVALID_ARGUMENT', `invalid ${what} ${JSON.stringify(v)}: expected an octal mode like 0644 (a string in a config file)`);
  return parseInt(s, 8);
}

/** parseId reads a numeric user or group id for `what`. */
export function parseId(v: unknown, what: string): number {
  const n = typeof v === 'number' ? v : typeof v === 'string' && /^\d+$/.test(v.trim()) ? Number(v) : NaN;
  if (!Number.isSafeInteger(n) || n < 0 || n > 0xfffffffe) throw new RegfsError('INVALID_ARGUMENT', `invalid ${what} ${JSON.stringify(v)}: expected a numeric id, e.g. 1000`);
  return n;
}

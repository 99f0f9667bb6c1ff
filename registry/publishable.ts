import type { Stats, Dirent } from 'node:fs';
import { checkTitle } from './safe-path.js';

/**
 * The one rule for what a folder entry may become in an artifact pushed from staging, at every depth (a
 * top-level file's layer, or an entry of a folder's tar layer): a regular file or a folder whose name
 * regfs's own pull and mount accept as a title segment (registry/safe-path.ts checkTitle: no control
 * character such as a newline, no backslash, at most 255 UTF-8 bytes). Symlinks (never followed: they could
 * point outside staging), FIFOs, sockets and devices are not published. A refused entry is skipped and named,
 * never retried.
 */

/** EntryKind is what lstat said a folder entry is. */
type EntryKind = Pick<Stats | Dirent, 'isFile' | 'isDirectory' | 'isSymbolicLink' | 'isFIFO' | 'isSocket'>;

/** unpublishableReason returns why an entry named `name` (one path segment) of this kind is not published, or undefined when it is. */
export function unpublishableReason(name: string, kind: EntryKind): string | undefined {
  if (kind.isSymbolicLink()) return 'symlink (links are not followed or published)';
  if (kind.isFIFO()) return 'FIFO (only regular files and folders are published)';
  if (kind.isSocket()) return 'socket (only regular files and folders are published)';
  if (!kind.isFile() && !kind.isDirectory()) return 'device or other special file (only regular files and folders are published)';
  if (name.includes('/')) return 'name contains a slash';
  try {
    checkTitle(name);
  } catch (err) {
    return `name not accepted as a file name by pull and the mount (${(err as Error).message.replace(/^unsafe path "(?:[^"\\]|\\.)*": /, '')})`;
  }
  return undefined;
}

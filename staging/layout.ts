import { createHash } from 'node:crypto';
import { promises as fsp, type Dirent } from 'node:fs';
import path from 'node:path';
import { unpublishableReason } from '../registry/publishable.js';
import { isRepositoryName, isTag } from '../registry/reference.js';
import { nullLogger, type Logger } from '../util/log.js';

/** StagedEntry is one file or folder directly inside a tag folder. */
export interface StagedEntry {
  name: string;
  kind: 'file' | 'dir';
  /** size, mtimeMs and ctimeMs are totals/maxima over a folder's subtree, so any change inside shows. */
  size: number;
  mtimeMs: number;
  /** ctimeMs changes with every write, rename or chmod of the file (a rename over it gives another inode too). */
  ctimeMs: number;
  /** dev and ino name the file (or folder) the scan saw: the upload checks it opened that very one. */
  dev: number;
  ino: number;
}

/** SkippedEntry is an entry of a tag folder that is not published (registry/publishable.ts), and why. */
export interface SkippedEntry {
  /** path is relative to the tag folder (`sub/link` for one inside a subfolder). */
  path: string;
  reason: string;
}

/** StagedTag is a tag folder found in staging: what would be pushed as repository:tag. */
export interface StagedTag {
  repository: string;
  tag: string;
  dir: string;
  entries: StagedEntry[];
  /** skipped are the entries left out (symlinks, special files, names pull would refuse), at every depth. */
  skipped?: SkippedEntry[];
}

/** isIgnoredName tells whether a staged name is skipped: hidden files and editor or download temp files. */
export function isIgnoredName(name: string): boolean {
  return name.startsWith('.') || name.endsWith('~') || /\.(swp|part|tmp|crdownload)$/.test(name);
}

/**
 * TAG_MARKER is an empty file that makes its folder a tag folder even before (or without) a file directly
 * in it; writes through a mount put it where they know the tag level (see docs/mount.md).
 */
export const TAG_MARKER = '.regfs-tag';

/** WRITES_DIR (`<staging>/.regfs-writes`) holds a mount's files being written, renamed into place when closed. */
export const WRITES_DIR = '.regfs-writes';

/** isTagFolderListing tells whether a folder's entries make it a tag folder: the marker, or a visible regular file. */
export function isTagFolderListing(list: Dirent[]): boolean {
  return list.some((e) => e.name === TAG_MARKER || (!isIgnoredName(e.name) && e.isFile()));
}

interface Subtree {
  size: number;
  mtimeMs: number;
  ctimeMs: number;
}

async function subtree(dir: string, rel: string, skipped: SkippedEntry[]): Promise<Subtree> {
  let size = 0;
  const top = await fsp.lstat(dir);
  let mtimeMs = top.mtimeMs;
  let ctimeMs = top.ctimeMs;
  for (const e of await fsp.readdir(dir, { withFileTypes: true })) {
    if (isIgnoredName(e.name)) continue;
    const p = path.join(dir, e.name);
    const why = unpublishableReason(e.name, e);
    if (why !== undefined) {
      skipped.push({ path: `${rel}/${e.name}`, reason: why });
      continue;
    }
    if (e.isDirectory()) {
      const s = await subtree(p, `${rel}/${e.name}`, skipped);
      size += s.size;
      mtimeMs = Math.max(mtimeMs, s.mtimeMs);
      ctimeMs = Math.max(ctimeMs, s.ctimeMs);
    } else if (e.isFile()) {
      const st = await fsp.lstat(p);
      size += st.size;
      mtimeMs = Math.max(mtimeMs, st.mtimeMs);
      ctimeMs = Math.max(ctimeMs, st.ctimeMs);
    }
  }
  return { size, mtimeMs, ctimeMs };
}

/** ScanOptions collect what scanTagDir leaves out. */
export interface ScanOptions {
  /** skipped receives every entry not published (registry/publishable.ts), at every depth, in scan order. */
  skipped?: SkippedEntry[];
}

/**
 * scanTagDir lists what a tag folder holds now: its regular files and folders. Entries that cannot be
 * published (registry/publishable.ts: symlinks, FIFOs, sockets, names pull would refuse), at any depth, are
 * left out and reported in `opts.skipped`; the caller names them (once) to the user.
 */
export async function scanTagDir(dir: string, opts: ScanOptions = {}): Promise<StagedEntry[]> {
  const out: StagedEntry[] = [];
  const skipped = opts.skipped ?? [];
  let list: Dirent[];
  try {
    list = await fsp.readdir(dir, { withFileTypes: true });
  } catch {
    return [];
  }
  for (const e of list) {
    if (isIgnoredName(e.name)) continue;
    const p = path.join(dir, e.name);
    const why = unpublishableReason(e.name, e);
    if (why !== undefined) {
      skipped.push({ path: e.name, reason: why });
      continue;
    }
    try {
      const st = await fsp.lstat(p);
      const id = { dev: st.dev, ino: st.ino };
      if (st.isFile()) {
        out.push({ name: e.name, kind: 'file', size: st.size, mtimeMs: st.mtimeMs, ctimeMs: st.ctimeMs, ...id });
      } else if (st.isDirectory()) {
        out.push({ name: e.name, kind: 'dir', ...(await subtree(p, e.name, skipped)), ...id });
      }
    } catch {
      // vanished while scanning: the next scan sees the new state
    }
  }
  return out.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}

/**
 * scanStaging finds tag folders under root. A tag folder is the first directory along a path that
 * directly contains a regular file (or the TAG_MARKER): its last path component is the tag, the
 * components before it the repository (so `root/team/app/v1/file` is team/app:v1, and folders inside a
 * tag folder become directory layers). An empty folder is not a tag folder until a file appears in it.
 */
export async function scanStaging(root: string, log: Logger = nullLogger): Promise<StagedTag[]> {
  const found: StagedTag[] = [];
  const walk = async (dir: string, depth: number): Promise<void> => {
    let list: Dirent[];
    try {
      list = await fsp.readdir(dir, { withFileTypes: true });
    } catch {
      return;
    }
    const visible = list.filter((e) => !isIgnoredName(e.name));
    if (depth >= 2 && isTagFolderListing(list)) {
      const rel = path.relative(root, dir).split(path.sep);
      const tag = rel[rel.length - 1]!;
      const repository = rel.slice(0, -1).join('/');
      if (!isRepositoryName(repository) || !isTag(tag)) {
        log.warn(`staging: skipping ${dir}: "${repository}:${tag}" is not a valid repository:tag (lowercase repository path, tag [A-Za-z0-9_][A-Za-z0-9_.-]*)`);
        return;
      }
      const skipped: SkippedEntry[] = [];
      found.push({ repository, tag, dir, entries: await scanTagDir(dir, { skipped }), skipped });
      return;
    }
    if (depth > 32) return;
    for (const e of visible) if (e.isDirectory()) await walk(path.join(dir, e.name), depth + 1);
  };
  await walk(root, 0);
  return found;
}

/**
 * fingerprint is a stable hash of a tag folder's names, kinds, sizes, mtimes, ctimes and inodes: a file
 * renamed over another (same size, same mtime) still changes it (another inode, a new ctime). Fingerprints
 * recorded by older versions (names, kinds, sizes, mtimes only) never match, which costs one push check: its
 * blobs are already there (HEAD) and its manifest digest equals the tag's, so nothing is PUT.
 */
export function fingerprint(entries: StagedEntry[]): string {
  return createHash('sha256')
    .update(JSON.stringify(entries.map((e) => [e.name, e.kind, e.size, Math.round(e.mtimeMs), Math.round(e.ctimeMs), e.dev, e.ino])))
    .digest('hex')
    .slice(0, 32);
}

import { createHash } from 'node:crypto';
import { promises as fsp, type Dirent } from 'node:fs';
import path from 'node:path';
import { isRepositoryName, isTag } from '../registry/reference.js';
import { nullLogger, type Logger } from '../util/log.js';

/** StagedEntry is one file or folder directly inside a tag folder. */
export interface StagedEntry {
  name: string;
  kind: 'file' | 'dir';
  /** size and mtimeMs are totals/maxima over a folder's subtree, so any change inside shows. */
  size: number;
  mtimeMs: number;
}

/** StagedTag is a tag folder found in staging: what would be pushed as repository:tag. */
export interface StagedTag {
  repository: string;
  tag: string;
  dir: string;
  entries: StagedEntry[];
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

async function subtree(dir: string): Promise<{ size: number; mtimeMs: number }> {
  let size = 0;
  let mtimeMs = (await fsp.lstat(dir)).mtimeMs;
  for (const e of await fsp.readdir(dir, { withFileTypes: true })) {
    if (isIgnoredName(e.name)) continue;
    const p = path.join(dir, e.name);
    if (e.isDirectory()) {
      const s = await subtree(p);
      size += s.size;
      mtimeMs = Math.max(mtimeMs, s.mtimeMs);
    } else if (e.isFile()) {
      const st = await fsp.lstat(p);
      size += st.size;
      mtimeMs = Math.max(mtimeMs, st.mtimeMs);
    }
  }
  return { size, mtimeMs };
}

/** scanTagDir lists what a tag folder holds now (regular files and folders; symlinks are skipped). */
export async function scanTagDir(dir: string, log: Logger = nullLogger): Promise<StagedEntry[]> {
  const out: StagedEntry[] = [];
  let list: Dirent[];
  try {
    list = await fsp.readdir(dir, { withFileTypes: true });
  } catch {
    return [];
  }
  for (const e of list) {
    if (isIgnoredName(e.name)) continue;
    const p = path.join(dir, e.name);
    if (e.isSymbolicLink()) {
      log.warn(`staging: skipping symlink ${p}`);
      continue;
    }
    try {
      if (e.isFile()) {
        const st = await fsp.lstat(p);
        out.push({ name: e.name, kind: 'file', size: st.size, mtimeMs: st.mtimeMs });
      } else if (e.isDirectory()) {
        out.push({ name: e.name, kind: 'dir', ...(await subtree(p)) });
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
      found.push({ repository, tag, dir, entries: await scanTagDir(dir, log) });
      return;
    }
    if (depth > 32) return;
    for (const e of visible) if (e.isDirectory()) await walk(path.join(dir, e.name), depth + 1);
  };
  await walk(root, 0);
  return found;
}

/** fingerprint is a stable hash of a tag folder's names, kinds, sizes and mtimes. */
export function fingerprint(entries: StagedEntry[]): string {
  return createHash('sha256').update(JSON.stringify(entries.map((e) => [e.name, e.kind, e.size, Math.round(e.mtimeMs)]))).digest('hex').slice(0, 32);
}

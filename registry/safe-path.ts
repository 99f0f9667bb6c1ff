import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { RegfsError } from '../util/errors.js';
import { ioError } from '../util/errors.js';

/*
 * Layer titles (`org.opencontainers.image.title`) and tar entry names are chosen by whoever pushed the
 * artifact, so they are attacker-controlled: CVE-2021-21272 (ORAS path traversal through tar symlinks) and
 * the later oras-go advisories all come from trusting them. Everything here is about keeping such a name
 * inside a destination directory.
 */

/** MAX_SEGMENT_BYTES is the longest single path component accepted (NAME_MAX on Linux), in UTF-8 bytes. */
export const MAX_SEGMENT_BYTES = 255;

/** MAX_PATH_BYTES is the longest whole relative path accepted (PATH_MAX on Linux), in UTF-8 bytes. */
export const MAX_PATH_BYTES = 4096;

// C0 controls (NUL included), DEL and C1 controls.
const CONTROL_RE = /[\u0000-\u001f\u007f-\u009f]/;
// A lone surrogate cannot be encoded as UTF-8; Node would silently turn it into U+FFFD.
const LONE_SURROGATE_RE = /\p{Cs}/u;

function unsafe(title: string, reason: string): RegfsError {
  const shown = JSON.stringify(title.length > 80 ? title.slice(0, 80) + '…' : title);
  return new RegfsError('UNSAFE_PATH', `unsafe path ${shown}: ${reason}`);
}

/**
 * checkTitle validates an attacker-controlled, slash-separated relative path (a layer title or tar entry
 * name) and returns it normalised: `.` segments and duplicate slashes collapsed, a trailing slash dropped.
 * It throws RegfsError('UNSAFE_PATH') for an empty path, `.`, any `..` segment, an absolute path, a backslash,
 * a NUL or other control character, a lone surrogate, a segment over 255 UTF-8 bytes or a path over 4096.
 */
export function checkTitle(title: string): string {
  if (typeof title !== 'string') throw unsafe(String(title), 'not a string');
  if (title === '') throw unsafe(title, 'empty path');
  if (CONTROL_RE.test(title)) throw unsafe(title, 'contains a NUL or control character');
  if (LONE_SURROGATE_RE.test(title)) throw unsafe(title, 'contains an unpaired surrogate (not valid Unicode)');
  if (title.includes('\\')) throw unsafe(title, 'contains a backslash');
  if (title.startsWith('/')) throw unsafe(title, 'absolute path');
  const segments: string[] = [];
  for (const seg of title.split('/')) {
    if (seg === '' || seg === '.') continue;
    if (seg === '..') throw unsafe(title, "contains a '..' segment");
    if (Buffer.byteLength(seg, 'utf8') > MAX_SEGMENT_BYTES) {
      throw unsafe(title, `a path segment is longer than ${MAX_SEGMENT_BYTES} bytes`);
    }
    segments.push(seg);
  }
  if (segments.length === 0) throw unsafe(title, "refers to '.' (the destination itself)");
  const normalized = segments.join('/');
  if (Buffer.byteLength(normalized, 'utf8') > MAX_PATH_BYTES) {
    throw unsafe(title, `path is longer than ${MAX_PATH_BYTES} bytes`);
  }
  return normalized;
}

/** splitRel checks rel (with `''` and `.` meaning the root itself) and returns its segments. */
function splitRel(rel: string): string[] {
  if (rel === '' || rel === '.') return [];
  return checkTitle(rel).split('/');
}

function assertInside(root: string, abs: string, rel: string): void {
  const r = path.relative(root, abs);
  if (r === '..' || r.startsWith('..' + path.sep) || path.isAbsolute(r)) {
    throw unsafe(rel, `resolves outside ${JSON.stringify(root)}`);
  }
}

/**
 * resolveInside joins a relative path (validated with checkTitle; `''` or `.` mean root itself) to root and
 * returns the absolute result. It lstats every existing component below root, the final one included, and
 * throws UNSAFE_PATH when one is a symlink, so nothing is ever written through a link; missing components are
 * fine (the caller creates them, e.g. with mkdirInside). Root itself is trusted and may be a symlink.
 */
export async function resolveInside(root: string, rel: string): Promise<string> {
  const base = path.resolve(root);
  const segments = splitRel(rel);
  let cur = base;
  let checking = true;
  for (const seg of segments) {
    cur = path.join(cur, seg);
    if (!checking) continue;
    let st;
    try {
      st = await fsp.lstat(cur);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      // Nothing below a missing (or non-directory) component can exist.
      if (code === 'ENOENT' || code === 'ENOTDIR') {
        checking = false;
        continue;
      }
      throw ioError(`cannot inspect ${JSON.stringify(cur)}`, err);
    }
    if (st.isSymbolicLink()) {
      throw unsafe(rel, `component ${JSON.stringify(path.relative(base, cur))} is a symbolic link`);
    }
  }
  assertInside(base, cur, rel);
  return cur;
}

/**
 * mkdirInside creates relDir below root one component at a time (never `mkdir -p` through an existing path),
 * throwing UNSAFE_PATH if any existing component is a symlink and IO if one is not a directory; `''` or `.`
 * mean root itself, which must exist. It returns the absolute directory path.
 */
export async function mkdirInside(root: string, relDir: string): Promise<string> {
  const base = path.resolve(root);
  const segments = splitRel(relDir);
  let cur = base;
  for (const seg of segments) {
    cur = path.join(cur, seg);
    let created = false;
    try {
      await fsp.mkdir(cur);
      created = true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw ioError(`cannot create directory ${JSON.stringify(cur)}`, err);
    }
    if (created) continue;
    let st;
    try {
      st = await fsp.lstat(cur);
    } catch (err) {
      throw ioError(`cannot inspect ${JSON.stringify(cur)}`, err);
    }
    if (st.isSymbolicLink()) {
      throw unsafe(relDir, `component ${JSON.stringify(path.relative(base, cur))} is a symbolic link`);
    }
    if (!st.isDirectory()) {
      throw new RegfsError('IO', `cannot create directory ${JSON.stringify(cur)}: it exists and is not a directory`);
    }
  }
  assertInside(base, cur, relDir);
  return cur;
}

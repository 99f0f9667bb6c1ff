import { createReadStream, promises as fsp } from 'node:fs';
import path from 'node:path';
import { Annotation } from '../registry/media-types.js';
import { hashStream } from '../registry/pack.js';
import { isTag } from '../registry/reference.js';
import { unpublishableReason } from '../registry/publishable.js';
import { packDirectory, packDirectoryGzip } from '../registry/tar-pack.js';
import { RegfsError } from '../util/errors.js';
import type { Logger } from '../util/log.js';
import { fingerprint, isIgnoredName, scanTagDir, type StagedEntry } from '../staging/layout.js';
import type { TagLayer } from '../staging/tag-artifact.js';

/** OUR_TEMP matches the hidden `.<name>.<12 hex>.part|old|deleted` entries a pull or a delete works in (cleared by the next round). */
export const OUR_TEMP = /^\..+\.[0-9a-f]{12}\.(part|old|deleted)$/;

/** LocalTag is a tag folder of a pair's local folder as a round found it. */
export interface LocalTag {
  dir: string;
  entries: StagedEntry[];
  fp: string;
}

/** LocalScan is what scanLocalTags needs to know of a pair. */
export interface LocalScan {
  root: string;
  display: string;
  matches(tag: string): boolean;
  log: Logger;
  /** warnOnce logs a warning once per key (a lasting problem is not logged every round). */
  warnOnce(key: string, msg: string): void;
}

/**
 * scanLocalTags lists the tag folders of a pair's local folder, after clearing what an interrupted round
 * left; a missing local folder is an error (never "every tag deleted").
 */
export async function scanLocalTags(pair: LocalScan): Promise<Map<string, LocalTag>> {
  const out = new Map<string, LocalTag>();
  const root = pair.root;
  // A missing folder (a disk not mounted, a wrong path) is not "every tag deleted": never act on that.
  if (!(await fsp.stat(root).catch(() => undefined))?.isDirectory()) {
    throw new RegfsError('NOT_FOUND', `the sync folder ${root} is missing; nothing is deleted or restored until it is back (or the pair is removed and added again)`);
  }
  // What an interrupted pull or delete left: a half-written folder goes; an old folder moved aside while
  // its replacement was not yet in place comes back (the round then pulls or deletes it again).
  for (const e of await fsp.readdir(root, { withFileTypes: true })) {
    const m = OUR_TEMP.exec(e.name);
    if (!m || !e.isDirectory()) continue;
    const tag = e.name.slice(1, -(m[1]!.length + 14));
    const abs = path.join(root, e.name);
    if (m[1] === 'deleted' && isTag(tag) && !(await fsp.lstat(path.join(root, tag)).catch(() => undefined))) {
      await fsp.rename(abs, path.join(root, tag));
      pair.log.info(`sync ${pair.display}: put back ${path.join(root, tag)}, moved aside by an interrupted round`);
    } else {
      await fsp.rm(abs, { recursive: true, force: true });
    }
  }
  for (const e of await fsp.readdir(root, { withFileTypes: true })) {
    if (!e.isDirectory() || isIgnoredName(e.name)) continue;
    if (!isTag(e.name)) {
      pair.warnOnce(`name:${e.name}`, `sync ${pair.display}: skipping ${e.name}: not a valid tag ([A-Za-z0-9_][A-Za-z0-9_.-]*, at most 128 characters)`);
      continue;
    }
    if (!pair.matches(e.name)) continue;
    const dir = path.join(root, e.name);
    const entries = await scanTagDir(dir);
    // An empty folder holds nothing to sync: it is not a tag (yet).
    if (entries.length) out.set(e.name, { dir, entries, fp: fingerprint(entries) });
  }
  return out;
}

/** stillQuiet tells whether a tag folder is unchanged since it was scanned. */
export async function stillQuiet(l: LocalTag, log: Logger): Promise<boolean> {
  return fingerprint(await scanTagDir(l.dir)) === l.fp;
}

/** freeName returns `name`, or `name-2`, `name-3`... when a folder of that name exists already. */
export async function freeName(root: string, name: string): Promise<string> {
  for (let i = 1; ; i++) {
    const candidate = i === 1 ? name : `${name}-${i}`;
    if (!(await fsp.lstat(path.join(root, candidate)).catch(() => undefined))) return candidate;
  }
}

/** coverage lists a manifest's file titles, folder titles and the folders above them. */
function coverage(layers: TagLayer[]): { files: Set<string>; dirs: Set<string>; parents: Set<string> } {
  const files = new Set(layers.filter((l) => !l.dir).map((l) => l.title));
  const dirs = new Set(layers.filter((l) => l.dir).map((l) => l.title));
  const parents = new Set<string>();
  for (const l of layers) {
    const parts = l.title.split('/');
    for (let i = 1; i < parts.length; i++) parents.add(parts.slice(0, i).join('/'));
  }
  return { files, dirs, parents };
}

/**
 * sameContent tells whether a tag folder holds exactly the manifest's files: every file layer's bytes hash
 * to its digest, every folder layer packs to the same tar (ORAS's tar digest annotation, else the gzip
 * digest; packed with staging's rule, as a push would), and no other file is there. Hidden and temp files, and
 * entries that are not published (symlinks, special files, bad names), do not count.
 */
export async function sameContent(root: string, layers: TagLayer[]): Promise<boolean> {
  const { files, dirs, parents } = coverage(layers);
  for (const l of layers) {
    const abs = path.join(root, l.title);
    const st = await fsp.lstat(abs).catch(() => undefined);
    if (l.dir) {
      if (!st?.isDirectory()) return false;
      const tarDigest = l.desc.annotations?.[Annotation.digestAnnotation];
      // Packed as a push from this folder would pack it (only publishable entries: registry/publishable.ts).
      const opts = { prefix: l.title, publishableOnly: true };
      const got = tarDigest ? await hashStream(packDirectory(abs, opts)) : await hashStream(packDirectoryGzip(abs, opts));
      if (got.digest !== (tarDigest ?? l.desc.digest)) return false;
    } else {
      if (!st?.isFile() || st.size !== l.desc.size) return false;
      if ((await hashStream(createReadStream(abs))).digest !== l.desc.digest) return false;
    }
  }
  const extra = async (rel: string): Promise<boolean> => {
    for (const e of await fsp.readdir(rel ? path.join(root, rel) : root, { withFileTypes: true })) {
      if (isIgnoredName(e.name)) continue;
      const p = rel ? `${rel}/${e.name}` : e.name;
      if (files.has(p) || dirs.has(p)) continue;
      if (parents.has(p) && e.isDirectory()) {
        if (await extra(p)) return true;
        continue;
      }
      if ((e.isFile() || e.isDirectory()) && unpublishableReason(e.name, e) === undefined) return true;
    }
    return false;
  };
  return !(await extra(''));
}

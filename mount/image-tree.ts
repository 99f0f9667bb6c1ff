import type { LayerToc, TocEntry } from '../cache/layer-toc.js';

/*
 * The pure merge of an image's layer TOCs (lowest first) into the filesystem a container runtime sees:
 * per the OCI image spec, a layer's `.wh.NAME` removes NAME from the layers below, `.wh..wh..opq` in a
 * directory removes everything the layers below put in it, and neither marker is ever shown. An entry
 * replaces what lower layers had at its path (a directory over a directory keeps the children).
 */

/** Meta is what a tar header says about an entry. */
export interface Meta {
  mode: number;
  uid: number;
  gid: number;
  mtime: number;
}

export interface RootDir {
  kind: 'dir';
  meta: Meta;
  children: Map<string, RootNode>;
}
export interface RootFile {
  kind: 'file';
  meta: Meta;
  size: number;
  hash: string;
  /** src is where the file's bytes are: its layer's TOC and the entry holding the data (a hard link's target). */
  src: { toc: LayerToc; entry: TocEntry };
  /** link is the hard-link group, shared by a file and its hard links; nlink counts the group's members in the tree. */
  link: { nlink: number };
}
export interface RootLink {
  kind: 'symlink';
  meta: Meta;
  target: string;
}
export type RootNode = RootDir | RootFile | RootLink;

const WH = '.wh.';
const OPAQUE = '.wh..wh..opq';

const IMPLICIT_DIR: Meta = { mode: 0o755, uid: 0, gid: 0, mtime: 0 };

function metaOf(e: TocEntry): Meta {
  return { mode: e.m, uid: e.u, gid: e.g, mtime: e.mt };
}

function newDir(meta: Meta): RootDir {
  return { kind: 'dir', meta, children: new Map() };
}

/** dirAt walks to the directory at parts, creating (or replacing non-directories with) implicit ones when create. */
function dirAt(root: RootDir, parts: string[], create: boolean): RootDir | undefined {
  let dir = root;
  for (const part of parts) {
    const next = dir.children.get(part);
    if (next?.kind === 'dir') dir = next;
    else if (!create) return undefined;
    else {
      const d = newDir(IMPLICIT_DIR);
      dir.children.set(part, d);
      dir = d;
    }
  }
  return dir;
}

/** mergeLayers builds the rootfs tree from the TOCs of an image's layers, lowest first. */
export function mergeLayers(tocs: LayerToc[]): RootDir {
  const root = newDir(IMPLICIT_DIR);
  for (const toc of tocs) {
    // Markers first: they apply to the layers below only, never to entries of their own layer.
    for (const e of toc.entries) {
      const parts = e.p.split('/');
      const leaf = parts.pop()!;
      if (!leaf.startsWith(WH)) continue;
      const dir = dirAt(root, parts, false);
      if (!dir) continue;
      if (leaf === OPAQUE) dir.children.clear();
      else dir.children.delete(leaf.slice(WH.length));
    }
    const groups = new Map<string, { nlink: number }>();
    const files = new Map<string, TocEntry>();
    for (const e of toc.entries) {
      const parts = e.p.split('/');
      const leaf = parts.pop()!;
      if (leaf.startsWith(WH)) {
        // The marker's own directory still exists (an opaque directory is shown, empty of lower entries).
        if (leaf === OPAQUE) dirAt(root, parts, true);
        continue;
      }
      const dir = dirAt(root, parts, true)!;
      const old = dir.children.get(leaf);
      if (e.t === 'd') {
        if (old?.kind === 'dir') old.meta = metaOf(e);
        else dir.children.set(leaf, newDir(metaOf(e)));
      } else if (e.t === 'l') {
        dir.children.set(leaf, { kind: 'symlink', meta: metaOf(e), target: e.l ?? '' });
      } else {
        const key = e.t === 'h' ? e.l! : e.p;
        let link = groups.get(key);
        if (!link) {
          link = { nlink: 0 };
          groups.set(key, link);
        }
        groups.set(e.p, link);
        // A hard link is the same inode as its target: it shows the target's mode and owner.
        const target = e.t === 'h' ? files.get(e.l!) : undefined;
        files.set(e.p, target ?? e);
        dir.children.set(leaf, { kind: 'file', meta: metaOf(target ?? e), size: e.s ?? 0, hash: e.h ?? '', src: { toc, entry: target ?? e }, link });
      }
    }
  }
  countLinks(root);
  return root;
}

function countLinks(root: RootDir): void {
  const all: RootFile[] = [];
  const walk = (d: RootDir): void => {
    for (const c of d.children.values()) {
      if (c.kind === 'dir') walk(c);
      else if (c.kind === 'file') {
        c.link.nlink = 0;
        all.push(c);
      }
    }
  };
  walk(root);
  for (const f of all) f.link.nlink++;
}

/** findNode walks the merged tree; undefined when a component is missing or not a directory. */
export function findNode(root: RootDir, parts: string[]): RootNode | undefined {
  let node: RootNode = root;
  for (const part of parts) {
    if (node.kind !== 'dir') return undefined;
    const next: RootNode | undefined = node.children.get(part);
    if (!next) return undefined;
    node = next;
  }
  return node;
}

import type { Descriptor } from '../registry/descriptor.js';
import type { Manifest } from '../registry/manifest.js';
import { Annotation } from '../registry/media-types.js';
import { checkTitle } from '../registry/safe-path.js';

/** TreeDir is a directory inside an artifact's tree. */
export interface TreeDir {
  kind: 'dir';
  children: Map<string, TreeNode>;
}

/** TreeFile is a layer shown as a file. */
export interface TreeFile {
  kind: 'file';
  layer: Descriptor;
}

/** TreeLayerDir is a directory layer (tar+gzip with the unpack annotation), extracted on first access. */
export interface TreeLayerDir {
  kind: 'layer-dir';
  layer: Descriptor;
  /** prefix is the tar entry prefix (the layer's title). */
  prefix: string;
}

/** TreeChild is a manifest listed by an index, shown as a directory. */
export interface TreeChild {
  kind: 'child';
  desc: Descriptor;
}

/** TreeNode is any node of an artifact's tree. */
export type TreeNode = TreeDir | TreeFile | TreeLayerDir | TreeChild;

/** ManifestTree is the directory tree a manifest shows, and the layers it had to hide. */
export interface ManifestTree {
  root: TreeDir;
  warnings: string[];
}

function newDir(): TreeDir {
  return { kind: 'dir', children: new Map() };
}

/** platformName renders an index entry's platform as a directory name, e.g. `linux-arm64-v8`. */
export function platformName(d: Descriptor): string | undefined {
  const p = d.platform;
  if (!p?.os || !p.architecture) return undefined;
  const name = [p.os, p.architecture, p.variant].filter(Boolean).join('-');
  return /^[A-Za-z0-9._-]{1,255}$/.test(name) ? name : undefined;
}

/**
 * buildManifestTree is the pure function from a manifest to the tree the mount shows:
 * titled layers become files at their (checked) title paths, directory layers become directories,
 * a manifest without any titled layer shows each layer as `sha256:<hex>`, and an index shows its
 * manifests by platform (or digest). Unsafe or colliding titles are hidden, with a warning each.
 */
export function buildManifestTree(m: Manifest): ManifestTree {
  const root = newDir();
  const warnings: string[] = [];
  if (m.kind === 'index') {
    for (const d of m.manifests) {
      let name = platformName(d) ?? d.digest;
      if (root.children.has(name)) name = d.digest;
      if (root.children.has(name)) continue;
      root.children.set(name, { kind: 'child', desc: d });
    }
    return { root, warnings };
  }
  const titled = m.layers.filter((l) => l.annotations?.[Annotation.title] !== undefined);
  if (titled.length === 0) {
    // The empty layer ORAS puts in an artifact without files (application/vnd.oci.empty.v1+json, `{}`) is not shown.
    for (const l of m.layers) if (l.mediaType !== 'application/vnd.oci.empty.v1+json' && !root.children.has(l.digest)) root.children.set(l.digest, { kind: 'file', layer: l });
    return { root, warnings };
  }
  for (const layer of titled) {
    const raw = layer.annotations![Annotation.title]!;
    let title: string;
    try {
      title = checkTitle(raw);
    } catch (err) {
      warnings.push(`hiding layer ${layer.digest}: ${(err as Error).message}`);
      continue;
    }
    const parts = title.split('/');
    let dir = root;
    let blocked = false;
    for (const part of parts.slice(0, -1)) {
      const next = dir.children.get(part);
      if (next === undefined) {
        const d = newDir();
        dir.children.set(part, d);
        dir = d;
      } else if (next.kind === 'dir') {
        dir = next;
      } else {
        blocked = true;
        break;
      }
    }
    const leaf = parts[parts.length - 1]!;
    if (blocked || dir.children.has(leaf)) {
      warnings.push(`hiding layer ${layer.digest}: title ${JSON.stringify(title)} collides with another layer`);
      continue;
    }
    const unpack = layer.annotations?.[Annotation.unpack] === 'true';
    dir.children.set(leaf, unpack ? { kind: 'layer-dir', layer, prefix: title } : { kind: 'file', layer });
  }
  return { root, warnings };
}

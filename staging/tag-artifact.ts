/**
 * The one definition of "the manifest a staging tag folder is pushed as": one layer per entry of the tag
 * folder, titled by its name (a file is an `ociLayerTar` blob of its bytes, a folder a tar+gzip layer with
 * the unpack and tar-digest annotations, as ORAS pushes a directory), the ORAS empty config and the unknown
 * artifact type, no other annotation. `rebuildable` is its reverse: which manifests a tag folder can hold
 * and push again without losing anything that matters.
 */
import type { Descriptor } from '../registry/descriptor.js';
import { digestOf, type Digest } from '../registry/digest.js';
import type { Manifest } from '../registry/manifest.js';
import { Annotation, EMPTY_CONFIG, MediaType } from '../registry/media-types.js';
import { buildManifest, EMPTY_CONFIG_DESCRIPTOR, prepareFile, type PreparedBlob } from '../registry/pack.js';
import { checkTitle } from '../registry/safe-path.js';
import { TAG_MARKER, type StagedEntry } from './layout.js';

/** TAG_ARTIFACT_TYPE is the artifactType of a tag folder's manifest. */
export const TAG_ARTIFACT_TYPE = MediaType.unknownArtifact;

/** TAG_CONFIG is the config descriptor of a tag folder's manifest (the ORAS empty config, `{}`). */
export const TAG_CONFIG: Descriptor = EMPTY_CONFIG_DESCRIPTOR;

/** TAG_CONFIG_BYTES are the bytes of TAG_CONFIG, uploaded with every push. */
export const TAG_CONFIG_BYTES = Buffer.from('{}');

/** fileLayer is the layer descriptor of a regular file `title` of a tag folder with these bytes. */
export function fileLayer(title: string, digest: Digest, size: number): Descriptor {
  return { mediaType: MediaType.ociLayerTar, digest, size, annotations: { [Annotation.title]: title } };
}

/**
 * prepareEntry hashes one entry of a tag folder into its layer (a folder becomes a tar+gzip layer with the
 * unpack annotation, see registry/pack.ts prepareFile, holding only what registry/publishable.ts allows) and a
 * way to open its bytes. A tag marker below the tag level (mkdir wrote it while the folder looked like a tag
 * folder of a nested repository, before a file landed at the tag level) is staging's, never published.
 */
export function prepareEntry(dir: string, entry: Pick<StagedEntry, 'name'>): Promise<PreparedBlob> {
  return prepareFile({ path: entry.name }, dir, undefined, { publishableOnly: true, omitNames: [TAG_MARKER] });
}

/** tagManifest serialises the manifest of a tag folder whose entries became these layers (in entry order). */
export function tagManifest(layers: Descriptor[]): Buffer {
  return buildManifest({ config: TAG_CONFIG, layers, artifactType: TAG_ARTIFACT_TYPE });
}

/** tagManifestDigest hashes a tag folder's entries and returns the digest of the manifest it would be pushed as (nothing is uploaded). */
export async function tagManifestDigest(dir: string, entries: Array<Pick<StagedEntry, 'name'>>): Promise<Digest> {
  const layers: Descriptor[] = [];
  for (const e of entries) layers.push((await prepareEntry(dir, e)).desc);
  return digestOf(tagManifest(layers));
}

/** TagLayer is one titled layer of a manifest read back as a tag folder entry. */
export interface TagLayer {
  /** title is the checked relative path the layer is written to. */
  title: string;
  /** dir is true for a folder layer (the unpack annotation). */
  dir: boolean;
  desc: Descriptor;
}

/** titledLayers returns the titled layers of a manifest as tag folder entries, or undefined when it is no file artifact (an index, no titled layer). */
export function titledLayers(m: Manifest): TagLayer[] | undefined {
  const layers = m.kind === 'manifest' ? m.layers.filter((l) => l.annotations?.[Annotation.title] !== undefined) : [];
  if (!layers.length) return undefined;
  return layers.map((l) => ({ title: checkTitle(l.annotations![Annotation.title]!), dir: l.annotations?.[Annotation.unpack] === 'true', desc: l }));
}

/** Rebuildable is rebuildable's verdict on a manifest. */
export type Rebuildable =
  | {
      ok: true;
      /** layers are the manifest's layers with their checked titles. */
      layers: Array<{ layer: Descriptor; title: string }>;
      /** lossy is true when a push from staging would drop its artifact type, layer media types or annotations. */
      lossy: boolean;
    }
  | { ok: false; why: string };

/**
 * rebuildable tells whether the staging rules can push a manifest again: not an index, no subject, the empty
 * config, every layer titled, and no layer hidden by the tree the mount shows (`treeWarning`, the mount's
 * first warning of buildManifestTree, passed in because that tree belongs to the mount layer). It returns
 * the layers, and whether the push would drop metadata besides file names (lossy).
 */
export function rebuildable(m: Manifest, treeWarning: (m: Manifest) => string | undefined): Rebuildable {
  let why: string | undefined;
  if (m.kind === 'index') why = 'it is an index (one manifest per platform)';
  else if (m.subject) why = 'it refers to another manifest (subject), which a push from staging would drop';
  else if (m.config.digest !== EMPTY_CONFIG.digest) why = `its config blob (${m.config.mediaType}) would be lost`;
  else if (m.layers.some((l) => l.annotations?.[Annotation.title] === undefined)) why = 'some of its layers have no file name (title annotation)';
  else why = treeWarning(m);
  if (why || m.kind === 'index') return { ok: false, why: why ?? 'index' };
  const lossy = (m.artifactType !== undefined && m.artifactType !== TAG_ARTIFACT_TYPE) ||
    Object.keys(m.annotations ?? {}).some((k) => k !== Annotation.created) ||
    m.layers.some((l) => {
      const unpack = l.annotations?.[Annotation.unpack] === 'true';
      const extra = Object.keys(l.annotations ?? {}).some((k) => k !== Annotation.title && k !== Annotation.unpack && k !== Annotation.digestAnnotation);
      return extra || l.mediaType !== (unpack ? MediaType.ociLayerTarGzip : MediaType.ociLayerTar);
    });
  return { ok: true, layers: m.layers.map((layer) => ({ layer, title: checkTitle(layer.annotations![Annotation.title]!) })), lossy };
}

/** lossyPushWarning is what the mount logs (once per manifest) when rebuildable found a lossy manifest. */
export function lossyPushWarning(ref: string, digest: string): string {
  return `${ref}: the next push from staging uses the default artifact type, layer media types and no annotations besides file names; those of ${digest} are not kept`;
}

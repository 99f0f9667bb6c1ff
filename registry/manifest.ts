import { parseAnnotations, parseDescriptor, isMediaType, type Descriptor } from './descriptor.js';
import { RegfsError } from '../util/errors.js';
import { MediaType, isIndexMediaType } from './media-types.js';

/** ImageManifest is an OCI image manifest or a Docker schema 2 manifest. */
export interface ImageManifest {
  kind: 'manifest';
  schemaVersion: 2;
  mediaType: string;
  artifactType?: string;
  config: Descriptor;
  layers: Descriptor[];
  subject?: Descriptor;
  annotations?: Record<string, string>;
}

/** ImageIndex is an OCI image index or a Docker manifest list. */
export interface ImageIndex {
  kind: 'index';
  schemaVersion: 2;
  mediaType: string;
  artifactType?: string;
  manifests: Descriptor[];
  subject?: Descriptor;
  annotations?: Record<string, string>;
}

/** Manifest is either kind of manifest, parsed and validated. */
export type Manifest = ImageManifest | ImageIndex;

/**
 * parseManifest validates untrusted manifest bytes. `contentType` is the media type the server or
 * index declared; a body whose own mediaType contradicts it, or that holds both `layers` and
 * `manifests`, is rejected (the CVE-2021-41190 class of ambiguity).
 */
export function parseManifest(body: Uint8Array, contentType?: string): Manifest {
  let raw: unknown;
  try {
    raw = JSON.parse(Buffer.from(body).toString('utf8'));
  } catch {
    throw new RegfsError('INVALID_MANIFEST', 'manifest is not valid JSON');
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
    throw new RegfsError('INVALID_MANIFEST', 'manifest is not a JSON object');
  }
  const r = raw as Record<string, unknown>;
  if (r.schemaVersion !== 2) throw new RegfsError('INVALID_MANIFEST', `unsupported manifest schemaVersion ${JSON.stringify(r.schemaVersion)}`);
  if ('layers' in r && 'manifests' in r) {
    throw new RegfsError('INVALID_MANIFEST', 'manifest has both "layers" and "manifests"; refusing an ambiguous document');
  }
  const ct = normaliseContentType(contentType);
  let mediaType: string | undefined = typeof r.mediaType === 'string' ? r.mediaType : undefined;
  if (r.mediaType !== undefined && !isMediaType(r.mediaType)) throw new RegfsError('INVALID_MANIFEST', 'manifest mediaType is invalid');
  if (mediaType && ct && isKnownManifestType(ct) && ct !== mediaType) {
    throw new RegfsError('INVALID_MANIFEST', `manifest mediaType ${mediaType} contradicts Content-Type ${ct}`);
  }
  const isIndex = 'manifests' in r;
  if (!mediaType) mediaType = ct && isKnownManifestType(ct) ? ct : isIndex ? MediaType.ociIndex : MediaType.ociManifest;
  if (isIndex !== isIndexMediaType(mediaType)) {
    throw new RegfsError('INVALID_MANIFEST', `manifest body does not match its media type ${mediaType}`);
  }
  const common = {
    schemaVersion: 2 as const,
    mediaType,
    ...(r.artifactType !== undefined ? { artifactType: checkedType(r.artifactType) } : {}),
    ...(r.subject !== undefined ? { subject: parseDescriptor(r.subject, 'subject') } : {}),
    ...(r.annotations !== undefined ? { annotations: parseAnnotations(r.annotations, 'manifest') } : {}),
  };
  if (isIndex) {
    if (!Array.isArray(r.manifests)) throw new RegfsError('INVALID_MANIFEST', 'index "manifests" is not an array');
    return { kind: 'index', ...common, manifests: r.manifests.map((m, i) => parseDescriptor(m, `manifests[${i}]`)) };
  }
  if (!Array.isArray(r.layers)) throw new RegfsError('INVALID_MANIFEST', 'manifest "layers" is missing or not an array');
  return {
    kind: 'manifest',
    ...common,
    config: parseDescriptor(r.config, 'config'),
    layers: r.layers.map((l, i) => parseDescriptor(l, `layers[${i}]`)),
  };
}

function checkedType(t: unknown): string {
  if (!isMediaType(t)) throw new RegfsError('INVALID_MANIFEST', 'manifest artifactType is invalid');
  return t;
}

function isKnownManifestType(t: string): boolean {
  return t === MediaType.ociManifest || t === MediaType.ociIndex || t === MediaType.dockerManifest || t === MediaType.dockerManifestList;
}

/** normaliseContentType strips parameters (`; charset=...`) from a Content-Type. */
export function normaliseContentType(ct: string | undefined | null): string | undefined {
  if (!ct) return undefined;
  return ct.split(';')[0]!.trim().toLowerCase() || undefined;
}

/** artifactTypeOf returns what an artifact is: its artifactType, else its config media type. */
export function artifactTypeOf(m: Manifest): string | undefined {
  if (m.artifactType) return m.artifactType;
  return m.kind === 'manifest' ? m.config.mediaType : undefined;
}


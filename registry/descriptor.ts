import { parseDigest, type Digest } from './digest.js';
import { RegfsError } from '../util/errors.js';

/** Platform says which OS and architecture a manifest in an index is for. */
export interface Platform {
  architecture: string;
  os: string;
  variant?: string;
  'os.version'?: string;
}

/** parsePlatform reads a `--platform` value `os/arch[/variant]`. */
export function parsePlatform(s: string): Platform {
  const parts = s.split('/');
  if (parts.length < 2 || parts.length > 3 || parts.some((p) => !/^[A-Za-z0-9._-]+$/.test(p))) {
    throw new RegfsError('INVALID_ARGUMENT', `invalid --platform ${JSON.stringify(s)}: expected os/arch[/variant], e.g. linux/amd64 or linux/arm64/v8`);
  }
  return { os: parts[0]!, architecture: parts[1]!, ...(parts[2] ? { variant: parts[2] } : {}) };
}

/** platformString renders os/arch[/variant]. */
export function platformString(p: Platform): string {
  return [p.os, p.architecture, p.variant].filter(Boolean).join('/');
}

/** platformMatches tells whether an index entry is for `want` (no variant wanted: any variant). */
export function platformMatches(d: Descriptor, want: Platform): boolean {
  return d.platform?.os === want.os && d.platform.architecture === want.architecture && (want.variant === undefined || d.platform.variant === want.variant);
}

/** Descriptor points at content by media type, digest and size (OCI image spec). */
export interface Descriptor {
  mediaType: string;
  digest: Digest;
  size: number;
  annotations?: Record<string, string>;
  artifactType?: string;
  platform?: Platform;
  urls?: string[];
  /** data is the optional embedded base64 content. */
  data?: string;
}

const MEDIA_TYPE_RE = /^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}\/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}$/;

/** isMediaType tells whether s follows RFC 6838's type/subtype grammar. */
export function isMediaType(s: unknown): s is string {
  return typeof s === 'string' && MEDIA_TYPE_RE.test(s);
}


/** parseDescriptor validates an untrusted descriptor: digest grammar, integer size, media type, string annotations. */
export function parseDescriptor(raw: unknown, where: string): Descriptor {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
    throw new RegfsError('INVALID_MANIFEST', `${where} is not an object`);
  }
  const r = raw as Record<string, unknown>;
  if (!isMediaType(r.mediaType)) {
    throw new RegfsError('INVALID_MANIFEST', `${where} has an invalid mediaType ${JSON.stringify(r.mediaType)}`);
  }
  // A bad digest inside a document is a bad document (EIO, exit 1), not a bad argument from the user.
  let digest: Digest;
  try {
    digest = parseDigest(r.digest, `${where} digest`);
  } catch (err) {
    throw new RegfsError('INVALID_MANIFEST', (err as Error).message);
  }
  const size = r.size;
  if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0) {
    throw new RegfsError('INVALID_MANIFEST', `${where} has an invalid size ${JSON.stringify(size)}: expected a non-negative integer`);
  }
  const d: Descriptor = { mediaType: r.mediaType, digest, size };
  if (r.annotations !== undefined) d.annotations = parseAnnotations(r.annotations, where);
  if (r.artifactType !== undefined) {
    if (!isMediaType(r.artifactType)) throw new RegfsError('INVALID_MANIFEST', `${where} has an invalid artifactType`);
    d.artifactType = r.artifactType;
  }
  if (r.platform !== undefined) d.platform = r.platform as Platform;
  if (Array.isArray(r.urls)) d.urls = r.urls.filter((u): u is string => typeof u === 'string');
  if (typeof r.data === 'string') d.data = r.data;
  return d;
}

/** parseAnnotations validates an annotation map: string keys to string values. */
export function parseAnnotations(raw: unknown, where: string): Record<string, string> {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
    throw new RegfsError('INVALID_MANIFEST', `${where} annotations are not an object`);
  }
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(raw)) {
    if (typeof v !== 'string') throw new RegfsError('INVALID_MANIFEST', `${where} annotation ${JSON.stringify(k)} is not a string`);
    out[k] = v;
  }
  return out;
}

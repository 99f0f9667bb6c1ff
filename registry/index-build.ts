/**
 * Building and editing image indexes from manifests already in a repository (ORAS 1.3's
 * `manifest index create|update`). Image manifests get a platform read from their config
 * (os/architecture/variant), when the config is an image config that has one.
 */
import type { Descriptor, Platform } from './descriptor.js';
import type { Repository } from './storage.js';
import type { FetchedManifest } from './storage.js';
import { MediaType } from './media-types.js';
import { RegfsError } from '../util/errors.js';
import { isDigest } from './digest.js';

const IMAGE_CONFIGS = new Set(['application/vnd.oci.image.config.v1+json', 'application/vnd.docker.container.image.v1+json']);
const CONFIG_CAP = 1024 * 1024;

/** IndexBody is what an index holds besides its fixed fields. */
export interface IndexBody {
  manifests: Descriptor[];
  annotations?: Record<string, string>;
  artifactType?: string;
}

async function readAll(stream: NodeJS.ReadableStream): Promise<Buffer> {
  const parts: Buffer[] = [];
  let n = 0;
  for await (const c of stream) {
    const b = Buffer.isBuffer(c) ? c : Buffer.from(c as string);
    n += b.length;
    if (n > CONFIG_CAP) throw new RegfsError('TOO_LARGE', `config blob larger than ${CONFIG_CAP} bytes`);
    parts.push(b);
  }
  return Buffer.concat(parts);
}

/** platformOf reads the platform of an image manifest from its config; undefined for artifacts. */
export async function platformOf(repo: Repository, m: FetchedManifest): Promise<Platform | undefined> {
  if (m.manifest.kind !== 'manifest' || !IMAGE_CONFIGS.has(m.manifest.config.mediaType)) return undefined;
  const cfg = JSON.parse((await readAll(await repo.fetchBlob(m.manifest.config))).toString('utf8')) as Record<string, unknown>;
  if (typeof cfg.os !== 'string' || typeof cfg.architecture !== 'string') return undefined;
  const p: Platform = { architecture: cfg.architecture, os: cfg.os };
  if (typeof cfg.variant === 'string') p.variant = cfg.variant;
  if (typeof cfg['os.version'] === 'string') p['os.version'] = cfg['os.version'];
  return p;
}

/** entryFor turns a tag or digest of `repo` into an index entry (with platform when it has one). */
export async function entryFor(repo: Repository, reference: string): Promise<Descriptor> {
  const m = await repo.fetchManifest(reference);
  const d: Descriptor = { mediaType: m.descriptor.mediaType, digest: m.descriptor.digest, size: m.descriptor.size };
  if (m.manifest.artifactType) d.artifactType = m.manifest.artifactType;
  const platform = await platformOf(repo, m);
  if (platform) d.platform = platform;
  return d;
}

/** indexBytes serialises an OCI image index. */
export function indexBytes(body: IndexBody): Buffer {
  const doc: Record<string, unknown> = { schemaVersion: 2, mediaType: MediaType.ociIndex };
  if (body.artifactType) doc.artifactType = body.artifactType;
  doc.manifests = body.manifests;
  if (body.annotations && Object.keys(body.annotations).length) doc.annotations = body.annotations;
  return Buffer.from(JSON.stringify(doc));
}

/** IndexEdit lists the changes `manifest index update` makes: references to add, merge (indexes) and remove. */
export interface IndexEdit {
  add: string[];
  merge: string[];
  remove: string[];
  annotations: Record<string, string>;
}

/** editIndex fetches the index `reference` and returns its edited body; adding what is present already is a no-op. */
export async function editIndex(repo: Repository, reference: string, edit: IndexEdit): Promise<IndexBody> {
  const cur = await repo.fetchManifest(reference);
  if (cur.manifest.kind !== 'index') throw new RegfsError('INVALID_ARGUMENT', `${repo.display}:${reference} is not an image index; give one made by manifest index create`);
  const manifests = [...cur.manifest.manifests];
  const has = (d: Descriptor): boolean => manifests.some((m) => m.digest === d.digest);
  for (const a of edit.add) {
    const d = await entryFor(repo, a);
    if (!has(d)) manifests.push(d);
  }
  for (const g of edit.merge) {
    const other = await repo.fetchManifest(g);
    if (other.manifest.kind !== 'index') throw new RegfsError('INVALID_ARGUMENT', `--merge ${g}: not an image index`);
    for (const d of other.manifest.manifests) if (!has(d)) manifests.push(d);
  }
  const gone = new Set<string>();
  for (const r of edit.remove) gone.add(isDigest(r) ? r : (await repo.resolve(r)).digest);
  const kept = manifests.filter((m) => !gone.has(m.digest));
  const annotations = { ...(cur.manifest.annotations ?? {}), ...edit.annotations };
  return { manifests: kept, annotations, artifactType: cur.manifest.artifactType };
}

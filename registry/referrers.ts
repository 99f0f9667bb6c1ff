import type { Descriptor } from './descriptor.js';
import { Annotation, MediaType } from './media-types.js';
import type { PackedArtifact } from './pack.js';
import type { ReadableRepository } from './storage.js';

/**
 * ReferrersWrite is how a manifest with a subject is made discoverable: the registry indexed it itself
 * (it answered the PUT with an `OCI-Subject` header: the referrers API), or the client must maintain the
 * referrers tag schema index (`sha256-<hex>`) read-modify-write.
 */
export type ReferrersWrite = 'api' | 'tag-schema';

/** referrersWriteFor is the decision registry/remote.ts applies after a manifest PUT (OCI distribution spec 1.1). */
export function referrersWriteFor(hasSubject: boolean, ociSubjectHeader: string | undefined): ReferrersWrite | undefined {
  if (!hasSubject) return undefined;
  return ociSubjectHeader !== undefined ? 'api' : 'tag-schema';
}

/** referrersTagIndex is the tag schema index after adding `entry` to `existing` (unchanged, undefined, when already listed). */
export function referrersTagIndex(existing: Descriptor[], entry: Descriptor): Buffer | undefined {
  if (existing.some((d) => d.digest === entry.digest)) return undefined;
  return Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MediaType.ociIndex, manifests: [...existing, entry] }));
}

/**
 * withSubject turns a packed artifact into an attach manifest: the same manifest with `subject` (after
 * `layers`, before `annotations`, the order ORAS 1.2 writes) and an `org.opencontainers.image.created`
 * annotation unless one was given (oras attach adds it too).
 */
export function withSubject(packed: PackedArtifact, subject: Descriptor, now = new Date()): PackedArtifact {
  const m = JSON.parse(packed.manifest.toString('utf8')) as Record<string, unknown>;
  const annotations = { ...(m.annotations as Record<string, string> | undefined) };
  annotations[Annotation.created] ??= now.toISOString().replace(/\.\d{3}Z$/, 'Z');
  const subj: Descriptor = { mediaType: subject.mediaType, digest: subject.digest, size: subject.size };
  const out = { schemaVersion: m.schemaVersion, mediaType: m.mediaType, ...(m.artifactType ? { artifactType: m.artifactType } : {}), config: m.config, layers: m.layers, subject: subj, annotations };
  return { ...packed, manifest: Buffer.from(JSON.stringify(out)) };
}

/** ReferrerNode is one referrer and, up to the asked depth, its own referrers. */
export interface ReferrerNode {
  desc: Descriptor;
  referrers: ReferrerNode[];
}

/**
 * referrerTree lists the referrers of `subject`, and theirs, down to `depth` levels (0 or Infinity: all);
 * `artifactType` filters the first level only, as oras discover does. A cycle is cut at its second visit.
 */
export async function referrerTree(repo: ReadableRepository, subject: Descriptor, opts: { artifactType?: string; depth?: number } = {}): Promise<ReferrerNode[]> {
  const max = opts.depth && opts.depth > 0 ? opts.depth : Infinity;
  const seen = new Set<string>([subject.digest]);
  const walk = async (s: Descriptor, level: number, filter?: string): Promise<ReferrerNode[]> => {
    const list = await repo.referrers(s, filter);
    const out: ReferrerNode[] = [];
    for (const d of list) {
      if (seen.has(d.digest)) continue;
      seen.add(d.digest);
      out.push({ desc: d, referrers: level < max ? await walk(d, level + 1) : [] });
    }
    return out;
  };
  return walk(subject, 1, opts.artifactType);
}

/** referrerDirName is the mount's name for a referrer: its artifact type made path-safe, `-`, 12 hex digits of its digest. */
export function referrerDirName(d: Descriptor): string {
  const type = (d.artifactType ?? d.mediaType ?? 'unknown').replace(/[^A-Za-z0-9._-]+/g, '-').replace(/^[-.]+|-+$/g, '').slice(0, 200) || 'unknown';
  const hex = d.digest.slice(d.digest.indexOf(':') + 1, d.digest.indexOf(':') + 13);
  return `${type}-${hex}`;
}

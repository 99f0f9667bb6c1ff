import { referrersTagIndex, referrersWriteFor } from './referrers.js';
import { PassThrough, type Readable } from 'node:stream';
import { CATALOG_SCOPE, readCappedBuffer, repositoryScope } from './auth.js';
import { hashing, verifying } from './blob-io.js';
import { digestAlgorithm, digestOf, isDigest, parseDigest, type Digest } from './digest.js';
import type { Descriptor } from './descriptor.js';
import { RegfsError } from '../util/errors.js';
import { errorFromBody, header, RegistryTransport, type TransportOptions, type TransportStats } from './http-client.js';
import { parseManifest, normaliseContentType } from './manifest.js';
import { MANIFEST_MEDIA_TYPES, MAX_MANIFEST_BYTES, MediaType } from './media-types.js';
import { discard, limit, resuming, skip } from './range-stream.js';
import type { BlobSource, ByteRange, FetchedManifest, ListOptions, PushResult, Registry, Repository } from './storage.js';

/** UploadOptions tune blob uploads. */
export interface UploadOptions {
  /** chunkThreshold is the size above which uploads are chunked (default 64 MiB). */
  chunkThreshold?: number;
  /** chunkSize is the PATCH size of a chunked upload (default 16 MiB). */
  chunkSize?: number;
}

/** RemoteOptions configure a remote registry client. */
export type RemoteOptions = TransportOptions & UploadOptions;

const ACCEPT_MANIFESTS = MANIFEST_MEDIA_TYPES.join(', ');

/** RemoteRegistry is a registry reached over the OCI Distribution API. */
export class RemoteRegistry implements Registry {
  /** transport is shared by every repository of this registry (one connection pool, one token cache). */
  readonly transport: RegistryTransport;
  readonly display: string;

  constructor(readonly host: string, private readonly opts: RemoteOptions = {}) {
    this.transport = new RegistryTransport(host, opts);
    this.display = host;
  }

  /** ping checks that the host speaks the distribution API and that the credentials (if any) are accepted. */
  async ping(): Promise<void> {
    const res = await this.transport.send({ method: 'GET', path: '/v2/', scopes: [], what: `registry ${this.host}` });
    if (res.status === 200) {
      await res.body.dump();
      return;
    }
    await this.transport.fail(res, `registry ${this.host}`);
  }

  async listRepositories(opts: ListOptions = {}): Promise<string[]> {
    return paginate(this.transport, `/v2/_catalog?n=${opts.pageSize ?? 1000}`, [CATALOG_SCOPE], `catalog of ${this.host}`, 'repositories', opts.signal);
  }

  repository(name: string): RemoteRepository {
    return new RemoteRepository(this, name, this.opts);
  }

  /** stats returns the counters of the shared transport. */
  stats(): TransportStats {
    return this.transport.stats();
  }

  async close(): Promise<void> {
    await this.transport.close();
  }
}

/** paginate follows `Link: <...>; rel="next"` on the registry's own origin and collects one string array field. */
async function paginate(t: RegistryTransport, first: string, scopes: string[], what: string, field: 'tags' | 'repositories', signal?: AbortSignal): Promise<string[]> {
  const out: string[] = [];
  let path: string | undefined = first;
  const seen = new Set<string>();
  while (path) {
    if (seen.has(path)) throw new RegfsError('REGISTRY_ERROR', `${what}: pagination loops at ${path}`);
    seen.add(path);
    const res = await t.send({ method: 'GET', path, scopes, what, signal });
    if (res.status !== 200) await t.fail(res, what);
    const body = await readCappedBuffer(res.body, MAX_MANIFEST_BYTES);
    let parsed: Record<string, unknown>;
    try {
      parsed = JSON.parse(body.toString('utf8')) as Record<string, unknown>;
    } catch {
      throw new RegfsError('REGISTRY_ERROR', `${what}: response is not JSON`);
    }
    const items = parsed[field];
    if (items !== null && items !== undefined && !Array.isArray(items)) throw new RegfsError('REGISTRY_ERROR', `${what}: "${field}" is not a list`);
    const page = ((items as unknown[] | null) ?? []).filter((x): x is string => typeof x === 'string');
    out.push(...page);
    path = nextLink(header(res, 'link'), res.url);
  }
  return out;
}

/** nextLink extracts the rel="next" target of a Link header, as a path on the registry. */
export function nextLink(link: string | undefined, base: URL): string | undefined {
  if (!link) return undefined;
  for (const part of link.split(',')) {
    const m = /<([^>]+)>\s*;\s*rel="?next"?/i.exec(part);
    if (m) {
      const u = new URL(m[1]!, base);
      if (u.origin !== base.origin) return undefined;
      return u.pathname + u.search;
    }
  }
  return undefined;
}

/** RemoteRepository is one repository on a remote registry. */
export class RemoteRepository implements Repository {
  readonly display: string;
  private readonly t: RegistryTransport;
  private readonly chunkThreshold: number;
  private readonly chunkSize: number;

  constructor(readonly registry: RemoteRegistry, readonly name: string, opts: UploadOptions = {}) {
    this.t = registry.transport;
    this.display = `${registry.host}/${name}`;
    this.chunkThreshold = opts.chunkThreshold ?? 64 * 1024 * 1024;
    this.chunkSize = opts.chunkSize ?? 16 * 1024 * 1024;
  }

  private pull(): string[] {
    return [repositoryScope(this.name, ['pull'])];
  }

  private push(): string[] {
    return [repositoryScope(this.name, ['pull', 'push'])];
  }

  private refWhat(reference: string): string {
    return isDigest(reference) ? `manifest ${this.display}@${reference}` : `manifest ${this.display}:${reference}`;
  }

  async resolve(reference: string, signal?: AbortSignal): Promise<Descriptor> {
    const what = this.refWhat(reference);
    const res = await this.t.send({ method: 'HEAD', path: `/v2/${this.name}/manifests/${reference}`, headers: { accept: ACCEPT_MANIFESTS }, scopes: this.pull(), what, signal });
    await res.body.dump();
    if (res.status !== 200) throw errorFromBody(res.status, '', what);
    const digest = header(res, 'docker-content-digest');
    const mediaType = normaliseContentType(header(res, 'content-type'));
    const size = Number(header(res, 'content-length'));
    if (isDigest(digest) && mediaType && Number.isSafeInteger(size) && size >= 0 && (!isDigest(reference) || reference === digest)) {
      return { mediaType, digest, size };
    }
    // The HEAD lacked what we need: fetch the manifest and compute it.
    return (await this.fetchManifest(reference, signal)).descriptor;
  }

  async fetchManifest(reference: string | Descriptor, signal?: AbortSignal): Promise<FetchedManifest> {
    const ref = typeof reference === 'string' ? reference : reference.digest;
    const what = this.refWhat(ref);
    if (!isDigest(ref) && !/^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/.test(ref)) throw new RegfsError('INVALID_REFERENCE', `invalid tag or digest ${JSON.stringify(ref)}`);
    const accept = typeof reference === 'string' ? ACCEPT_MANIFESTS : reference.mediaType;
    const res = await this.t.send({ method: 'GET', path: `/v2/${this.name}/manifests/${ref}`, headers: { accept }, scopes: this.pull(), what, signal });
    if (res.status !== 200) await this.t.fail(res, what);
    const declared = Number(header(res, 'content-length'));
    if (Number.isFinite(declared) && declared > MAX_MANIFEST_BYTES) {
      discard(res.body);
      throw new RegfsError('TOO_LARGE', `${what} is ${declared} bytes, over the ${MAX_MANIFEST_BYTES}-byte manifest limit`);
    }
    const bytes = await readCappedBuffer(res.body, MAX_MANIFEST_BYTES).catch((err: unknown) => {
      throw err instanceof RegfsError && err.code === 'TOO_LARGE' ? new RegfsError('TOO_LARGE', `${what} exceeds the ${MAX_MANIFEST_BYTES}-byte manifest limit`) : err;
    });
    const given = header(res, 'docker-content-digest');
    const expected: Digest | undefined = isDigest(ref) ? ref : isDigest(given) ? given : undefined;
    // Verify with the algorithm of the digest we were given; the descriptor keeps that digest.
    const actual = digestOf(bytes, expected ? digestAlgorithm(expected) : 'sha256');
    if (expected && expected !== actual) {
      throw new RegfsError('DIGEST_MISMATCH', `${what}: digest mismatch: expected ${expected}, got ${actual}`);
    }
    if (typeof reference !== 'string' && reference.size !== bytes.length) {
      throw new RegfsError('SIZE_MISMATCH', `${what}: ${bytes.length} bytes, descriptor says ${reference.size}`);
    }
    const ct = normaliseContentType(header(res, 'content-type'));
    const manifest = parseManifest(bytes, ct);
    return { descriptor: { mediaType: manifest.mediaType, digest: actual, size: bytes.length, ...(manifest.artifactType ? { artifactType: manifest.artifactType } : {}) }, bytes, manifest };
  }

  async fetchBlob(desc: Descriptor, range?: ByteRange, signal?: AbortSignal): Promise<Readable> {
    parseDigest(desc.digest);
    const whole = !range || (range.start === 0 && (range.end === undefined || range.end >= desc.size));
    const start = range?.start ?? 0;
    const end = Math.min(range?.end ?? desc.size, desc.size);
    if (start > end) throw new RegfsError('INVALID_ARGUMENT', `range ${start}-${end} is outside blob ${desc.digest} of ${desc.size} bytes`);
    const first = await this.openRange(desc, start, end, signal);
    const stream = resuming(this, desc, first, start, end, signal);
    return whole ? verifying(stream, desc) : stream;
  }

  /** openRange issues one blob GET for [start, end) and returns the response positioned at `start` (a 200 reply has its prefix skipped). */
  async openRange(desc: Descriptor, start: number, end: number, signal?: AbortSignal): Promise<Readable> {
    const what = `blob ${this.display}@${desc.digest}`;
    const partial = start > 0 || end < desc.size;
    const headers: Record<string, string> = {};
    if (partial) headers.range = `bytes=${start}-${end - 1}`;
    const res = await this.t.send({ method: 'GET', path: `/v2/${this.name}/blobs/${desc.digest}`, headers, scopes: this.pull(), what, signal });
    if (res.status === 206 && partial) {
      const cr = header(res, 'content-range');
      const m = cr ? /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(cr) : null;
      if (!m || Number(m[1]) !== start || Number(m[2]) > end - 1) {
        discard(res.body);
        throw new RegfsError('REGISTRY_ERROR', `${what}: registry answered range ${cr ?? '(none)'} for bytes=${start}-${end - 1}`);
      }
      const len = header(res, 'content-length');
      if ((m[3] !== '*' && Number(m[3]) !== desc.size) || (len !== undefined && Number(len) !== Number(m[2]) - start + 1)) {
        discard(res.body);
        throw new RegfsError('SIZE_MISMATCH', `${what}: registry sent Content-Range ${cr} with Content-Length ${len ?? '(none)'}, descriptor says ${desc.size} bytes`);
      }
      return limit(res.body, end - start, what, true);
    }
    if (res.status === 200) {
      const len = header(res, 'content-length');
      if (len !== undefined && Number(len) !== desc.size) {
        discard(res.body);
        throw new RegfsError('SIZE_MISMATCH', `${what}: registry sent Content-Length ${len}, descriptor says ${desc.size}`);
      }
      // A server that ignores Range sends the whole blob: skip to `start` and stop at `end`.
      return limit(skip(res.body, start), end - start, what, end === desc.size);
    }
    return this.t.fail(res, what);
  }

  async blobExists(desc: Descriptor): Promise<boolean> {
    const what = `blob ${this.display}@${desc.digest}`;
    const res = await this.t.send({ method: 'HEAD', path: `/v2/${this.name}/blobs/${desc.digest}`, scopes: this.pull(), what });
    await res.body.dump();
    if (res.status === 200) return true;
    if (res.status === 404) return false;
    throw errorFromBody(res.status, '', what);
  }

  async statBlob(digest: Digest): Promise<Descriptor> {
    const what = `blob ${this.display}@${parseDigest(digest)}`;
    const res = await this.t.send({ method: 'HEAD', path: `/v2/${this.name}/blobs/${digest}`, scopes: this.pull(), what });
    await res.body.dump();
    if (res.status !== 200) throw errorFromBody(res.status, '', what);
    const size = Number(header(res, 'content-length'));
    if (!Number.isSafeInteger(size) || size < 0) throw new RegfsError('REGISTRY_ERROR', `${what}: registry sent no valid Content-Length`);
    return { mediaType: 'application/octet-stream', digest, size };
  }

  async listTags(opts: ListOptions = {}): Promise<string[]> {
    const n = opts.pageSize ? `?n=${opts.pageSize}` : '';
    return paginate(this.t, `/v2/${this.name}/tags/list${n}`, this.pull(), `tags of ${this.display}`, 'tags', opts.signal);
  }

  async referrers(subject: Descriptor, artifactType?: string): Promise<Descriptor[]> {
    const what = `referrers of ${this.display}@${subject.digest}`;
    const q = artifactType ? `?artifactType=${encodeURIComponent(artifactType)}` : '';
    const res = await this.t.send({ method: 'GET', path: `/v2/${this.name}/referrers/${subject.digest}${q}`, headers: { accept: MediaType.ociIndex }, scopes: this.pull(), what });
    let list: Descriptor[];
    if (res.status === 200 && normaliseContentType(header(res, 'content-type')) === MediaType.ociIndex) {
      const m = parseManifest(await readCappedBuffer(res.body, MAX_MANIFEST_BYTES), MediaType.ociIndex);
      list = m.kind === 'index' ? m.manifests : [];
    } else {
      await res.body.dump();
      if (res.status !== 404 && res.status !== 200) await this.t.fail(res, what);
      list = await this.referrersByTag(subject);
    }
    return artifactType ? list.filter((d) => d.artifactType === artifactType) : list;
  }

  /** referrersByTag reads the referrers tag schema fallback: an index tagged `<alg>-<hex>`. */
  private async referrersByTag(subject: Descriptor): Promise<Descriptor[]> {
    try {
      const m = await this.fetchManifest(fallbackTag(subject.digest));
      return m.manifest.kind === 'index' ? m.manifest.manifests : [];
    } catch (err) {
      if (err instanceof RegfsError && err.code === 'NOT_FOUND') return [];
      throw err;
    }
  }

  async pushBlob(desc: Descriptor, source: BlobSource): Promise<PushResult> {
    if (await this.blobExists(desc)) return 'exists';
    const what = `upload of ${desc.digest} to ${this.display}`;
    const location = await this.startUpload(what);
    if (desc.size <= this.chunkThreshold) {
      const put = withDigest(location, desc.digest);
      const res = await this.t.send({
        method: 'PUT',
        path: put,
        headers: { 'content-type': 'application/octet-stream', 'content-length': String(desc.size) },
        body: desc.size === 0 ? Buffer.alloc(0) : () => verifiedSource(source, desc),
        scopes: this.push(),
        what,
        retry: false,
      });
      if (res.status !== 201) await this.t.fail(res, what);
      await res.body.dump();
      return 'pushed';
    }
    await this.chunkedUpload(location, desc, source, what);
    return 'pushed';
  }

  async pushStream(source: Readable, size?: number): Promise<{ digest: Digest; size: number }> {
    const what = `upload to ${this.display}`;
    const location = await this.startUpload(what);
    // One PATCH streams the whole body (the registry hashes as it writes), then the PUT names the digest.
    const h = hashing(source, size);
    const res = await this.t
      .send({
        method: 'PATCH',
        path: location,
        headers: { 'content-type': 'application/octet-stream', ...(size !== undefined ? { 'content-length': String(size) } : {}) },
        body: () => h.stream,
        scopes: this.push(),
        what,
        retry: false,
      })
      .catch((err: unknown) => {
        throw h.failure() ?? err;
      });
    if (res.status !== 202) await this.t.fail(res, what);
    await res.body.dump();
    const { digest, size: n } = await h.settled();
    const next = header(res, 'location');
    const put = withDigest(next ? resolveLocation(next, res.url) : location, digest);
    const done = await this.t.send({ method: 'PUT', path: put, headers: { 'content-length': '0' }, scopes: this.push(), what: `${what} (${digest})` });
    if (done.status !== 201) await this.t.fail(done, what);
    await done.body.dump();
    return { digest, size: n };
  }

  private async startUpload(what: string, query = ''): Promise<string> {
    const res = await this.t.send({ method: 'POST', path: `/v2/${this.name}/blobs/uploads/${query}`, headers: { 'content-length': '0' }, scopes: this.push(), what });
    if (res.status !== 202) await this.t.fail(res, what);
    await res.body.dump();
    const loc = header(res, 'location');
    if (!loc) throw new RegfsError('REGISTRY_ERROR', `${what}: registry gave no upload location`);
    return resolveLocation(loc, res.url);
  }

  /** chunkedUpload sends PATCHes of chunkSize bytes in order, then the closing PUT with the digest. */
  private async chunkedUpload(location: string, desc: Descriptor, source: BlobSource, what: string): Promise<void> {
    const src = await verifiedSourceAsync(source, desc);
    let offset = 0;
    let loc = location;
    const sendChunk = async (chunk: Buffer): Promise<void> => {
      const res = await this.t.send({
        method: 'PATCH',
        path: loc,
        headers: { 'content-type': 'application/octet-stream', 'content-length': String(chunk.length), 'content-range': `${offset}-${offset + chunk.length - 1}` },
        body: chunk,
        scopes: this.push(),
        what,
      });
      if (res.status !== 202) await this.t.fail(res, what);
      await res.body.dump();
      offset += chunk.length;
      const next = header(res, 'location');
      if (next) loc = resolveLocation(next, res.url);
    };
    let pending: Buffer[] = [];
    let pendingLen = 0;
    for await (const c of src) {
      const b = c as Buffer;
      pending.push(b);
      pendingLen += b.length;
      while (pendingLen >= this.chunkSize) {
        const all = Buffer.concat(pending);
        await sendChunk(all.subarray(0, this.chunkSize));
        const rest = all.subarray(this.chunkSize);
        pending = rest.length ? [rest] : [];
        pendingLen = rest.length;
      }
    }
    if (pendingLen) await sendChunk(Buffer.concat(pending));
    const res = await this.t.send({ method: 'PUT', path: withDigest(loc, desc.digest), headers: { 'content-length': '0' }, scopes: this.push(), what });
    if (res.status !== 201) await this.t.fail(res, what);
    await res.body.dump();
  }

  async mountBlob(desc: Descriptor, fromRepository: string): Promise<boolean> {
    const what = `mount of ${desc.digest} from ${fromRepository} into ${this.display}`;
    const scopes = [...this.push(), repositoryScope(fromRepository, ['pull'])];
    const path = `/v2/${this.name}/blobs/uploads/?mount=${desc.digest}&from=${encodeURIComponent(fromRepository)}`;
    const res = await this.t.send({ method: 'POST', path, headers: { 'content-length': '0' }, scopes, what });
    await res.body.dump();
    if (res.status === 201) return true;
    if (res.status === 202) {
      // The registry started a normal upload instead; cancel it.
      const loc = header(res, 'location');
      if (loc) {
        const del = await this.t.send({ method: 'DELETE', path: resolveLocation(loc, res.url), scopes: this.push(), what, retry: false }).catch(() => undefined);
        await del?.body.dump();
      }
      return false;
    }
    return this.t.fail(res, what);
  }

  async pushManifest(bytes: Buffer, mediaType: string, tags: string[]): Promise<Descriptor> {
    const manifest = parseManifest(bytes, mediaType);
    const digest = digestOf(bytes);
    const desc: Descriptor = { mediaType, digest, size: bytes.length, ...(manifest.artifactType ? { artifactType: manifest.artifactType } : {}) };
    const refs = tags.length ? tags : [digest];
    let ociSubject: string | undefined;
    for (const ref of refs) {
      const what = `manifest ${this.display}:${ref}`;
      const res = await this.t.send({ method: 'PUT', path: `/v2/${this.name}/manifests/${ref}`, headers: { 'content-type': mediaType }, body: bytes, scopes: this.push(), what });
      if (res.status !== 201) await this.t.fail(res, what);
      await res.body.dump();
      const got = header(res, 'docker-content-digest');
      if (got && got !== digest) throw new RegfsError('DIGEST_MISMATCH', `${what}: registry stored ${got}, expected ${digest}`);
      ociSubject ??= header(res, 'oci-subject');
    }
    if (manifest.subject && referrersWriteFor(true, ociSubject) === 'tag-schema') await this.addReferrerByTag(manifest.subject, desc, manifest.annotations);
    return desc;
  }

  /** addReferrerByTag maintains the referrers tag schema index for registries without the referrers API. */
  private async addReferrerByTag(subject: Descriptor, desc: Descriptor, annotations?: Record<string, string>): Promise<void> {
    const existing = await this.referrersByTag(subject);
    const body = referrersTagIndex(existing, { ...desc, ...(annotations ? { annotations } : {}) });
    if (!body) return;
    const what = `referrers index of ${this.display}@${subject.digest}`;
    const res = await this.t.send({ method: 'PUT', path: `/v2/${this.name}/manifests/${fallbackTag(subject.digest)}`, headers: { 'content-type': MediaType.ociIndex }, body, scopes: this.push(), what });
    if (res.status !== 201) await this.t.fail(res, what);
    await res.body.dump();
  }

  async tag(desc: Descriptor, tag: string): Promise<void> {
    const m = await this.fetchManifest(desc);
    await this.pushManifest(m.bytes, m.descriptor.mediaType, [tag]);
  }

  async deleteManifest(desc: Descriptor): Promise<void> {
    const what = `manifest ${this.display}@${desc.digest}`;
    const res = await this.t.send({ method: 'DELETE', path: `/v2/${this.name}/manifests/${desc.digest}`, scopes: [repositoryScope(this.name, ['delete'])], what });
    if (res.status !== 202 && res.status !== 200) await this.t.fail(res, what);
    await res.body.dump();
  }

  async deleteBlob(desc: Descriptor): Promise<void> {
    const what = `blob ${this.display}@${desc.digest}`;
    const res = await this.t.send({ method: 'DELETE', path: `/v2/${this.name}/blobs/${desc.digest}`, scopes: [repositoryScope(this.name, ['delete'])], what });
    if (res.status !== 202 && res.status !== 200) await this.t.fail(res, what);
    await res.body.dump();
  }
}

/** fallbackTag is the referrers tag schema name for a subject digest: `sha256-<hex>`. */
export function fallbackTag(d: Digest): string {
  return d.replace(':', '-');
}

function resolveLocation(loc: string, base: URL): string {
  return new URL(loc, base).toString();
}

function withDigest(location: string, digest: Digest): string {
  const u = new URL(location);
  u.searchParams.set('digest', digest);
  return u.toString();
}

/** verifiedSource opens an upload source and checks its bytes against the descriptor as they are sent. */
function verifiedSource(source: BlobSource, desc: Descriptor): Readable {
  const out = new PassThrough();
  Promise.resolve(source()).then(
    (s) => {
      verifying(s, desc).on('error', (e) => out.destroy(e)).pipe(out);
    },
    (e: unknown) => out.destroy(e as Error),
  );
  return out;
}

async function verifiedSourceAsync(source: BlobSource, desc: Descriptor): Promise<Readable> {
  return verifying(await source(), desc);
}

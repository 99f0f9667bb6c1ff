import { existsSync, promises as fsp, constants as C, type Stats } from 'node:fs';
import path from 'node:path';
import { Readable, addAbortSignal } from 'node:stream';
import { hashing, verifying } from './blob-io.js';
import { parseDescriptor, type Descriptor } from './descriptor.js';
import { Verifier, digestAlgorithm, digestHex, digestOf, isDigest, parseDigest, type Digest } from './digest.js';
import { RegfsError } from '../util/errors.js';
import { artifactTypeOf, parseManifest } from './manifest.js';
import { MAX_MANIFEST_BYTES, MediaType } from './media-types.js';
import { isRepositoryName, isTag } from './reference.js';
import type { BlobSource, ByteRange, FetchedManifest, ListOptions, PushResult, Registry, Repository } from './storage.js';
import { fsyncDir, tempPathFor, writeFileAtomic, writeStreamAtomic } from '../util/fs-atomic.js';
import { errnoOf, ioError } from '../util/errors.js';
import { sleep } from '../util/sleep.js';

/** REF_NAME_ANNOTATION is the index.json annotation that carries a tag in an OCI image layout. */
export const REF_NAME_ANNOTATION = 'org.opencontainers.image.ref.name';

/** OCI_LAYOUT_VERSION is the `imageLayoutVersion` regfs writes to the `oci-layout` file. */
export const OCI_LAYOUT_VERSION = '1.0.0';

const MAX_INDEX_BYTES = 64 * 1024 * 1024;
const LOCK_TIMEOUT_MS = 10_000;
const LOCK_STALE_MS = 30_000;
const MAX_STORE_DEPTH = 16;

/** One entry of index.json: the validated descriptor and the raw JSON (kept so unknown fields survive a rewrite). */
interface IndexEntry {
  desc: Descriptor;
  raw: Record<string, unknown>;
}

/** index.json as read: the raw top-level object (other fields are preserved) and its entries. */
interface LayoutIndex {
  raw: Record<string, unknown>;
  entries: IndexEntry[];
}

/** In-process writer queues, keyed by the resolved layout directory. */
const indexQueues = new Map<string, Promise<void>>();

async function statOrUndefined(p: string): Promise<Stats | undefined> {
  try {
    return await fsp.stat(p);
  } catch (err) {
    if (errnoOf(err) === 'ENOENT' || errnoOf(err) === 'ENOTDIR') return undefined;
    throw ioError(`cannot stat ${p}`, err);
  }
}

function refNameOf(e: IndexEntry): string | undefined {
  return e.desc.annotations?.[REF_NAME_ANNOTATION];
}

function emptyIndex(): LayoutIndex {
  return { raw: { schemaVersion: 2, mediaType: MediaType.ociIndex, manifests: [] }, entries: [] };
}

/**
 * OciLayoutRepository is one OCI image layout directory (`oci-layout`, `index.json`, `blobs/<alg>/<hex>`),
 * the format `oras --oci-layout` and `skopeo copy oci:DIR:tag` use. Tags are the
 * `org.opencontainers.image.ref.name` annotations of index.json's entries. With `create: true` the layout
 * is created on the first write and, until then, reads see an empty layout; without it a directory that
 * is not a layout fails every call with NOT_FOUND.
 */
export class OciLayoutRepository implements Repository {
  /** display is `oci:DIR`. */
  readonly display: string;
  private readonly dir: string;
  private readonly key: string;
  private readonly create: boolean;
  private layoutOk = false;
  private writableOk = false;

  constructor(dir: string, readonly name: string, opts: { create?: boolean } = {}) {
    this.dir = dir;
    this.key = path.resolve(dir);
    this.display = `oci:${dir}`;
    this.create = opts.create ?? false;
  }

  // ---------------------------------------------------------------- paths and layout checks

  private blobPath(digest: Digest): string {
    const d = parseDigest(digest);
    return path.join(this.dir, 'blobs', digestAlgorithm(d), digestHex(d));
  }

  private get indexPath(): string {
    return path.join(this.dir, 'index.json');
  }

  private notLayout(why = 'no oci-layout file'): RegfsError {
    return new RegfsError('NOT_FOUND', `${this.display} is not an OCI image layout (${why})`);
  }

  /** layoutState tells whether the `oci-layout` file is present and valid. */
  private async layoutState(): Promise<'ok' | 'missing'> {
    if (this.layoutOk) return 'ok';
    let text: string;
    try {
      text = await fsp.readFile(path.join(this.dir, 'oci-layout'), 'utf8');
    } catch (err) {
      const code = errnoOf(err);
      if (code === 'ENOENT' || code === 'ENOTDIR') return 'missing';
      if (code === 'EISDIR') throw this.notLayout('oci-layout is not a file');
      throw ioError(`cannot read ${path.join(this.dir, 'oci-layout')}`, err);
    }
    let version: unknown;
    try {
      version = (JSON.parse(text) as { imageLayoutVersion?: unknown }).imageLayoutVersion;
    } catch {
      throw this.notLayout('oci-layout is not valid JSON');
    }
    if (typeof version !== 'string' || !/^1\.\d+\.\d+$/.test(version)) {
      throw this.notLayout(`unsupported imageLayoutVersion ${JSON.stringify(version)}`);
    }
    this.layoutOk = true;
    return 'ok';
  }

  /** checkReadable returns false when the layout does not exist yet but `create` allows that (reads see it empty). */
  private async checkReadable(): Promise<boolean> {
    const state = await this.layoutState();
    if (state === 'ok') return true;
    if (this.create) return false;
    throw this.notLayout();
  }

  /** ensureWritable makes sure the layout exists, creating it (under the index lock) when `create` allows. */
  private async ensureWritable(): Promise<void> {
    if (this.writableOk) return;
    const state = await this.layoutState();
    if (state === 'ok' && (await statOrUndefined(this.indexPath))) {
      this.writableOk = true;
      return;
    }
    if (!this.create) throw this.notLayout(state === 'ok' ? 'no index.json' : undefined);
    try {
      await fsp.mkdir(this.dir, { recursive: true, mode: 0o755 });
    } catch (err) {
      throw ioError(`cannot create ${this.dir}`, err);
    }
    await this.withIndexLock(async () => {
      // index.json first, oci-layout last: a directory with an oci-layout file always has an index.
      if (!(await statOrUndefined(this.indexPath))) await this.writeIndex(emptyIndex());
      if (!(await statOrUndefined(path.join(this.dir, 'oci-layout')))) {
        await writeFileAtomic(path.join(this.dir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: OCI_LAYOUT_VERSION }), 0o644);
      }
    });
    await this.layoutState();
    this.writableOk = true;
  }

  // ---------------------------------------------------------------- index.json

  private async readIndex(): Promise<LayoutIndex> {
    if (!(await this.checkReadable())) return emptyIndex();
    let buf: Buffer;
    try {
      const st = await fsp.stat(this.indexPath);
      if (st.size > MAX_INDEX_BYTES) throw new RegfsError('TOO_LARGE', `${this.display}/index.json is ${st.size} bytes, over the ${MAX_INDEX_BYTES}-byte limit`);
      buf = await fsp.readFile(this.indexPath);
    } catch (err) {
      if (errnoOf(err) === 'ENOENT') {
        if (this.create) return emptyIndex();
        throw this.notLayout('no index.json');
      }
      throw ioError(`cannot read ${this.indexPath}`, err);
    }
    return this.parseIndex(buf);
  }

  private parseIndex(buf: Buffer): LayoutIndex {
    const where = `${this.display}/index.json`;
    let raw: unknown;
    try {
      raw = JSON.parse(buf.toString('utf8'));
    } catch {
      throw new RegfsError('INVALID_MANIFEST', `${where} is not valid JSON`);
    }
    if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
      throw new RegfsError('INVALID_MANIFEST', `${where} is not a JSON object`);
    }
    const r = raw as Record<string, unknown>;
    if (r.schemaVersion !== 2) throw new RegfsError('INVALID_MANIFEST', `${where} has unsupported schemaVersion ${JSON.stringify(r.schemaVersion)}`);
    const list = r.manifests ?? [];
    if (!Array.isArray(list)) throw new RegfsError('INVALID_MANIFEST', `${where} "manifests" is not an array`);
    const entries = list.map((m: unknown, i: number): IndexEntry => {
      const desc = parseDescriptor(m, `${where} manifests[${i}]`);
      return { desc, raw: m as Record<string, unknown> };
    });
    return { raw: r, entries };
  }

  private async writeIndex(index: LayoutIndex): Promise<void> {
    const out: Record<string, unknown> = { schemaVersion: 2, mediaType: MediaType.ociIndex };
    for (const [k, v] of Object.entries(index.raw)) if (k !== 'manifests') out[k] = v;
    out.schemaVersion = 2;
    out.mediaType = MediaType.ociIndex;
    out.manifests = index.entries.map((e) => e.raw);
    try {
      await writeFileAtomic(this.indexPath, JSON.stringify(out), 0o644);
    } catch (err) {
      throw ioError(`cannot write ${this.indexPath}`, err);
    }
  }

  /** withIndexLock runs fn with index.json locked against writers in this process (a promise chain) and in others (an O_EXCL lock file). */
  private async withIndexLock<T>(fn: () => Promise<T>): Promise<T> {
    const prev = indexQueues.get(this.key) ?? Promise.resolve();
    let release!: () => void;
    const mine = new Promise<void>((resolve) => (release = resolve));
    const tail = prev.then(() => mine);
    indexQueues.set(this.key, tail);
    await prev;
    try {
      const unlock = await this.acquireFileLock();
      try {
        return await fn();
      } finally {
        await unlock();
      }
    } finally {
      release();
      if (indexQueues.get(this.key) === tail) indexQueues.delete(this.key);
    }
  }

  private async acquireFileLock(): Promise<() => Promise<void>> {
    const lock = path.join(this.dir, 'index.json.lock');
    const deadline = Date.now() + LOCK_TIMEOUT_MS;
    for (let attempt = 0; ; attempt++) {
      try {
        const fh = await fsp.open(lock, C.O_WRONLY | C.O_CREAT | C.O_EXCL | C.O_NOFOLLOW, 0o644);
        try {
          await fh.writeFile(`${process.pid}\n`);
        } finally {
          await fh.close();
        }
        return async () => {
          await fsp.rm(lock, { force: true });
        };
      } catch (err) {
        if (errnoOf(err) !== 'EEXIST') throw ioError(`cannot create lock ${lock}`, err);
      }
      const st = await statOrUndefined(lock);
      if (st && Date.now() - st.mtimeMs > LOCK_STALE_MS) {
        await fsp.rm(lock, { force: true });
        continue;
      }
      if (Date.now() >= deadline) {
        throw new RegfsError('IO', `timed out after ${LOCK_TIMEOUT_MS / 1000} s waiting for ${lock}; remove it if no other regfs is writing to ${this.display}`);
      }
      await sleep(Math.min(10 + attempt * 5, 100));
    }
  }

  /** updateIndex reads index.json under the lock, lets `mutate` change its entries and writes it back. */
  private async updateIndex<T>(mutate: (index: LayoutIndex) => T | Promise<T>): Promise<T> {
    return this.withIndexLock(async () => {
      const index = await this.readIndex();
      const result = await mutate(index);
      await this.writeIndex(index);
      return result;
    });
  }

  // ---------------------------------------------------------------- blob helpers

  private async statBlobFile(digest: Digest): Promise<Stats | undefined> {
    const st = await statOrUndefined(this.blobPath(digest));
    return st?.isFile() ? st : undefined;
  }

  private blobNotFound(digest: Digest): RegfsError {
    return new RegfsError('NOT_FOUND', `blob ${digest} not found in ${this.display}`);
  }

  /** readManifestBytes reads and verifies a manifest blob, capped at MAX_MANIFEST_BYTES. */
  private async readManifestBytes(desc: Descriptor): Promise<Buffer> {
    const digest = parseDigest(desc.digest);
    if (desc.size > MAX_MANIFEST_BYTES) {
      throw new RegfsError('TOO_LARGE', `manifest ${digest} is ${desc.size} bytes, over the ${MAX_MANIFEST_BYTES}-byte manifest limit`);
    }
    const bytes = await this.readCapped(digest);
    const v = new Verifier(digest, desc.size);
    v.update(bytes);
    v.verify();
    return bytes;
  }

  /** readCapped reads a blob that should be a manifest, failing with TOO_LARGE past the manifest limit. */
  private async readCapped(digest: Digest): Promise<Buffer> {
    let fh: fsp.FileHandle;
    try {
      fh = await fsp.open(this.blobPath(digest), C.O_RDONLY);
    } catch (err) {
      const code = errnoOf(err);
      if (code === 'ENOENT' || code === 'ENOTDIR' || code === 'EISDIR') {
        await this.checkReadable();
        throw new RegfsError('NOT_FOUND', `manifest ${digest} not found in ${this.display}`);
      }
      throw ioError(`cannot open manifest ${digest} in ${this.display}`, err);
    }
    try {
      const st = await fh.stat();
      if (!st.isFile()) throw new RegfsError('NOT_FOUND', `manifest ${digest} not found in ${this.display}`);
      if (st.size > MAX_MANIFEST_BYTES) {
        throw new RegfsError('TOO_LARGE', `manifest ${digest} is ${st.size} bytes, over the ${MAX_MANIFEST_BYTES}-byte manifest limit`);
      }
      const buf = Buffer.alloc(st.size + 1);
      let n = 0;
      while (n < buf.length) {
        const { bytesRead } = await fh.read(buf, n, buf.length - n, n);
        if (bytesRead === 0) break;
        n += bytesRead;
      }
      if (n > MAX_MANIFEST_BYTES) throw new RegfsError('TOO_LARGE', `manifest ${digest} exceeds the ${MAX_MANIFEST_BYTES}-byte manifest limit`);
      return buf.subarray(0, n);
    } catch (err) {
      throw ioError(`cannot read manifest ${digest} in ${this.display}`, err);
    } finally {
      await fh.close();
    }
  }

  private descriptorFor(desc: Descriptor): Descriptor {
    const out: Descriptor = { mediaType: desc.mediaType, digest: desc.digest, size: desc.size };
    if (desc.artifactType) out.artifactType = desc.artifactType;
    if (desc.platform) out.platform = desc.platform;
    return out;
  }

  // ---------------------------------------------------------------- ReadableRepository

  /** resolve turns a tag (an index.json ref.name) or a digest (a manifest blob present in the layout) into a descriptor. */
  async resolve(reference: string, signal?: AbortSignal): Promise<Descriptor> {
    signal?.throwIfAborted();
    const index = await this.readIndex();
    if (isDigest(reference)) {
      const st = await this.statBlobFile(reference);
      if (!st) {
        await this.checkReadable();
        throw new RegfsError('NOT_FOUND', `manifest ${reference} not found in ${this.display}`);
      }
      const entry = index.entries.find((e) => e.desc.digest === reference);
      const bytes = await this.readCapped(reference);
      const manifest = parseManifest(bytes, entry?.desc.mediaType);
      const out: Descriptor = { mediaType: manifest.mediaType, digest: reference, size: bytes.length };
      if (manifest.artifactType) out.artifactType = manifest.artifactType;
      return out;
    }
    let found: IndexEntry | undefined;
    for (const e of index.entries) if (refNameOf(e) === reference) found = e;
    if (found) return this.descriptorFor(found.desc);
    if (!isTag(reference)) {
      throw new RegfsError('INVALID_ARGUMENT', `invalid reference ${JSON.stringify(reference.slice(0, 140))}: expected a tag or a digest`);
    }
    throw new RegfsError('NOT_FOUND', `tag ${JSON.stringify(reference)} not found in ${this.display}`);
  }

  /** fetchManifest reads a manifest blob (at most MAX_MANIFEST_BYTES), verifies its digest and parses it. */
  async fetchManifest(reference: string | Descriptor, signal?: AbortSignal): Promise<FetchedManifest> {
    const desc = typeof reference === 'string' ? await this.resolve(reference, signal) : reference;
    signal?.throwIfAborted();
    const bytes = await this.readManifestBytes(desc);
    const manifest = parseManifest(bytes, desc.mediaType);
    return { descriptor: { ...desc, mediaType: manifest.mediaType }, bytes, manifest };
  }

  /** fetchBlob streams a blob file, or the half-open range of it; whole-blob streams are verified against `desc`. */
  async fetchBlob(desc: Descriptor, range?: ByteRange, signal?: AbortSignal): Promise<Readable> {
    signal?.throwIfAborted();
    const digest = parseDigest(desc.digest);
    if (range) {
      const { start, end } = range;
      if (!Number.isSafeInteger(start) || start < 0 || (end !== undefined && (!Number.isSafeInteger(end) || end < start))) {
        throw new RegfsError('INVALID_ARGUMENT', `invalid byte range ${JSON.stringify(range)} for blob ${digest}`);
      }
    }
    let fh: fsp.FileHandle;
    try {
      fh = await fsp.open(this.blobPath(digest), C.O_RDONLY);
    } catch (err) {
      const code = errnoOf(err);
      if (code === 'ENOENT' || code === 'ENOTDIR' || code === 'EISDIR') {
        await this.checkReadable();
        throw this.blobNotFound(digest);
      }
      throw ioError(`cannot open blob ${digest} in ${this.display}`, err);
    }
    let stream: Readable;
    try {
      const st = await fh.stat();
      if (!st.isFile()) throw this.blobNotFound(digest);
      if (range) {
        if (range.end === range.start || range.start >= st.size) {
          await fh.close();
          stream = Readable.from([]);
        } else {
          stream = fh.createReadStream({ start: range.start, end: range.end === undefined ? undefined : range.end - 1, autoClose: true });
        }
      } else {
        stream = (verifying(fh.createReadStream({ autoClose: true }), desc));
      }
    } catch (err) {
      await fh.close().catch(() => undefined);
      throw ioError(`cannot read blob ${digest} in ${this.display}`, err);
    }
    return signal ? addAbortSignal(signal, stream) : stream;
  }

  /** blobExists tells whether the blob file is present with the descriptor's size. */
  async blobExists(desc: Descriptor): Promise<boolean> {
    const st = await this.statBlobFile(parseDigest(desc.digest));
    return st !== undefined && st.size === desc.size;
  }

  /** statBlob returns a blob's descriptor (mediaType application/octet-stream, size from disk); NOT_FOUND when absent. */
  async statBlob(digest: Digest): Promise<Descriptor> {
    const d = parseDigest(digest);
    const st = await this.statBlobFile(d);
    if (!st) {
      await this.checkReadable();
      throw this.blobNotFound(d);
    }
    return { mediaType: 'application/octet-stream', digest: d, size: st.size };
  }

  /**
   * listTags returns the sorted, unique ref.name annotations of index.json; names that are not valid tags
   * (e.g. full references some tools write) are left out, though resolve still finds them.
   */
  async listTags(opts?: ListOptions): Promise<string[]> {
    opts?.signal?.throwIfAborted();
    const index = await this.readIndex();
    const tags = new Set<string>();
    for (const e of index.entries) {
      const t = refNameOf(e);
      if (t !== undefined && isTag(t)) tags.add(t);
    }
    return [...tags].sort();
  }

  /** referrers reads every manifest listed in index.json and returns those whose subject is `subject`. */
  async referrers(subject: Descriptor, artifactType?: string): Promise<Descriptor[]> {
    const want = parseDigest(subject.digest);
    const index = await this.readIndex();
    const seen = new Set<string>();
    const out: Descriptor[] = [];
    for (const e of index.entries) {
      if (seen.has(e.desc.digest)) continue;
      seen.add(e.desc.digest);
      let fetched: FetchedManifest;
      try {
        fetched = await this.fetchManifest(this.descriptorFor(e.desc));
      } catch {
        continue; // a dangling or foreign entry is not a referrer
      }
      const m = fetched.manifest;
      if (m.subject?.digest !== want) continue;
      const at = artifactTypeOf(m);
      if (artifactType !== undefined && at !== artifactType) continue;
      const d: Descriptor = { mediaType: m.mediaType, digest: e.desc.digest, size: e.desc.size };
      if (at) d.artifactType = at;
      if (m.annotations) d.annotations = { ...m.annotations };
      out.push(d);
    }
    return out;
  }

  // ---------------------------------------------------------------- Repository (writes)

  /** pushBlob streams a blob into `blobs/<alg>/<hex>` through a verified temp file; a bad stream leaves nothing behind. */
  async pushBlob(desc: Descriptor, source: BlobSource): Promise<PushResult> {
    const digest = parseDigest(desc.digest);
    if (!Number.isSafeInteger(desc.size) || desc.size < 0) {
      throw new RegfsError('INVALID_ARGUMENT', `invalid size ${desc.size} for blob ${digest}`);
    }
    await this.ensureWritable();
    if (await this.blobExists(desc)) return 'exists';
    const file = this.blobPath(digest);
    try {
      await fsp.mkdir(path.dirname(file), { recursive: true, mode: 0o755 });
      await writeStreamAtomic((verifying(await source(), desc)), file);
    } catch (err) {
      throw ioError(`cannot write blob ${digest} to ${this.display}`, err);
    }
    return 'pushed';
  }

  /** pushStream writes a stream to a temp file in `blobs/sha256/` while hashing it, then renames it to its digest. */
  async pushStream(source: Readable, size?: number): Promise<{ digest: Digest; size: number }> {
    await this.ensureWritable();
    const dir = path.join(this.dir, 'blobs', 'sha256');
    const h = hashing(source, size);
    const tmp = tempPathFor(path.join(dir, 'upload'));
    try {
      await fsp.mkdir(dir, { recursive: true, mode: 0o755 });
      await writeStreamAtomic(h.stream, tmp);
      const r = h.result();
      await fsp.rename(tmp, this.blobPath(r.digest));
      await fsyncDir(dir);
      return r;
    } catch (err) {
      await fsp.rm(tmp, { force: true });
      throw ioError(`cannot write a blob to ${this.display}`, err);
    }
  }

  /** mountBlob is not possible between layouts: always false. */
  async mountBlob(_desc: Descriptor, _fromRepository: string): Promise<boolean> {
    return false;
  }

  /** writeManifestBlob stores manifest bytes under their digest unless already present. */
  private async writeManifestBlob(bytes: Buffer, digest: Digest): Promise<void> {
    const st = await this.statBlobFile(digest);
    if (st && st.size === bytes.length) return;
    const file = this.blobPath(digest);
    try {
      await fsp.mkdir(path.dirname(file), { recursive: true, mode: 0o755 });
      await writeFileAtomic(file, bytes, 0o644);
    } catch (err) {
      throw ioError(`cannot write manifest ${digest} to ${this.display}`, err);
    }
  }

  /** applyTags points each tag at `entryDesc` in `index`, or records it untagged when `tags` is empty. */
  private applyTags(index: LayoutIndex, entryDesc: Descriptor, tags: string[]): void {
    const base: Record<string, unknown> = { mediaType: entryDesc.mediaType, digest: entryDesc.digest, size: entryDesc.size };
    if (entryDesc.artifactType) base.artifactType = entryDesc.artifactType;
    if (tags.length === 0) {
      if (!index.entries.some((e) => e.desc.digest === entryDesc.digest)) {
        index.entries.push({ desc: { ...entryDesc }, raw: base });
      }
      return;
    }
    for (const tag of tags) {
      index.entries = index.entries.filter((e) => refNameOf(e) !== tag);
      const annotations = { [REF_NAME_ANNOTATION]: tag };
      index.entries.push({ desc: { ...entryDesc, annotations }, raw: { ...base, annotations } });
    }
    // The manifest is now tagged: an untagged entry for it is redundant.
    index.entries = index.entries.filter((e) => e.desc.digest !== entryDesc.digest || refNameOf(e) !== undefined);
  }

  private checkTags(tags: string[]): void {
    for (const t of tags) {
      if (!isTag(t)) throw new RegfsError('INVALID_ARGUMENT', `invalid tag ${JSON.stringify(t.slice(0, 140))}: must match [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`);
    }
  }

  /** pushManifest validates the manifest, stores it as a blob and records it in index.json under each tag (untagged when none). */
  async pushManifest(bytes: Buffer, mediaType: string, tags: string[]): Promise<Descriptor> {
    this.checkTags(tags);
    if (bytes.length > MAX_MANIFEST_BYTES) {
      throw new RegfsError('TOO_LARGE', `manifest is ${bytes.length} bytes, over the ${MAX_MANIFEST_BYTES}-byte manifest limit`);
    }
    const manifest = parseManifest(bytes, mediaType);
    const desc: Descriptor = { mediaType: manifest.mediaType, digest: digestOf(bytes), size: bytes.length };
    if (manifest.artifactType) desc.artifactType = manifest.artifactType;
    await this.ensureWritable();
    await this.writeManifestBlob(bytes, desc.digest);
    await this.updateIndex((index) => this.applyTags(index, desc, [...new Set(tags)]));
    return desc;
  }

  /** tag points a tag at a manifest already in the layout. */
  async tag(desc: Descriptor, tag: string): Promise<void> {
    this.checkTags([tag]);
    await this.ensureWritable();
    const fetched = await this.fetchManifest({ mediaType: desc.mediaType, digest: parseDigest(desc.digest), size: desc.size });
    const entry: Descriptor = { mediaType: fetched.manifest.mediaType, digest: fetched.descriptor.digest, size: fetched.bytes.length };
    if (fetched.manifest.artifactType) entry.artifactType = fetched.manifest.artifactType;
    await this.updateIndex((index) => this.applyTags(index, entry, [tag]));
  }

  /** deleteManifest removes every index.json entry with the digest (and so its tags) and the manifest blob. */
  async deleteManifest(desc: Descriptor): Promise<void> {
    const digest = parseDigest(desc.digest);
    if (!(await this.checkReadable())) throw new RegfsError('NOT_FOUND', `manifest ${digest} not found in ${this.display}`);
    await this.withIndexLock(async () => {
      const index = await this.readIndex();
      const before = index.entries.length;
      index.entries = index.entries.filter((e) => e.desc.digest !== digest);
      const hadBlob = (await this.statBlobFile(digest)) !== undefined;
      if (before === index.entries.length && !hadBlob) {
        throw new RegfsError('NOT_FOUND', `manifest ${digest} not found in ${this.display}`);
      }
      if (before !== index.entries.length) await this.writeIndex(index);
      if (hadBlob) await this.removeBlobFile(digest);
    });
  }

  /** deleteBlob removes a blob file; NOT_FOUND when it is absent. */
  async deleteBlob(desc: Descriptor): Promise<void> {
    const digest = parseDigest(desc.digest);
    await this.checkReadable();
    if (!(await this.statBlobFile(digest))) throw this.blobNotFound(digest);
    await this.removeBlobFile(digest);
  }

  private async removeBlobFile(digest: Digest): Promise<void> {
    try {
      await fsp.unlink(this.blobPath(digest));
    } catch (err) {
      if (errnoOf(err) === 'ENOENT') throw this.blobNotFound(digest);
      throw ioError(`cannot delete blob ${digest} in ${this.display}`, err);
    }
  }
}

/** sanitizeRepositoryName turns a directory's basename into a valid single-component repository name. */
export function sanitizeRepositoryName(base: string): string {
  let s = base.toLowerCase().replace(/[^a-z0-9._-]/g, '-');
  s = s.replace(/[._-]+/g, (run) => (/^(\.|_|__|-+)$/.test(run) ? run : '-'));
  s = s.replace(/^[._-]+|[._-]+$/g, '');
  return s.length > 0 ? s.slice(0, 255).replace(/[._-]+$/, '') : 'layout';
}

/**
 * OciLayoutStore is a folder of OCI image layouts: repository `samples/artifact` is the layout at
 * `ROOT/samples/artifact`. If ROOT is itself a layout it holds exactly one repository, named by
 * ROOT's basename lowercased with invalid characters replaced by '-' (see sanitizeRepositoryName).
 * A repository's layout is created on its first pushBlob/pushManifest, never on a read.
 */
export class OciLayoutStore implements Registry {
  /** display is `oci:ROOT`. */
  readonly display: string;
  private readonly root: string;
  private readonly create: boolean;

  constructor(root: string, opts: { create?: boolean } = {}) {
    this.root = root;
    this.display = `oci:${root}`;
    this.create = opts.create ?? false;
  }

  private rootIsLayout(): boolean {
    return existsSync(path.join(this.root, 'oci-layout'));
  }

  private singleName(): string {
    return sanitizeRepositoryName(path.basename(path.resolve(this.root)));
  }

  /** listRepositories returns the sorted relative paths of the layouts under ROOT (symlinks not followed, `blobs` skipped, depth ≤ 16). */
  async listRepositories(opts?: ListOptions): Promise<string[]> {
    const st = await statOrUndefined(this.root);
    if (!st) {
      if (this.create) return [];
      throw new RegfsError('NOT_FOUND', `${this.display} does not exist`);
    }
    if (!st.isDirectory()) throw new RegfsError('NOT_FOUND', `${this.display} is not a directory`);
    if (this.rootIsLayout()) return [this.singleName()];
    const out: string[] = [];
    const walk = async (rel: string, depth: number): Promise<void> => {
      opts?.signal?.throwIfAborted();
      const abs = rel ? path.join(this.root, rel) : this.root;
      let entries;
      try {
        entries = await fsp.readdir(abs, { withFileTypes: true });
      } catch (err) {
        const code = errnoOf(err);
        if (rel && (code === 'EACCES' || code === 'ENOENT' || code === 'ENOTDIR' || code === 'EPERM')) return;
        throw ioError(`cannot list ${abs}`, err);
      }
      if (rel && entries.some((e) => e.name === 'oci-layout' && e.isFile())) out.push(rel);
      if (depth >= MAX_STORE_DEPTH) return;
      for (const e of entries) {
        if (!e.isDirectory() || e.name === 'blobs' || !isRepositoryName(e.name)) continue;
        const child = rel ? `${rel}/${e.name}` : e.name;
        if (!isRepositoryName(child)) continue;
        await walk(child, depth + 1);
      }
    };
    await walk('', 0);
    return out.sort();
  }

  /** repository opens the layout for `name` (validated, so `../` cannot escape ROOT); it is created on first push. */
  repository(name: string): OciLayoutRepository {
    if (!isRepositoryName(name)) {
      throw new RegfsError('INVALID_ARGUMENT', `invalid repository name ${JSON.stringify(name.slice(0, 140))}: must be lowercase [a-z0-9] components separated by "/", ".", "_", "__" or "-"`);
    }
    if (this.rootIsLayout()) {
      const single = this.singleName();
      if (name !== single) {
        throw new RegfsError('NOT_FOUND', `${this.display} is a single OCI layout holding repository "${single}", not "${name}"`);
      }
      return new OciLayoutRepository(this.root, name, { create: true });
    }
    return new OciLayoutRepository(path.join(this.root, ...name.split('/')), name, { create: true });
  }

  /** close is a no-op: a layout store holds no connections. */
  async close(): Promise<void> {}
}

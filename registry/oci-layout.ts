import { promises as fsp, constants as C, type Stats } from 'node:fs';
import path from 'node:path';
import { Readable, addAbortSignal } from 'node:stream';
import { hashing, verifying } from './blob-io.js';
import type { Descriptor } from './descriptor.js';
import { Verifier, digestAlgorithm, digestHex, digestOf, isDigest, parseDigest, type Digest } from './digest.js';
import { RegfsError, errnoOf, ioError } from '../util/errors.js';
import { artifactTypeOf, parseManifest } from './manifest.js';
import { MAX_MANIFEST_BYTES } from './media-types.js';
import { applyTags, OciLayoutIndex, refNameOf, statOrUndefined, type IndexEntry } from './oci-layout-index.js';
import { isTag } from './reference.js';
import type { BlobSource, ByteRange, FetchedManifest, ListOptions, PushResult, Repository } from './storage.js';
import { fsyncDir, tempPathFor, writeFileAtomic, writeStreamAtomic } from '../util/fs-atomic.js';

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
  /** layout holds the `oci-layout` and `index.json` files (and the index lock). */
  private readonly layout: OciLayoutIndex;

  constructor(dir: string, readonly name: string, opts: { create?: boolean } = {}) {
    this.dir = dir;
    this.display = `oci:${dir}`;
    this.layout = new OciLayoutIndex(dir, this.display, opts.create ?? false);
  }

  private blobPath(digest: Digest): string {
    const d = parseDigest(digest);
    return path.join(this.dir, 'blobs', digestAlgorithm(d), digestHex(d));
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

  /** openBlobFile opens blobs/<alg>/<hex> read-only; absent is notFound() (after checking the layout is readable at all). */
  private async openBlobFile(digest: Digest, what: 'manifest' | 'blob', notFound: () => RegfsError): Promise<fsp.FileHandle> {
    try {
      return await fsp.open(this.blobPath(digest), C.O_RDONLY);
    } catch (err) {
      const code = errnoOf(err);
      if (code === 'ENOENT' || code === 'ENOTDIR' || code === 'EISDIR') {
        await this.layout.checkReadable();
        throw notFound();
      }
      throw ioError(`cannot open ${what} ${digest} in ${this.display}`, err);
    }
  }

  /** readCapped reads a blob that should be a manifest, failing with TOO_LARGE past the manifest limit. */
  private async readCapped(digest: Digest): Promise<Buffer> {
    const fh = await this.openBlobFile(digest, 'manifest', () => new RegfsError('NOT_FOUND', `manifest ${digest} not found in ${this.display}`));
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
    const index = await this.layout.readIndex();
    if (isDigest(reference)) {
      const st = await this.statBlobFile(reference);
      if (!st) {
        await this.layout.checkReadable();
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
    const fh = await this.openBlobFile(digest, 'blob', () => this.blobNotFound(digest));
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
      await this.layout.checkReadable();
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
    const index = await this.layout.readIndex();
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
    const index = await this.layout.readIndex();
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
    await this.layout.ensureWritable();
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
    await this.layout.ensureWritable();
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
    await this.layout.ensureWritable();
    await this.writeManifestBlob(bytes, desc.digest);
    await this.layout.updateIndex((index) => applyTags(index, desc, [...new Set(tags)]));
    return desc;
  }

  /** tag points a tag at a manifest already in the layout. */
  async tag(desc: Descriptor, tag: string): Promise<void> {
    this.checkTags([tag]);
    await this.layout.ensureWritable();
    const fetched = await this.fetchManifest({ mediaType: desc.mediaType, digest: parseDigest(desc.digest), size: desc.size });
    const entry: Descriptor = { mediaType: fetched.manifest.mediaType, digest: fetched.descriptor.digest, size: fetched.bytes.length };
    if (fetched.manifest.artifactType) entry.artifactType = fetched.manifest.artifactType;
    await this.layout.updateIndex((index) => applyTags(index, entry, [tag]));
  }

  /** deleteManifest removes every index.json entry with the digest (and so its tags) and the manifest blob. */
  async deleteManifest(desc: Descriptor): Promise<void> {
    const digest = parseDigest(desc.digest);
    if (!(await this.layout.checkReadable())) throw new RegfsError('NOT_FOUND', `manifest ${digest} not found in ${this.display}`);
    await this.layout.withIndexLock(async () => {
      const index = await this.layout.readIndex();
      const before = index.entries.length;
      index.entries = index.entries.filter((e) => e.desc.digest !== digest);
      const hadBlob = (await this.statBlobFile(digest)) !== undefined;
      if (before === index.entries.length && !hadBlob) {
        throw new RegfsError('NOT_FOUND', `manifest ${digest} not found in ${this.display}`);
      }
      if (before !== index.entries.length) await this.layout.writeIndex(index);
      if (hadBlob) await this.removeBlobFile(digest);
    });
  }

  /** deleteBlob removes a blob file; NOT_FOUND when it is absent. */
  async deleteBlob(desc: Descriptor): Promise<void> {
    const digest = parseDigest(desc.digest);
    await this.layout.checkReadable();
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

/*
 * The metadata files of one OCI image layout directory: `oci-layout` (checked, and written last when a
 * layout is created) and `index.json` (read, validated, rewritten atomically, with the tag entries).
 *
 * Ordering rules: every index.json rewrite runs under withIndexLock: an in-process promise chain per
 * resolved directory, then an O_EXCL `index.json.lock` file against other processes (stale after 30 s).
 * A read needs no lock: writes are atomic renames, so a reader sees the old or the new index.
 */
import { promises as fsp, constants as C, type Stats } from 'node:fs';
import path from 'node:path';
import { parseDescriptor, type Descriptor } from './descriptor.js';
import { RegfsError, errnoOf, ioError } from '../util/errors.js';
import { MediaType } from './media-types.js';
import { writeFileAtomic } from '../util/fs-atomic.js';
import { sleep } from '../util/sleep.js';

/** REF_NAME_ANNOTATION is the index.json annotation that carries a tag in an OCI image layout. */
export const REF_NAME_ANNOTATION = 'org.opencontainers.image.ref.name';

/** OCI_LAYOUT_VERSION is the `imageLayoutVersion` regfs writes to the `oci-layout` file. */
export const OCI_LAYOUT_VERSION = '1.0.0';

const MAX_INDEX_BYTES = 64 * 1024 * 1024;
const LOCK_TIMEOUT_MS = 10_000;
const LOCK_STALE_MS = 30_000;

/** One entry of index.json: the validated descriptor and the raw JSON (kept so unknown fields survive a rewrite). */
export interface IndexEntry {
  desc: Descriptor;
  raw: Record<string, unknown>;
}

/** index.json as read: the raw top-level object (other fields are preserved) and its entries. */
export interface LayoutIndex {
  raw: Record<string, unknown>;
  entries: IndexEntry[];
}

/** In-process writer queues, keyed by the resolved layout directory. */
const indexQueues = new Map<string, Promise<void>>();

/** statOrUndefined stats a path, undefined when it (or a parent) does not exist. */
export async function statOrUndefined(p: string): Promise<Stats | undefined> {
  try {
    return await fsp.stat(p);
  } catch (err) {
    if (errnoOf(err) === 'ENOENT' || errnoOf(err) === 'ENOTDIR') return undefined;
    throw ioError(`cannot stat ${p}`, err);
  }
}

/** refNameOf returns the tag an index.json entry carries, if any. */
export function refNameOf(e: IndexEntry): string | undefined {
  return e.desc.annotations?.[REF_NAME_ANNOTATION];
}

/** emptyIndex is the index.json of a new layout. */
function emptyIndex(): LayoutIndex {
  return { raw: { schemaVersion: 2, mediaType: MediaType.ociIndex, manifests: [] }, entries: [] };
}

/** OciLayoutIndex reads and writes the `oci-layout` and `index.json` files of one layout directory. */
export class OciLayoutIndex {
  private readonly key: string;
  private layoutOk = false;
  private writableOk = false;

  constructor(
    /** dir is the layout directory. */
    readonly dir: string,
    /** display names the layout in errors (`oci:DIR`). */
    readonly display: string,
    /** create lets the first write create the layout, and reads see it empty until then. */
    readonly create: boolean,
  ) {
    this.key = path.resolve(dir);
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
  async checkReadable(): Promise<boolean> {
    const state = await this.layoutState();
    if (state === 'ok') return true;
    if (this.create) return false;
    throw this.notLayout();
  }

  /** ensureWritable makes sure the layout exists, creating it (under the index lock) when `create` allows. */
  async ensureWritable(): Promise<void> {
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

  /** readIndex reads and validates index.json (empty while a `create` layout does not exist yet). */
  async readIndex(): Promise<LayoutIndex> {
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

  /** writeIndex rewrites index.json atomically, keeping unknown fields; call it under withIndexLock. */
  async writeIndex(index: LayoutIndex): Promise<void> {
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
  async withIndexLock<T>(fn: () => Promise<T>): Promise<T> {
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
  async updateIndex<T>(mutate: (index: LayoutIndex) => T | Promise<T>): Promise<T> {
    return this.withIndexLock(async () => {
      const index = await this.readIndex();
      const result = await mutate(index);
      await this.writeIndex(index);
      return result;
    });
  }
}

/** applyTags points each tag at `entryDesc` in `index`, or records it untagged when `tags` is empty. */
export function applyTags(index: LayoutIndex, entryDesc: Descriptor, tags: string[]): void {
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

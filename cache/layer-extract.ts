import { promises as fsp } from 'node:fs';
import path from 'node:path';
import type { Readable } from 'node:stream';
import type { Descriptor } from '../registry/descriptor.js';
import { digestHex, type Digest } from '../registry/digest.js';
import type { ReadableRepository } from '../registry/storage.js';
import { RegfsError } from '../util/errors.js';
import { tempPathFor, writeAll, writeAtomic } from '../util/fs-atomic.js';
import type { FileIndex } from './layer-files.js';
import type { LayerCompression, LayerToc, TocEntry } from './layer-toc.js';
import { ByteCursor, untar } from './tar-scan.js';

/*
 * Extraction of single files of image layers, on first open, from the layer's complete verified blob.
 *
 * Policy (per layer; calls on one layer run one at a time, other layers in parallel):
 * - A file already in files/ is served as is.
 * - Lazy: a miss inflates the blob from its start (or from the layer's paused cursor, when that is before
 *   the file) up to the file's data and writes just that file. The cursor is kept, paused, after the file
 *   for CURSOR_IDLE_MS (at most MAX_CURSORS layers), so the next forward miss continues from it.
 * - Whole layer: a backward miss (a file before the paused cursor), or the LAZY_MISSES+1st miss of a
 *   layer, extracts every file of the layer not yet in files/ in one pass (from the cursor when the
 *   wanted file is ahead of it, else from the start), then forgets the cursor and the miss count.
 *   Reading every file of a layer, in any order, so costs at most about three inflations of the layer
 *   rather than one per file.
 * - A blob the cache cannot hold (too large for its file system) is streamed from the registry instead,
 *   once per file opened: the wanted file goes to a temp file, published only once the whole stream's
 *   digest matched (the layer's other files would hardly fit where its blob does not).
 * Files are written to a temp file and renamed (util/fs-atomic.ts), never durable (they are rebuilt).
 * A hard link shares its target's file (its entry carries the target's offset).
 */

/** LAZY_MISSES: misses of one layer served file by file before the rest of the layer is extracted at once. */
export const LAZY_MISSES = 8;
/** CURSOR_IDLE_MS: how long a paused inflate cursor is kept. */
const CURSOR_IDLE_MS = 30_000;
/** MAX_CURSORS: paused cursors kept at most (least recently used closed first). */
const MAX_CURSORS = 8;

/** OpenedBlob is a layer blob's bytes from its start. */
export interface OpenedBlob {
  stream: Readable;
  /**
   * verifiedFirst: every byte was verified before the first was given (a complete cached blob). When
   * false the stream errors instead of ending unless its bytes matched the digest.
   */
  verifiedFirst: boolean;
}

/** LayerBlobSource gives layer blobs' bytes (the blob cache implements it). */
export interface LayerBlobSource {
  /**
   * openBlob: with cacheFirst, the blob is made a complete verified cached blob first when it can be
   * cached (extraction); without, a blob not cached yet is cached while it streams (the TOC pass).
   */
  openBlob(repo: ReadableRepository, desc: Descriptor, opts: { cacheFirst: boolean }): Promise<OpenedBlob>;
}

/**
 * registrySource streams layers straight from the registry, for stores without a blob cache; a whole-blob
 * fetchBlob stream errors at its end unless the bytes match the descriptor (the ReadableRepository contract).
 */
export const registrySource: LayerBlobSource = {
  async openBlob(repo, desc) {
    return { stream: await repo.fetchBlob(desc), verifiedFirst: false };
  },
};

interface Cursor {
  cur: ByteCursor;
  timer?: NodeJS.Timeout;
  /** busy: a call of its layer is using it (it is not closed under it). */
  busy: boolean;
}

interface LayerState {
  chain: Promise<unknown>;
  cursor?: Cursor;
  misses: number;
}

export class LayerExtractor {
  private readonly layers = new Map<Digest, LayerState>();
  private closed = false;

  constructor(
    private readonly filesDir: string,
    private readonly index: FileIndex,
    private readonly blobs: LayerBlobSource,
  ) {}

  entryPath(layer: Digest, e: TocEntry): string {
    return path.join(this.filesDir, digestHex(layer), String(e.o ?? 0));
  }

  async materialize(repo: ReadableRepository, desc: Descriptor, toc: LayerToc, e: TocEntry, compression: LayerCompression): Promise<string> {
    if (e.o === undefined || (e.t !== 'f' && e.t !== 'h')) throw new RegfsError('IO', `${e.p} of layer ${toc.digest} has no data offset in its TOC`);
    const file = this.entryPath(toc.digest, e);
    await this.index.ready;
    if (await this.present(file)) return file;
    const st = this.state(toc.digest);
    const run = st.chain.then(async () => {
      if (await this.present(file)) return;
      await fsp.mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
      if ((e.s ?? 0) === 0) {
        await writeAtomic(file, async () => undefined, { durable: false });
        this.index.add(file, 0);
        return;
      }
      st.misses++;
      const backward = st.cursor !== undefined && e.o! < st.cursor.cur.pos;
      if (backward || st.misses > LAZY_MISSES) await this.wholeLayer(repo, desc, toc, e, compression, st, backward);
      else await this.one(repo, desc, toc, e, compression, st);
    });
    st.chain = run.catch(() => undefined);
    await run;
    return file;
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const st of this.layers.values()) await this.dropCursor(st);
  }

  private state(d: Digest): LayerState {
    let st = this.layers.get(d);
    if (!st) {
      st = { chain: Promise.resolve(), misses: 0 };
      this.layers.set(d, st);
    }
    return st;
  }

  private async present(file: string): Promise<boolean> {
    const st = await fsp.lstat(file).catch(() => undefined);
    if (st?.isFile()) {
      this.index.touch(file);
      if (!this.index.has(file)) this.index.add(file, st.size);
      return true;
    }
    this.index.forget(file);
    return false;
  }

  /** open starts inflating the layer from its start: from the cached verified blob, else (verifiedFirst false) from a stream checked at its end. */
  private async open(repo: ReadableRepository, desc: Descriptor, compression: LayerCompression): Promise<{ cur: ByteCursor; verifiedFirst: boolean }> {
    const blob = await this.blobs.openBlob(repo, desc, { cacheFirst: true });
    const tar = untar(blob.stream, compression);
    return { cur: new ByteCursor(tar[Symbol.asyncIterator]() as AsyncIterator<Buffer>), verifiedFirst: blob.verifiedFirst };
  }

  /** one extracts a single file, from the paused cursor when it is before the file, and keeps the cursor. */
  private async one(repo: ReadableRepository, desc: Descriptor, toc: LayerToc, e: TocEntry, compression: LayerCompression, st: LayerState): Promise<void> {
    let c = st.cursor;
    if (c) {
      clearTimeout(c.timer);
      c.busy = true;
    } else {
      const opened = await this.open(repo, desc, compression);
      // Only a stream checked at its end: the file is published after the check (never open a stream and leave it unread).
      if (!opened.verifiedFirst) return this.wholeLayer(repo, desc, toc, e, compression, st, true, opened);
      c = { cur: opened.cur, busy: true };
      st.cursor = c;
    }
    try {
      await c.cur.skip(e.o! - c.cur.pos);
      await this.write(c.cur, this.entryPath(toc.digest, e), e.s ?? 0);
    } catch (err) {
      c.busy = false;
      await this.dropCursor(st);
      throw err;
    }
    c.busy = false;
    this.park(toc.digest, st);
  }

  /** wholeLayer extracts every file of the layer not in files/ yet (and always `want`) in one pass; from a stream checked at its end, `want` only. */
  private async wholeLayer(
    repo: ReadableRepository,
    desc: Descriptor,
    toc: LayerToc,
    want: TocEntry,
    compression: LayerCompression,
    st: LayerState,
    fromStart: boolean,
    opened?: { cur: ByteCursor; verifiedFirst: boolean },
  ): Promise<void> {
    let cur: ByteCursor;
    let verifiedFirst = true;
    if (opened) {
      cur = opened.cur;
      verifiedFirst = opened.verifiedFirst;
    } else if (st.cursor && !fromStart) {
      clearTimeout(st.cursor.timer);
      cur = st.cursor.cur;
      st.cursor = undefined;
    } else {
      await this.dropCursor(st);
      const opened = await this.open(repo, desc, compression);
      cur = opened.cur;
      verifiedFirst = opened.verifiedFirst;
    }
    const wanted = this.entryPath(toc.digest, want);
    const pending: Array<{ tmp: string; file: string; bytes: number }> = [];
    try {
      for (const e of toc.entries) {
        if (e.t !== 'f' || e.o === undefined || e.o < cur.pos || !e.s) continue;
        const file = this.entryPath(toc.digest, e);
        // From a stream (a blob too large for the cache file system) only the wanted file: the rest would not fit either.
        if (file !== wanted && (this.index.has(file) || !verifiedFirst)) continue;
        await cur.skip(e.o - cur.pos);
        if (verifiedFirst) await this.write(cur, file, e.s);
        else pending.push({ tmp: await this.writeTemp(cur, file, e.s), file, bytes: e.s });
      }
      if (!verifiedFirst) {
        await cur.drain(); // the digest is checked at the end of the stream: nothing is published before
        for (const p of pending.splice(0)) {
          await fsp.rename(p.tmp, p.file);
          this.index.add(p.file, p.bytes);
        }
      }
    } finally {
      for (const p of pending) await fsp.rm(p.tmp, { force: true });
      await cur.close().catch(() => undefined);
      st.misses = 0;
    }
  }

  private async write(cur: ByteCursor, file: string, size: number): Promise<void> {
    await writeAtomic(file, (fh) => cur.copy(size, (b) => writeAll(fh, b)), { durable: false });
    this.index.add(file, size);
  }

  private async writeTemp(cur: ByteCursor, file: string, size: number): Promise<string> {
    const tmp = tempPathFor(file);
    const fh = await fsp.open(tmp, 'wx', 0o600);
    try {
      await cur.copy(size, (b) => writeAll(fh, b));
    } catch (err) {
      await fh.close().catch(() => undefined);
      await fsp.rm(tmp, { force: true });
      throw err;
    }
    await fh.close();
    return tmp;
  }

  /** park keeps a layer's cursor for CURSOR_IDLE_MS, closing the least recently parked beyond MAX_CURSORS. */
  private park(d: Digest, st: LayerState): void {
    const c = st.cursor;
    if (!c) return;
    if (this.closed) {
      void this.dropCursor(st);
      return;
    }
    c.timer = setTimeout(() => void this.dropCursor(st, c), CURSOR_IDLE_MS);
    c.timer.unref();
    // Map order is insertion order: re-insert to mark it the most recent.
    this.layers.delete(d);
    this.layers.set(d, st);
    let parked = 0;
    for (const s of [...this.layers.values()].reverse()) if (s.cursor && ++parked > MAX_CURSORS) void this.dropCursor(s);
  }

  private async dropCursor(st: LayerState, only?: Cursor): Promise<void> {
    const c = st.cursor;
    if (!c || (only && c !== only) || c.busy) return;
    clearTimeout(c.timer);
    st.cursor = undefined;
    await c.cur.close().catch(() => undefined);
  }
}

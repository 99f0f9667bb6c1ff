import { promises as fsp } from 'node:fs';
import path from 'node:path';
import type { EvictionCandidate, SideStore } from './eviction.js';

/*
 * FileIndex counts what image views keep beside the blobs, `tocs/<hex>.json` and `files/<dir>/<name>`,
 * for the cache's size bound: it is one of the blob cache's side stores, so `--cache-max-size`, the
 * free-space floor and `regfs cache prune` evict these files too (least recently used first, with blobs).
 * Everything here can be rebuilt: an evicted TOC is rebuilt from its layer, an evicted file is extracted
 * again on its next open. A file just created or opened is not evicted for GRACE_MS (it is about to be
 * opened); a file evicted while open stays readable through its open descriptor (its space is freed at close).
 */

/** GRACE_MS: how long a file just created, found or opened is kept from eviction. */
const GRACE_MS = 2_000;
/** STALE_TEMP_MS: temp files (`.*.part`) older than this are leftovers of a crash, removed at load. */
const STALE_TEMP_MS = 10 * 60_000;

interface Kept {
  bytes: number;
  lastAccess: number;
  busyUntil: number;
}

export class FileIndex implements SideStore {
  private readonly entries = new Map<string, Kept>();
  private total = 0;
  /** ready settles once the directories were scanned. */
  readonly ready: Promise<void>;

  constructor(
    private readonly tocDir: string,
    private readonly filesDir: string,
    private readonly grew: () => void,
  ) {
    this.ready = this.load().catch(() => undefined);
  }

  /** add records a file just written. */
  add(file: string, bytes: number): void {
    const now = Date.now();
    const old = this.entries.get(file);
    if (old) this.total -= old.bytes;
    this.entries.set(file, { bytes, lastAccess: now, busyUntil: now + GRACE_MS });
    this.total += bytes;
    this.grew();
  }

  /** touch marks a file used now (and keeps it for GRACE_MS). */
  touch(file: string): void {
    const e = this.entries.get(file);
    if (!e) return;
    e.lastAccess = Date.now();
    e.busyUntil = e.lastAccess + GRACE_MS;
  }

  /** has tells whether a file is believed to be on disk. */
  has(file: string): boolean {
    return this.entries.has(file);
  }

  /** forget drops a file found missing. */
  forget(file: string): void {
    const e = this.entries.get(file);
    if (!e) return;
    this.entries.delete(file);
    this.total -= e.bytes;
  }

  bytes(): number {
    return this.total;
  }

  /** count is the number of files indexed. */
  get count(): number {
    return this.entries.size;
  }

  candidates(): EvictionCandidate[] {
    const now = Date.now();
    const out: EvictionCandidate[] = [];
    for (const [key, e] of this.entries) if (e.busyUntil <= now) out.push({ key, bytes: e.bytes, lastAccess: e.lastAccess });
    return out;
  }

  async remove(key: string): Promise<number> {
    const e = this.entries.get(key);
    if (!e || e.busyUntil > Date.now()) return 0;
    this.forget(key);
    await fsp.rm(key, { force: true });
    return e.bytes;
  }

  private async load(): Promise<void> {
    const now = Date.now();
    const note = async (file: string): Promise<void> => {
      const st = await fsp.lstat(file).catch(() => undefined);
      if (!st?.isFile()) return;
      if (path.basename(file).startsWith('.')) {
        if (now - st.mtimeMs > STALE_TEMP_MS) await fsp.rm(file, { force: true });
        return;
      }
      if (this.entries.has(file)) return;
      this.entries.set(file, { bytes: st.size, lastAccess: Math.max(st.atimeMs, st.mtimeMs), busyUntil: 0 });
      this.total += st.size;
    };
    for (const name of await fsp.readdir(this.tocDir).catch(() => [] as string[])) await note(path.join(this.tocDir, name));
    for (const dir of await fsp.readdir(this.filesDir).catch(() => [] as string[])) {
      const d = path.join(this.filesDir, dir);
      for (const name of await fsp.readdir(d).catch(() => [] as string[])) await note(path.join(d, name));
    }
    if (this.total > 0) this.grew();
  }
}

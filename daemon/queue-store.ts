import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { writeFileAtomic } from '../util/fs-atomic.js';
import { nullLogger, type Logger } from '../util/log.js';
import { ensurePrivateDir } from '../util/private-dir.js';
import type { SkippedEntry } from '../staging/layout.js';
import type { KnownBlob } from '../staging/push-tag.js';

/** QueueState is where a staged push stands. */
export type QueueState = 'pending' | 'uploading' | 'done' | 'failed';

/** QueueItem is one tag to push, as persisted in the queue's folder. */
export interface QueueItem {
  id: string;
  target: string;
  repository: string;
  tag: string;
  dir: string;
  fingerprint: string;
  state: QueueState;
  attempts: number;
  notBefore: number;
  lastError?: string;
  expectedDigest?: string;
  pushedDigest?: string;
  /** blobs remembers each file's digest by inode, size and mtime, so an unchanged file is not read again. */
  blobs?: Record<string, KnownBlob>;
  /** skipped are the folder's entries that are not published (symlinks, special files, bad names), named once in the log. */
  skipped?: SkippedEntry[];
  /**
   * expectTag (sync pushes) is the manifest digest the tag was on when the push was decided, null when it did
   * not exist: a tag found elsewhere right before or after the manifest PUT is a lost race (PushQueue.onTagMoved).
   */
  expectTag?: string | null;
  updatedAt: string;
}

/** Pushed is the record of a tag's last push: the folder's fingerprint and the manifest digest it landed as. */
export interface Pushed {
  fingerprint: string;
  digest: string;
}

/** QUEUE_DIR is the queue's own state folder, `<state>/queue`. */
export const QUEUE_DIR = 'queue';

/** PUSHED_FILE is the name of the last-pushed records, kept in the queue's folder (before: `<state>/pushed.json`). */
export const PUSHED_FILE = 'pushed.json';

/** ITEM_FILE matches an item's file name: its 24-hex id and `.json`. */
const ITEM_FILE = /^[0-9a-f]{24}\.json$/;

/** DONE_KEPT_MS is how long a done item stays (for status) before open drops it. */
const DONE_KEPT_MS = 24 * 3600 * 1000;

/**
 * QueueStore is the push queue's durable state in `<state>/queue/`: one JSON file per item (`<id>.json`) and
 * `pushed.json` (each tag's last pushed fingerprint). Every write is atomic (util/fs-atomic.ts: temp file,
 * fsync, rename), so a kill at any moment leaves the previous or the new version, never a mix.
 */
export class QueueStore {
  private constructor(
    /** dir is the queue's folder. */
    readonly dir: string,
    private readonly log: Logger,
  ) {}

  /**
   * open makes sure `<stateDir>` and its queue folder exist and are private, and moves a `pushed.json` left
   * in `<stateDir>` by an older version into the queue folder (once: read the old file when the new one is
   * absent, write the new one, remove the old).
   */
  static async open(stateDir: string, log: Logger = nullLogger): Promise<QueueStore> {
    const dir = path.join(stateDir, QUEUE_DIR);
    await fsp.mkdir(path.dirname(stateDir), { recursive: true, mode: 0o700 });
    for (const d of [stateDir, dir]) await ensurePrivateDir(d, 'state directory');
    const store = new QueueStore(dir, log);
    await store.migratePushed(path.join(stateDir, PUSHED_FILE));
    return store;
  }

  private get pushedPath(): string {
    return path.join(this.dir, PUSHED_FILE);
  }

  private async migratePushed(old: string): Promise<void> {
    let text: string;
    try {
      text = await fsp.readFile(old, 'utf8');
    } catch {
      return;
    }
    const hasNew = await fsp.lstat(this.pushedPath).then(() => true, () => false);
    if (!hasNew) {
      await writeFileAtomic(this.pushedPath, text, 0o600);
      this.log.info(`push queue: moved ${old} to ${this.pushedPath}`);
    }
    await fsp.rm(old, { force: true });
  }

  /** loadPushed reads the last-pushed records; a missing or unreadable file is empty (pushes are re-checked against the registry anyway). */
  async loadPushed(): Promise<Record<string, Pushed>> {
    try {
      return JSON.parse(await fsp.readFile(this.pushedPath, 'utf8')) as Record<string, Pushed>;
    } catch {
      return {};
    }
  }

  /** savePushed writes the last-pushed records atomically. */
  savePushed(pushed: Record<string, Pushed>): Promise<void> {
    return writeFileAtomic(this.pushedPath, JSON.stringify(pushed), 0o600);
  }

  /**
   * loadItems reads every item; a done item older than a day is deleted, an item caught mid-upload by a
   * crash goes back to pending, an unreadable file is skipped with a warning.
   */
  async loadItems(): Promise<QueueItem[]> {
    const out: QueueItem[] = [];
    const dayAgo = Date.now() - DONE_KEPT_MS;
    for (const f of await fsp.readdir(this.dir)) {
      if (!ITEM_FILE.test(f)) continue;
      try {
        const item = JSON.parse(await fsp.readFile(path.join(this.dir, f), 'utf8')) as QueueItem;
        if (item.state === 'done' && Date.parse(item.updatedAt) < dayAgo) {
          await fsp.rm(path.join(this.dir, f), { force: true });
          continue;
        }
        if (item.state === 'uploading') {
          item.state = 'pending';
          item.notBefore = 0;
          this.log.info(`resuming the interrupted push of ${item.repository}:${item.tag}`);
        }
        out.push(item);
      } catch {
        this.log.warn(`push journal: ignoring unreadable ${f}`);
      }
    }
    return out;
  }

  /** saveItem stamps updatedAt and writes the item atomically. */
  async saveItem(item: QueueItem): Promise<void> {
    item.updatedAt = new Date().toISOString();
    await writeFileAtomic(path.join(this.dir, `${item.id}.json`), JSON.stringify(item, null, 1), 0o600);
  }

  /** removeItem deletes an item's file (missing is fine). */
  async removeItem(id: string): Promise<void> {
    await fsp.rm(path.join(this.dir, `${id}.json`), { force: true });
  }
}

import { createHash } from 'node:crypto';
import { errorMessage } from '../util/errors.js';
import type { Repository } from '../registry/storage.js';
import { nullLogger, redactText, type Logger } from '../util/log.js';
import { fingerprint, scanTagDir, type SkippedEntry, type StagedEntry, type StagedTag } from '../staging/layout.js';
import { pushTag, type TagMoved } from '../staging/push-tag.js';
import { isInside } from '../util/paths.js';
import { QueueStore, type Pushed, type QueueItem } from './queue-store.js';

export type { QueueItem, QueueState } from './queue-store.js';

/** EnqueueOptions qualify one enqueue. */
export interface EnqueueOptions {
  /** expectTag guards the push (sync): the digest the tag is on now, null when absent (QueueItem.expectTag). */
  expectTag?: string | null;
}

/** PushQueueOptions tune the queue. */
export interface PushQueueOptions {
  repositoryFor(item: QueueItem): Repository;
  log?: Logger;
  maxAttempts?: number;
  baseDelayMs?: number;
  quietMs?: number;
  concurrency?: number;
  /** stopWaitMs bounds how long stop waits for pushes in flight (default 10 s, below the 15 s lab/daemon.ts gives a stop before SIGKILL). */
  stopWaitMs?: number;
}

/**
 * PushQueue schedules staged pushes: it waits for a tag folder to be quiet, pushes it (staging/push-tag.ts),
 * retries with backoff and notices changes during an upload. Its state (daemon/queue-store.ts: one JSON
 * file per tag in `<state>/queue/`) is written atomically before every step, so a kill -9 at any moment
 * resumes on restart; blobs already in the registry are skipped (HEAD) and a tag already on the expected
 * digest is not PUT again, so each push lands exactly once.
 */
export class PushQueue {
  private readonly items = new Map<string, QueueItem>();
  private readonly listeners: Array<(i: QueueItem) => void> = [];
  private readonly inflight = new Map<string, Promise<void>>();
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;
  /** abandoned is set when stop gave up waiting for pushes in flight. */
  private abandoned = false;
  private readonly log: Logger;
  private readonly maxAttempts: number;
  private readonly baseDelayMs: number;
  private readonly quietMs: number;
  private readonly concurrency: number;
  private readonly stopWaitMs: number;
  private movedHandler: ((item: QueueItem, e: TagMoved) => Promise<void>) | undefined;

  private constructor(private readonly store: QueueStore, private pushed: Record<string, Pushed>, private readonly opts: PushQueueOptions) {
    this.log = opts.log ?? nullLogger;
    this.maxAttempts = opts.maxAttempts ?? 5;
    this.baseDelayMs = opts.baseDelayMs ?? 1000;
    this.quietMs = opts.quietMs ?? 2000;
    this.concurrency = opts.concurrency ?? 2;
    this.stopWaitMs = opts.stopWaitMs ?? 10_000;
  }

  /** open loads the queue's state; items caught mid-upload by a crash go back to pending. */
  static async open(stateDir: string, opts: PushQueueOptions): Promise<PushQueue> {
    const store = await QueueStore.open(stateDir, opts.log ?? nullLogger);
    const q = new PushQueue(store, await store.loadPushed(), opts);
    for (const item of await store.loadItems()) q.items.set(item.id, item);
    return q;
  }

  private keyOf(target: string, repository: string, tag: string): string {
    return `${target}|${repository}:${tag}`;
  }

  private async save(item: QueueItem): Promise<void> {
    await this.store.saveItem(item);
    for (const l of this.listeners) l(item);
  }

  /** enqueue records a staged tag; an unchanged tag (same fingerprint as its last push) is not queued. */
  async enqueue(target: string, staged: StagedTag, opts: EnqueueOptions = {}): Promise<'queued' | 'unchanged' | 'updated'> {
    const key = this.keyOf(target, staged.repository, staged.tag);
    const id = createHash('sha256').update(key).digest('hex').slice(0, 24);
    const fp = fingerprint(staged.entries);
    const existing = this.items.get(id);
    if (existing && existing.fingerprint === fp && existing.state !== 'done') return 'unchanged';
    if (!existing || existing.state === 'done') {
      if (this.pushed[key]?.fingerprint === fp) return 'unchanged';
    }
    if (staged.entries.length === 0) return 'unchanged';
    // A push in flight notices the change itself (it re-scans before the manifest PUT).
    if (existing && this.inflight.has(id)) {
      if (opts.expectTag !== undefined) existing.expectTag = opts.expectTag;
      return 'updated';
    }
    const item: QueueItem = {
      id,
      target,
      repository: staged.repository,
      tag: staged.tag,
      dir: staged.dir,
      fingerprint: fp,
      state: 'pending',
      attempts: 0,
      notBefore: this.quietFrom(staged.entries),
      ...(existing?.blobs ? { blobs: existing.blobs } : {}),
      ...(existing?.skipped ? { skipped: existing.skipped } : {}),
      ...(opts.expectTag !== undefined ? { expectTag: opts.expectTag } : {}),
      updatedAt: '',
    };
    this.items.set(id, item);
    await this.save(item);
    if (!this.stopped && this.timer) setImmediate(() => this.pump());
    return existing && existing.state !== 'done' ? 'updated' : 'queued';
  }

  /**
   * quietFrom is when a tag folder counts as quiet: its newest file mtime plus the quiet period, never
   * later than one quiet period from now (a future mtime must not hold a push back). A file moved in
   * whole keeps its old mtime and starts uploading at once; a file still being written waits.
   */
  private quietFrom(entries: StagedEntry[]): number {
    const now = Date.now();
    const newest = Math.max(0, ...entries.map((e) => e.mtimeMs));
    return Math.min(now + this.quietMs, Math.max(now, newest + this.quietMs));
  }

  /** start runs the processing loop. */
  start(): void {
    this.stopped = false;
    this.abandoned = false;
    const tick = (): void => {
      if (this.stopped) return;
      this.pump();
      this.timer = setTimeout(tick, 200);
    };
    tick();
  }

  private pump(): void {
    const now = Date.now();
    for (const item of this.items.values()) {
      if (this.inflight.size >= this.concurrency) return;
      if (item.state !== 'pending' || item.notBefore > now || this.inflight.has(item.id)) continue;
      const p = this.process(item)
        .catch((err: unknown) => this.log.error(`push journal: ${item.repository}:${item.tag}: ${redactText(errorMessage(err))}`))
        .finally(() => this.inflight.delete(item.id));
      this.inflight.set(item.id, p);
    }
  }

  /** scan lists the item's folder; entries it cannot publish are recorded on the item and each named once in the log. */
  private async scan(item: QueueItem): Promise<StagedEntry[]> {
    const skipped: SkippedEntry[] = [];
    const entries = await scanTagDir(item.dir, { skipped });
    const before = new Set((item.skipped ?? []).map((s) => `${s.path}\0${s.reason}`));
    for (const s of skipped) {
      if (!before.has(`${s.path}\0${s.reason}`)) this.log.warn(`staging: ${item.repository}:${item.tag}: not publishing ${JSON.stringify(s.path)}: ${s.reason}`);
    }
    item.skipped = skipped.length ? skipped : undefined;
    return entries;
  }

  private async process(item: QueueItem): Promise<void> {
    const entries = await this.scan(item);
    const fp = fingerprint(entries);
    if (entries.length === 0) {
      this.items.delete(item.id);
      await this.store.removeItem(item.id);
      return;
    }
    if (fp !== item.fingerprint) {
      // Still changing: wait for another quiet period.
      item.fingerprint = fp;
      item.notBefore = Date.now() + this.quietMs;
      await this.save(item);
      return;
    }
    const key = this.keyOf(item.target, item.repository, item.tag);
    try {
      item.state = 'uploading';
      item.expectedDigest = undefined;
      await this.save(item);
      const { digest: expected, put } = await pushTag({
        repo: this.opts.repositoryFor(item),
        dir: item.dir,
        entries,
        tag: item.tag,
        known: item.blobs,
        onUploaded: (name, blob) => {
          item.blobs = { ...item.blobs, [name]: blob };
        },
        ...(item.expectTag !== undefined ? { guard: { expect: item.expectTag, moved: (e: TagMoved) => this.tagMoved(item, e) } } : {}),
        beforePut: async (digest) => {
          item.expectedDigest = digest;
          await this.save(item);
          // A file changed during the upload: never publish half; push again once it is quiet.
          if (fingerprint(await this.scan(item)) !== item.fingerprint) throw new ChangedDuringUpload();
        },
      });
      if (!put) this.log.info(`${item.repository}:${item.tag} already on ${expected}; not putting the manifest again`);
      item.state = 'done';
      item.pushedDigest = expected;
      item.lastError = undefined;
      this.pushed[key] = { fingerprint: item.fingerprint, digest: expected };
      await this.store.savePushed(this.pushed);
      await this.save(item);
    } catch (err) {
      // Abandoned by stop (the registries are being closed under it): the item stays `uploading` on disk and resumes on restart.
      if (this.abandoned) return;
      const now = fingerprint(await this.scan(item));
      const changed = err instanceof ChangedDuringUpload || now !== item.fingerprint;
      if (changed) {
        this.log.info(`${item.repository}:${item.tag} changed during upload; pushing it again when quiet`);
        item.state = 'pending';
        item.fingerprint = now;
        item.notBefore = Date.now() + this.quietMs;
      } else {
        item.attempts++;
        item.lastError = redactText(errorMessage(err));
        if (item.attempts >= this.maxAttempts) {
          item.state = 'failed';
        } else {
          item.state = 'pending';
          const delay = Math.min(60_000, this.baseDelayMs * 2 ** (item.attempts - 1));
          item.notBefore = Date.now() + delay / 2 + Math.random() * (delay / 2);
          this.log.warn(`push of ${item.repository}:${item.tag} failed (attempt ${item.attempts}/${this.maxAttempts}), retrying: ${item.lastError}`);
        }
      }
      await this.save(item);
    }
  }

  /**
   * stop ends the loop and waits (up to stopWaitMs, 10 s) for pushes in flight, then abandons the rest and
   * resolves with how many are still running. An abandoned push stays in the queue's state (`uploading`,
   * which open turns back into pending), so it is retried on restart and lands exactly once.
   */
  async stop(): Promise<number> {
    this.stopped = true;
    clearTimeout(this.timer);
    const all = Promise.allSettled([...this.inflight.values()]);
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([all, new Promise((r) => (timer = setTimeout(r, this.stopWaitMs)))]);
    clearTimeout(timer);
    this.abandoned = this.inflight.size > 0;
    if (this.abandoned) this.log.warn(`stopping with ${this.inflight.size} push(es) still running: abandoned, retried on restart`);
    return this.inflight.size;
  }

  /** status lists every item. */
  status(): QueueItem[] {
    return [...this.items.values()].sort((a, b) => (a.updatedAt < b.updatedAt ? -1 : 1));
  }

  /** retry requeues failed items and returns how many. */
  async retry(): Promise<number> {
    let n = 0;
    for (const item of this.items.values()) {
      if (item.state !== 'failed') continue;
      item.state = 'pending';
      item.attempts = 0;
      item.notBefore = 0;
      await this.save(item);
      n++;
    }
    return n;
  }

  /** find returns the journal item of a tag, if any, and whether its push is running right now. */
  find(target: string, repository: string, tag: string): { item: QueueItem; inflight: boolean } | undefined {
    const id = createHash('sha256').update(this.keyOf(target, repository, tag)).digest('hex').slice(0, 24);
    const item = this.items.get(id);
    return item ? { item, inflight: this.inflight.has(id) } : undefined;
  }

  /** cancel drops a tag's push that is waiting (pending or failed); false when there is none or it is running. */
  async cancel(target: string, repository: string, tag: string): Promise<boolean> {
    const found = this.find(target, repository, tag);
    if (!found || found.inflight || (found.item.state !== 'pending' && found.item.state !== 'failed')) return false;
    this.items.delete(found.item.id);
    await this.store.removeItem(found.item.id);
    return true;
  }

  /** cancelItem is cancel for an item of the journal (its folder is no longer a tag folder). */
  cancelItem(item: QueueItem): Promise<boolean> {
    return this.cancel(item.target, item.repository, item.tag);
  }

  /** forget drops the record of a tag's last push, so the same files are pushed again (a tag deleted in the registry is restored). */
  async forget(target: string, repository: string, tag: string): Promise<void> {
    const key = this.keyOf(target, repository, tag);
    if (!(key in this.pushed)) return;
    delete this.pushed[key];
    await this.store.savePushed(this.pushed);
  }

  /** pushedFingerprint is the fingerprint of what was last pushed (or recorded) for target repository:tag. */
  pushedFingerprint(target: string, repository: string, tag: string): string | undefined {
    return this.pushed[this.keyOf(target, repository, tag)]?.fingerprint;
  }

  /**
   * recordPublished notes that a tag folder with this fingerprint already matches the registry's manifest
   * `digest` (a mount copied the tag's files into staging before a write): it is not pushed unless it changes.
   */
  async recordPublished(target: string, repository: string, tag: string, fp: string, digest: string): Promise<void> {
    this.pushed[this.keyOf(target, repository, tag)] = { fingerprint: fp, digest };
    await this.store.savePushed(this.pushed);
  }

  /** postpone restarts the quiet period of pending items whose folder contains p or lies below it (a write through a mount). */
  postpone(p: string): void {
    const until = Date.now() + this.quietMs;
    for (const item of this.items.values()) {
      if (item.state !== 'pending' || item.notBefore >= until) continue;
      if (isInside(item.dir, p) || isInside(p, item.dir)) item.notBefore = until;
    }
  }


  /**
   * onTagMoved sets who handles a lost race of a guarded push (item.expectTag): another writer moved the tag
   * right before our manifest PUT, or replaced ours right after it. The handler keeps the other version (sync:
   * a conflict tag) before the push goes on; a throw fails this attempt (retried).
   */
  onTagMoved(handler: (item: QueueItem, e: TagMoved) => Promise<void>): void {
    this.movedHandler = handler;
  }

  private async tagMoved(item: QueueItem, e: TagMoved): Promise<void> {
    if (this.movedHandler) return this.movedHandler(item, e);
    this.log.warn(`${item.repository}:${item.tag}: ${e.when === 'before' ? `moved to ${e.current.digest} by another writer before our push` : `replaced by ${e.current.digest} right after our push of ${e.ours.digest}`}`);
  }

  /** onChange calls listener after every state change. */
  onChange(listener: (item: QueueItem) => void): void {
    this.listeners.push(listener);
  }
}

class ChangedDuringUpload extends Error {}

import { createHash } from 'node:crypto';
import { createReadStream, promises as fsp } from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import type { Descriptor } from '../registry/descriptor.js';
import { digestOf, type Digest } from '../registry/digest.js';
import { errorMessage } from '../util/errors.js';
import { Annotation, MediaType } from '../registry/media-types.js';
import { buildManifest, EMPTY_CONFIG_DESCRIPTOR, prepareFile } from '../registry/pack.js';
import type { Repository } from '../registry/storage.js';
import { runLimited } from '../util/limit.js';
import { writeFileAtomic } from '../util/fs-atomic.js';
import { ensurePrivateDir } from '../util/private-dir.js';
import { nullLogger, redactText, type Logger } from '../util/log.js';
import { fingerprint, scanTagDir, type StagedEntry, type StagedTag } from '../staging/layout.js';
import { isInside } from '../util/paths.js';

/** HASH_FIRST_BYTES: files up to this size are hashed before upload (so a blob already there is skipped); bigger ones stream. */
const HASH_FIRST_BYTES = 8 * 1024 * 1024;

/** QueueState is where a staged push stands. */
export type QueueState = 'pending' | 'uploading' | 'done' | 'failed';

/** QueueItem is one tag to push, as persisted in the journal. */
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
  blobs?: Record<string, { key: string; digest: Digest }>;
  updatedAt: string;
}

/** PushQueueOptions tune the queue. */
export interface PushQueueOptions {
  repositoryFor(item: QueueItem): Repository;
  log?: Logger;
  maxAttempts?: number;
  baseDelayMs?: number;
  quietMs?: number;
  concurrency?: number;
}

interface Pushed {
  fingerprint: string;
  digest: string;
}

/**
 * PushQueue is the durable journal of staged pushes: one JSON file per tag in `<state>/queue/`, written
 * atomically before every step, so a kill -9 at any moment resumes on restart. Blobs already in the
 * registry are skipped (HEAD); before the manifest PUT the tag is resolved, and a tag already on the
 * expected digest is not PUT again, so each push lands exactly once.
 */
export class PushQueue {
  private readonly items = new Map<string, QueueItem>();
  private readonly listeners: Array<(i: QueueItem) => void> = [];
  private readonly inflight = new Map<string, Promise<void>>();
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;
  private readonly log: Logger;
  private readonly maxAttempts: number;
  private readonly baseDelayMs: number;
  private readonly quietMs: number;
  private readonly concurrency: number;

  private constructor(private readonly dir: string, private pushed: Record<string, Pushed>, private readonly opts: PushQueueOptions) {
    this.log = opts.log ?? nullLogger;
    this.maxAttempts = opts.maxAttempts ?? 5;
    this.baseDelayMs = opts.baseDelayMs ?? 1000;
    this.quietMs = opts.quietMs ?? 2000;
    this.concurrency = opts.concurrency ?? 2;
  }

  /** open loads the journal; items caught mid-upload by a crash go back to pending. */
  static async open(stateDir: string, opts: PushQueueOptions): Promise<PushQueue> {
    const dir = path.join(stateDir, 'queue');
    await fsp.mkdir(path.dirname(stateDir), { recursive: true, mode: 0o700 });
    for (const d of [stateDir, dir]) await ensurePrivateDir(d, 'state directory');
    let pushed: Record<string, Pushed> = {};
    try {
      pushed = JSON.parse(await fsp.readFile(path.join(stateDir, 'pushed.json'), 'utf8')) as Record<string, Pushed>;
    } catch {
      // first start, or unreadable: pushes are re-checked against the registry anyway
    }
    const q = new PushQueue(dir, pushed, opts);
    const dayAgo = Date.now() - 24 * 3600 * 1000;
    for (const f of await fsp.readdir(dir)) {
      if (!f.endsWith('.json')) continue;
      try {
        const item = JSON.parse(await fsp.readFile(path.join(dir, f), 'utf8')) as QueueItem;
        if (item.state === 'done' && Date.parse(item.updatedAt) < dayAgo) {
          await fsp.rm(path.join(dir, f), { force: true });
          continue;
        }
        if (item.state === 'uploading') {
          item.state = 'pending';
          item.notBefore = 0;
          q.log.info(`resuming the interrupted push of ${item.repository}:${item.tag}`);
        }
        q.items.set(item.id, item);
      } catch {
        q.log.warn(`push journal: ignoring unreadable ${f}`);
      }
    }
    return q;
  }

  private keyOf(target: string, repository: string, tag: string): string {
    return `${target}|${repository}:${tag}`;
  }

  private async save(item: QueueItem): Promise<void> {
    item.updatedAt = new Date().toISOString();
    await writeFileAtomic(path.join(this.dir, `${item.id}.json`), JSON.stringify(item, null, 1), 0o600);
    for (const l of this.listeners) l(item);
  }

  /** enqueue records a staged tag; an unchanged tag (same fingerprint as its last push) is not queued. */
  async enqueue(target: string, staged: StagedTag): Promise<'queued' | 'unchanged' | 'updated'> {
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
    if (existing && this.inflight.has(id)) return 'updated';
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

  private async process(item: QueueItem): Promise<void> {
    const entries = await scanTagDir(item.dir, this.log);
    const fp = fingerprint(entries);
    if (entries.length === 0) {
      this.items.delete(item.id);
      await fsp.rm(path.join(this.dir, `${item.id}.json`), { force: true });
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
      const repo = this.opts.repositoryFor(item);
      const layers: Descriptor[] = new Array<Descriptor>(entries.length);
      await runLimited(
        entries.map((e, i) => ({ e, i })),
        3,
        async ({ e, i }) => {
          layers[i] = await this.uploadEntry(repo, item, e);
        },
      );
      await repo.pushBlob(EMPTY_CONFIG_DESCRIPTOR, () => Readable.from([Buffer.from('{}')]));
      const manifest = buildManifest({ config: EMPTY_CONFIG_DESCRIPTOR, layers, artifactType: MediaType.unknownArtifact });
      const expected = digestOf(manifest);
      item.expectedDigest = expected;
      await this.save(item);
      // A file changed during the upload: never publish half; push again once it is quiet.
      if (fingerprint(await scanTagDir(item.dir, this.log)) !== item.fingerprint) throw new ChangedDuringUpload();
      const current = await repo.resolve(item.tag).catch(() => undefined);
      if (current?.digest !== expected) await repo.pushManifest(manifest, MediaType.ociManifest, [item.tag]);
      else this.log.info(`${item.repository}:${item.tag} already on ${expected}; not putting the manifest again`);
      item.state = 'done';
      item.pushedDigest = expected;
      item.lastError = undefined;
      this.pushed[key] = { fingerprint: item.fingerprint, digest: expected };
      await writeFileAtomic(path.join(path.dirname(this.dir), 'pushed.json'), JSON.stringify(this.pushed), 0o600);
      await this.save(item);
    } catch (err) {
      const changed = err instanceof ChangedDuringUpload || fingerprint(await scanTagDir(item.dir, this.log)) !== item.fingerprint;
      if (changed) {
        this.log.info(`${item.repository}:${item.tag} changed during upload; pushing it again when quiet`);
        item.state = 'pending';
        item.fingerprint = fingerprint(await scanTagDir(item.dir, this.log));
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
   * uploadEntry uploads one entry of a tag folder and returns its layer descriptor. A file whose digest
   * the journal remembers (same inode, size and mtime as at its last upload) goes through pushBlob, which
   * skips a blob the registry has; a small file is hashed first for the same reason; a big new file is
   * streamed while it is hashed, so its bytes are read once. A folder becomes one tar+gzip layer.
   */
  private async uploadEntry(repo: Repository, item: QueueItem, e: StagedEntry): Promise<Descriptor> {
    const abs = path.join(item.dir, e.name);
    if (e.kind === 'dir') {
      const b = await prepareFile({ path: e.name }, item.dir);
      await repo.pushBlob(b.desc, b.open);
      return b.desc;
    }
    const st = await fsp.stat(abs);
    const key = `${st.dev}:${st.ino}:${st.size}:${st.mtimeMs}`;
    const known = item.blobs?.[e.name];
    const layer = (digest: Digest): Descriptor => ({ mediaType: MediaType.ociLayerTar, digest, size: st.size, annotations: { [Annotation.title]: e.name } });
    let digest: Digest;
    if (known && known.key === key) {
      digest = known.digest;
      await repo.pushBlob(layer(digest), () => createReadStream(abs));
    } else if (st.size <= HASH_FIRST_BYTES) {
      const b = await prepareFile({ path: e.name }, item.dir);
      digest = b.desc.digest;
      await repo.pushBlob(layer(digest), b.open);
    } else {
      digest = (await repo.pushStream(createReadStream(abs, { highWaterMark: 1024 * 1024 }), st.size)).digest;
    }
    item.blobs = { ...item.blobs, [e.name]: { key, digest } };
    return layer(digest);
  }

  /** stop ends the loop and waits (up to 20 s) for pushes in flight; unfinished ones stay in the journal. */
  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    const all = Promise.allSettled([...this.inflight.values()]);
    await Promise.race([all, new Promise((r) => setTimeout(r, 20_000).unref())]);
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
    await fsp.rm(path.join(this.dir, `${found.item.id}.json`), { force: true });
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
    await writeFileAtomic(path.join(path.dirname(this.dir), 'pushed.json'), JSON.stringify(this.pushed), 0o600);
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
    await writeFileAtomic(path.join(path.dirname(this.dir), 'pushed.json'), JSON.stringify(this.pushed), 0o600);
  }

  /** postpone restarts the quiet period of pending items whose folder contains p or lies below it (a write through a mount). */
  postpone(p: string): void {
    const until = Date.now() + this.quietMs;
    for (const item of this.items.values()) {
      if (item.state !== 'pending' || item.notBefore >= until) continue;
      if (isInside(item.dir, p) || isInside(p, item.dir)) item.notBefore = until;
    }
  }


  /** onChange calls listener after every state change. */
  onChange(listener: (item: QueueItem) => void): void {
    this.listeners.push(listener);
  }
}

class ChangedDuringUpload extends Error {}

import { promises as fsp } from 'node:fs';
import path from 'node:path';
import type { BlobCache } from '../cache/blob-cache.js';
import { RegfsError, errorMessage } from '../util/errors.js';
import { openSource } from '../registry/open.js';
import type { Registry, Repository } from '../registry/storage.js';
import type { Logger } from '../util/log.js';
import { isIgnoredName } from '../staging/layout.js';
import { watchFolder } from '../staging/watcher.js';
import type { RoundReport, SyncPairStatus } from './protocol.js';
import type { PushQueue, QueueItem } from './push-queue.js';
import { checkSyncPlacement, syncEndpoint, type SyncConfig } from './settings.js';
import { SyncRounds, type Pair } from './sync-round.js';
import { conflictTag, tagMatcher } from './sync-rule.js';
import { loadState, pairId, recordConflict, sameConfig, setBase } from './sync-state.js';
import { digestHex } from '../registry/digest.js';
import type { TagMoved } from '../staging/push-tag.js';

/** SyncManagerOptions wire the sync pairs into the daemon. */
export interface SyncManagerOptions {
  stateDir: string;
  queue: PushQueue;
  blobs: BlobCache;
  log: Logger;
  quietMs: number;
  /** placement lists the folders a sync folder must not overlap (mountpoints, staging, cache, state). */
  placement(): { mountpoints: string[]; staging: string[]; cacheDir: string; stateDir: string };
  /** changed is told when sync changed a repository's tags without the queue (a delete, a conflict tag). */
  changed?(repository: string): void;
}

/**
 * SyncManager keeps each sync pair's local folder (`LOCAL/<tag>/<files>`) and repository (`REPO:<tag>`) in
 * step. A round lists the tags, resolves their digests (4 at a time), scans the tag folders and compares
 * both sides with the base in `<state>/sync/<pair>.json`: pulls go through the blob cache into temp files
 * renamed into place, pushes through the durable push queue (the base is recorded when the queue reports
 * the push done). Rounds of a pair never overlap. See docs/sync.md for the rules.
 */
export class SyncManager {
  private readonly pairs = new Map<string, Pair>();
  private readonly dir: string;
  private readonly rounds: SyncRounds;

  constructor(private readonly opts: SyncManagerOptions) {
    this.dir = path.join(opts.stateDir, 'sync');
    this.rounds = new SyncRounds(opts);
    opts.queue.onChange((item) => this.onQueue(item));
    opts.queue.onTagMoved((item, e) => this.onTagMoved(item, e));
  }

  /** registryFor returns the registry a pair opened for a push target (the queue's item.target). */
  registryFor(target: string): Registry | undefined {
    for (const p of this.pairs.values()) if (p.source === target) return p.registry;
    return undefined;
  }

  /** configs lists the pairs as configured. */
  configs(): SyncConfig[] {
    return [...this.pairs.values()].map((p) => p.config);
  }

  /** locals lists the local folders of every pair. */
  locals(): string[] {
    return [...this.pairs.keys()];
  }

  /** add starts syncing a pair: the first round runs at once, then every intervalSeconds and on local changes. */
  async add(config: SyncConfig): Promise<void> {
    const local = path.resolve(config.local);
    if (this.pairs.has(local)) throw new RegfsError('CONFLICT', `${local} is already synced with ${this.pairs.get(local)!.config.repository}; remove it first (regfs sync rm ${local})`);
    checkSyncPlacement(local, { ...this.opts.placement(), syncs: this.locals() });
    const c = { ...config, local };
    const { source, repository } = syncEndpoint(c.repository);
    for (const p of this.pairs.values()) {
      if (p.source === source && p.repoName === repository) throw new RegfsError('CONFLICT', `${c.repository} is already synced with ${p.config.local}; one folder per repository`);
    }
    await fsp.mkdir(this.dir, { recursive: true, mode: 0o700 });
    const id = pairId(c);
    const statePath = path.join(this.dir, `${id}.json`);
    const state = await loadState(statePath, c, this.opts.log);
    // A new pair creates its folder; a pair with a base whose folder is missing waits for it (see localTags).
    if (!Object.keys(state.tags).length) await fsp.mkdir(local, { recursive: true });
    const registry = openSource(source, { plainHttp: c.plainHttp, insecure: c.insecure, caFile: c.caFile, registryConfig: c.registryConfig, log: this.opts.log, create: true });
    let repo: Repository;
    try {
      repo = registry.repository(repository);
    } catch (err) {
      await registry.close();
      throw err;
    }
    const pair: Pair = {
      id,
      config: c,
      source,
      repoName: repository,
      display: `${local} <-> ${c.repository}`,
      registry,
      repo,
      state,
      statePath,
      saving: Promise.resolve(),
      chain: Promise.resolve(),
      matches: tagMatcher(c.tags),
      unsupported: new Map(),
      warned: new Set(),
      tagErrors: new Map(),
      stopped: false,
    };
    this.pairs.set(local, pair);
    pair.timer = setInterval(() => void this.schedule(pair), c.intervalSeconds * 1000);
    if (c.direction !== 'down') {
      pair.watcher = watchFolder(local, {
        ignored: (p) => p !== local && isIgnoredName(path.basename(p)),
        onChange: () => {
          clearTimeout(pair.debounce);
          pair.debounce = setTimeout(() => void this.schedule(pair), Math.max(500, this.opts.quietMs));
        },
        onError: (e) => this.opts.log.warn(`sync: watching ${local}: ${e.message}`),
      });
    }
    this.opts.log.info(`sync ${pair.display}: started (${c.direction}, every ${c.intervalSeconds}s${c.tags ? `, tags ${c.tags}` : ''}${c.propagateDeletes ? ', deletes propagate' : ''})`);
    void this.schedule(pair);
  }

  /** remove stops a pair; with forget its base is deleted too (a later add starts with a first round). */
  async remove(local: string, opts: { forget: boolean }): Promise<void> {
    const abs = path.resolve(local);
    const pair = this.pairs.get(abs);
    if (!pair) throw new RegfsError('NOT_FOUND', `${abs} is not synced by this daemon (see regfs sync ls)`);
    this.pairs.delete(abs);
    await this.halt(pair);
    await pair.registry.close().catch(() => undefined);
    if (opts.forget) await fsp.rm(pair.statePath, { force: true });
    this.opts.log.info(`sync ${pair.display}: stopped`);
  }

  /** reconcile makes the running pairs match a reloaded configuration (SIGHUP). */
  async reconcile(configs: SyncConfig[]): Promise<void> {
    const wanted = new Map(configs.map((c) => [path.resolve(c.local), c]));
    for (const [local, pair] of [...this.pairs]) {
      const w = wanted.get(local);
      if (!w || !sameConfig({ ...w, local }, pair.config)) await this.remove(local, { forget: false });
    }
    for (const [local, c] of wanted) {
      if (!this.pairs.has(local)) await this.add(c).catch((e: unknown) => this.opts.log.error(`reload: cannot sync ${local}: ${errorMessage(e)}`));
    }
  }

  /** now runs a round of one pair (or of every pair) and waits for it. */
  async now(local?: string): Promise<RoundReport[]> {
    if (local) {
      const pair = this.pairs.get(path.resolve(local));
      if (!pair) throw new RegfsError('NOT_FOUND', `${path.resolve(local)} is not synced by this daemon (see regfs sync ls)`);
      return [await this.schedule(pair)];
    }
    return Promise.all([...this.pairs.values()].map((p) => this.schedule(p)));
  }

  /** status lists every pair with its last round, last error and recent conflicts. */
  status(): SyncPairStatus[] {
    return [...this.pairs.values()].map((p) => ({
      ...p.config,
      id: p.id,
      lastRound: p.lastRound ?? null,
      lastError: p.lastError ?? null,
      syncedTags: Object.keys(p.state.tags).length,
      conflicts: p.state.conflicts.slice(-10),
    }));
  }

  /** stop ends timers and watchers and waits (up to 20 s) for rounds in flight. */
  async stop(): Promise<void> {
    await Promise.all([...this.pairs.values()].map((p) => this.halt(p)));
  }

  /**
   * close waits for state writes (after the queue stopped) and releases the registries. With
   * `abandoned` (the queue left pushes running) it does not wait for the registries to close: a
   * connection pool's close waits for its requests, and an abandoned push may still have one.
   */
  async close(opts: { abandoned?: boolean } = {}): Promise<void> {
    for (const p of this.pairs.values()) {
      await p.saving;
      const closing = p.registry.close().catch(() => undefined);
      if (!opts.abandoned) await closing;
    }
    this.pairs.clear();
  }

  private async halt(pair: Pair): Promise<void> {
    pair.stopped = true;
    clearInterval(pair.timer);
    clearTimeout(pair.debounce);
    await pair.watcher?.close();
    await Promise.race([pair.chain, new Promise((r) => setTimeout(r, 20_000).unref())]);
    await pair.saving;
  }

  /** onQueue records the base when the queue reports a push of a pair's tag folder done. */
  private onQueue(item: QueueItem): void {
    for (const pair of this.pairs.values()) {
      if (item.target !== pair.source || item.repository !== pair.repoName || path.dirname(item.dir) !== pair.config.local) continue;
      if (item.state === 'done' && item.pushedDigest) void setBase(pair, this.opts.log, item.tag, item.pushedDigest, item.fingerprint);
      else if (item.state === 'failed') pair.lastError = `push of ${item.tag} failed: ${item.lastError ?? 'unknown error'}`;
    }
  }

  /**
   * onTagMoved turns a lost race of a pair's push into a conflict, never a silent overwrite (docs/sync.md,
   * Limits): another writer's manifest found on the tag right before our PUT is tagged aside as
   * `<tag>-conflict-<its hex>` (ours then takes the tag); one found right after our PUT keeps the tag and ours
   * is tagged aside as `<tag>-conflict-<our hex>` (the next round pulls theirs into the folder).
   */
  private async onTagMoved(item: QueueItem, e: TagMoved): Promise<void> {
    const pair = [...this.pairs.values()].find((p) => item.target === p.source && item.repository === p.repoName && path.dirname(item.dir) === p.config.local);
    const aside = e.when === 'before' ? e.current : e.ours;
    const kept = conflictTag(item.tag, digestHex(aside.digest));
    if (!pair) {
      this.opts.log.warn(`sync: ${item.repository}:${item.tag} moved by another writer (${e.current.digest}) ${e.when} our push; no pair to keep it`);
      return;
    }
    // Kept already (a round saw the race first, or a retry after a crash): nothing more to record.
    if ((await pair.repo.resolve(kept).catch(() => undefined))?.digest === aside.digest) return;
    await pair.repo.tag(aside, kept);
    this.opts.changed?.(item.repository);
    await recordConflict(pair, this.opts.log, { tag: item.tag, kept, at: new Date().toISOString(), registryDigest: e.current.digest, localDigest: e.ours.digest });
    this.opts.log.warn(
      e.when === 'before'
        ? `sync ${pair.display}: conflict on ${item.tag}: another writer moved it to ${e.current.digest} just before our push; theirs is kept as ${kept}, ours (${e.ours.digest}) takes ${item.tag}`
        : `sync ${pair.display}: conflict on ${item.tag}: another writer's push (${e.current.digest}) landed right after ours; the registry keeps ${item.tag}, ours (${e.ours.digest}) is kept as ${kept}`,
    );
  }

  /** schedule runs a round after the current one; triggers before it starts share it. */
  private schedule(pair: Pair): Promise<RoundReport> {
    if (pair.queued) return pair.queued;
    const p = pair.chain.then(() => {
      pair.queued = undefined;
      return this.rounds.run(pair);
    });
    pair.queued = p;
    pair.chain = p.catch(() => undefined);
    return p;
  }
}

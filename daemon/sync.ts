import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, promises as fsp } from 'node:fs';
import path from 'node:path';
import type { BlobCache } from '../cache/blob-cache.js';
import { cachedRepository } from '../cache/cached-repository.js';
import type { Descriptor } from '../registry/descriptor.js';
import { digestHex } from '../registry/digest.js';
import { RegfsError, errorMessage, isRegfsError } from '../util/errors.js';
import { Annotation } from '../registry/media-types.js';
import { openSource } from '../registry/open.js';
import { hashStream } from '../registry/pack.js';
import { isTag } from '../registry/reference.js';
import type { Registry, Repository } from '../registry/storage.js';
import { packDirectory, packDirectoryGzip } from '../registry/tar-pack.js';
import { pullArtifact } from '../registry/transfer.js';
import { runLimited } from '../util/limit.js';
import { fsyncDir, writeFileAtomic } from '../util/fs-atomic.js';
import { redactText, type Logger } from '../util/log.js';
import type { PushQueue, QueueItem } from './push-queue.js';
import { checkSyncPlacement, syncEndpoint, type SyncConfig, type SyncDirection } from './settings.js';
import { fingerprint, isIgnoredName, scanTagDir, type StagedEntry } from '../staging/layout.js';
import { watchFolder, type FolderWatcher } from '../staging/watcher.js';
import { tagManifestDigest, titledLayers, type TagLayer } from '../staging/tag-artifact.js';

/** SyncBase is the common base of one tag: what both sides held when they were last in step. */
export interface SyncBase {
  digest: string;
  fingerprint: string;
  at: string;
}

/** SyncConflict records one conflict and where each version went. */
export interface SyncConflict {
  tag: string;
  /** kept is the `<tag>-conflict-<12 hex>` name the losing version was kept under. */
  kept: string;
  at: string;
  registryDigest: string;
  /** localDigest is the manifest digest of the local version (its fingerprint for a down-only pair). */
  localDigest: string;
}

interface PairState {
  version: 1;
  local: string;
  repository: string;
  tags: Record<string, SyncBase>;
  conflicts: SyncConflict[];
}

/** RoundReport is what one sync round did, as `regfs sync now` prints it. */
export interface RoundReport {
  local: string;
  repository: string;
  pulled: string[];
  queued: string[];
  conflicts: string[];
  deletedLocal: string[];
  deletedRemote: string[];
  error?: string;
}

/** SyncAction is what one tag needs, decided from the base and both sides (decideSync). */
export type SyncAction =
  | { kind: 'none' }
  | { kind: 'compare' }
  | { kind: 'pull'; why?: string }
  | { kind: 'push'; why?: string }
  | { kind: 'delete-local'; why: string }
  | { kind: 'delete-remote'; why: string }
  | { kind: 'forget'; why: string };

/**
 * decideSync is the sync rule for one tag, given its base (undefined before the first sync), the registry's
 * manifest digest and the local fingerprint (undefined when that side has no such tag). `compare` means both
 * sides hold the tag and at least one changed in a way only the contents can settle: equal contents just
 * record the base, different ones are a conflict.
 */
export function decideSync(base: { digest: string; fingerprint: string } | undefined, remote: string | undefined, local: string | undefined, direction: SyncDirection, propagateDeletes: boolean): SyncAction {
  const up = direction !== 'down';
  const down = direction !== 'up';
  const none: SyncAction = { kind: 'none' };
  if (!base) {
    if (remote && local) return { kind: 'compare' };
    if (remote) return down ? { kind: 'pull' } : none;
    if (local) return up ? { kind: 'push' } : none;
    return none;
  }
  const remoteChanged = remote !== base.digest;
  const localChanged = local !== base.fingerprint;
  if (!remoteChanged && !localChanged) return none;
  if (!remote && !local) return { kind: 'forget', why: 'deleted on both sides' };
  if (remoteChanged && !localChanged) {
    if (remote) return down ? { kind: 'pull' } : none;
    if (propagateDeletes && down) return { kind: 'delete-local', why: 'deleted in the registry (propagateDeletes)' };
    if (up) return { kind: 'push', why: 'deleted in the registry; restoring it from the local folder because propagateDeletes is off' };
    return { kind: 'forget', why: 'deleted in the registry; the local folder is kept (a down-only pair never writes the registry)' };
  }
  if (!remoteChanged && localChanged) {
    if (local) return up ? { kind: 'push' } : none;
    if (propagateDeletes && up) return { kind: 'delete-remote', why: 'deleted locally (propagateDeletes)' };
    if (down) return { kind: 'pull', why: 'deleted locally; restoring it from the registry because propagateDeletes is off' };
    return { kind: 'forget', why: 'deleted locally; the registry keeps it (an up-only pair never writes the local folder)' };
  }
  if (remote && local) return { kind: 'compare' };
  if (local) {
    if (up) return { kind: 'push', why: 'deleted in the registry but edited locally: the edit wins, restoring it' };
    return { kind: 'forget', why: 'deleted in the registry but edited locally; the local folder is kept' };
  }
  if (down) return { kind: 'pull', why: 'deleted locally but changed in the registry: the change wins, restoring it' };
  return { kind: 'forget', why: 'deleted locally but changed in the registry; the registry keeps it' };
}

/** tagMatcher turns a pair's tag glob (`*`, `?`, alternatives separated by commas) into a test; none matches every tag. */
export function tagMatcher(pattern: string | undefined): (tag: string) => boolean {
  if (!pattern || pattern === '*') return () => true;
  const alts = pattern.split(',').map((p) => new RegExp(`^${p.replace(/[.+^${}()|[\]\\-]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.')}$`));
  return (tag) => alts.some((re) => re.test(tag));
}

/** conflictTag names the kept version: `<tag>-conflict-<12 hex>`, the tag shortened so the name (and a `-N` suffix) stays a valid tag. */
export function conflictTag(tag: string, hex: string): string {
  return `${tag.slice(0, 100)}-conflict-${hex.slice(0, 12)}`;
}

/** OUR_TEMP matches the hidden `.<name>.<12 hex>.part|old|deleted` entries a pull or a delete works in (cleared by the next round). */
const OUR_TEMP = /^\..+\.[0-9a-f]{12}\.(part|old|deleted)$/;

interface LocalTag {
  dir: string;
  entries: StagedEntry[];
  fp: string;
}

interface RemoteTags {
  known: Map<string, Descriptor>;
  /** unknown are tags listed but not resolved this round (an error other than not found): left alone. */
  unknown: Set<string>;
}

interface Pair {
  id: string;
  config: SyncConfig;
  source: string;
  repoName: string;
  display: string;
  registry: Registry;
  repo: Repository;
  state: PairState;
  statePath: string;
  saving: Promise<void>;
  chain: Promise<unknown>;
  queued?: Promise<RoundReport>;
  timer?: NodeJS.Timeout;
  debounce?: NodeJS.Timeout;
  watcher?: FolderWatcher;
  matches: (tag: string) => boolean;
  /** unsupported remembers tags whose manifest is not a file artifact (an index, no titled layers), by digest. */
  unsupported: Map<string, string>;
  warned: Set<string>;
  /** tagErrors keeps each tag's last error, so a lasting one is logged once, not every round. */
  tagErrors: Map<string, string>;
  lastRound?: string;
  lastError?: string;
  stopped: boolean;
}

/** SyncPairStatus is one pair as `regfs status` and `regfs sync ls` show it. */
export interface SyncPairStatus extends SyncConfig {
  id: string;
  lastRound: string | null;
  lastError: string | null;
  syncedTags: number;
  conflicts: SyncConflict[];
}

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

/** pairId names a pair's state file: a hash of its local folder and repository. */
function pairId(c: SyncConfig): string {
  return createHash('sha256').update(`${c.local}\n${c.repository}`).digest('hex').slice(0, 16);
}

function sameConfig(a: SyncConfig, b: SyncConfig): boolean {
  const norm = (c: SyncConfig): string => JSON.stringify(Object.entries(c).sort(([x], [y]) => (x < y ? -1 : 1)));
  return norm(a) === norm(b);
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

  constructor(private readonly opts: SyncManagerOptions) {
    this.dir = path.join(opts.stateDir, 'sync');
    opts.queue.onChange((item) => this.onQueue(item));
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
    const state = await this.loadState(statePath, c);
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

  /** close waits for state writes (after the queue stopped) and releases the registries. */
  async close(): Promise<void> {
    for (const p of this.pairs.values()) {
      await p.saving;
      await p.registry.close().catch(() => undefined);
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

  private async loadState(file: string, c: SyncConfig): Promise<PairState> {
    const fresh: PairState = { version: 1, local: c.local, repository: c.repository, tags: {}, conflicts: [] };
    let text: string;
    try {
      text = await fsp.readFile(file, 'utf8');
    } catch {
      return fresh;
    }
    try {
      const s = JSON.parse(text) as PairState;
      if (s.version !== 1 || typeof s.tags !== 'object' || !Array.isArray(s.conflicts)) throw new Error('unknown format');
      return s;
    } catch (err) {
      // Without a base the next round compares contents: equal tags are recorded again, different ones kept as conflicts.
      this.opts.log.warn(`sync: ignoring unreadable state ${file} (${errorMessage(err)}); the next round starts from the contents`);
      return fresh;
    }
  }

  private save(pair: Pair): Promise<void> {
    pair.saving = pair.saving
      .then(() => writeFileAtomic(pair.statePath, JSON.stringify(pair.state, null, 1), 0o600))
      .catch((err: unknown) => this.opts.log.error(`sync ${pair.display}: cannot save ${pair.statePath}: ${errorMessage(err)}`));
    return pair.saving;
  }

  private setBase(pair: Pair, tag: string, digest: string, fp: string): Promise<void> {
    pair.state.tags[tag] = { digest, fingerprint: fp, at: new Date().toISOString() };
    return this.save(pair);
  }

  private dropBase(pair: Pair, tag: string): Promise<void> {
    delete pair.state.tags[tag];
    return this.save(pair);
  }

  /** onQueue records the base when the queue reports a push of a pair's tag folder done. */
  private onQueue(item: QueueItem): void {
    for (const pair of this.pairs.values()) {
      if (item.target !== pair.source || item.repository !== pair.repoName || path.dirname(item.dir) !== pair.config.local) continue;
      if (item.state === 'done' && item.pushedDigest) void this.setBase(pair, item.tag, item.pushedDigest, item.fingerprint);
      else if (item.state === 'failed') pair.lastError = `push of ${item.tag} failed: ${item.lastError ?? 'unknown error'}`;
    }
  }

  /** schedule runs a round after the current one; triggers before it starts share it. */
  private schedule(pair: Pair): Promise<RoundReport> {
    if (pair.queued) return pair.queued;
    const p = pair.chain.then(() => {
      pair.queued = undefined;
      return this.round(pair);
    });
    pair.queued = p;
    pair.chain = p.catch(() => undefined);
    return p;
  }

  private async round(pair: Pair): Promise<RoundReport> {
    const report: RoundReport = { local: pair.config.local, repository: pair.config.repository, pulled: [], queued: [], conflicts: [], deletedLocal: [], deletedRemote: [] };
    if (pair.stopped) return report;
    try {
      const remote = await this.remoteTags(pair);
      const local = await this.localTags(pair);
      const tags = new Set([...remote.known.keys(), ...local.keys(), ...Object.keys(pair.state.tags).filter(pair.matches)]);
      for (const tag of [...tags].sort()) {
        if (pair.stopped) break;
        if (remote.unknown.has(tag)) continue;
        try {
          await this.syncTag(pair, tag, remote, local, report);
          pair.tagErrors.delete(tag);
        } catch (err) {
          const msg = redactText(errorMessage(err));
          report.error = `${tag}: ${msg}`;
          if (pair.tagErrors.get(tag) !== msg) this.opts.log.warn(`sync ${pair.display}: ${report.error}`);
          pair.tagErrors.set(tag, msg);
        }
      }
      if (!report.error && remote.unknown.size) report.error = `could not resolve ${[...remote.unknown].join(', ')}; left alone this round`;
    } catch (err) {
      report.error = redactText(errorMessage(err));
      if (report.error !== pair.lastError) this.opts.log.warn(`sync ${pair.display}: round failed: ${report.error}`);
    }
    pair.lastRound = new Date().toISOString();
    pair.lastError = report.error;
    return report;
  }

  private async remoteTags(pair: Pair): Promise<RemoteTags> {
    let tags: string[];
    try {
      tags = await pair.repo.listTags();
    } catch (err) {
      if (!isRegfsError(err, 'NOT_FOUND')) throw err;
      // A repository that vanished after tags were synced is not "every tag deleted": never act on that.
      if (Object.keys(pair.state.tags).length) throw new RegfsError('NOT_FOUND', `the repository ${pair.config.repository} is gone; nothing is deleted or restored until it is back (or the pair is removed and added again)`);
      tags = [];
    }
    const known = new Map<string, Descriptor>();
    const unknown = new Set<string>();
    await runLimited(tags.filter((t) => isTag(t) && pair.matches(t)), 4, async (t) => {
      try {
        known.set(t, await pair.repo.resolve(t));
      } catch (err) {
        if (!isRegfsError(err, 'NOT_FOUND')) unknown.add(t);
      }
    });
    return { known, unknown };
  }

  private async localTags(pair: Pair): Promise<Map<string, LocalTag>> {
    const out = new Map<string, LocalTag>();
    const root = pair.config.local;
    // A missing folder (a disk not mounted, a wrong path) is not "every tag deleted": never act on that.
    if (!(await fsp.stat(root).catch(() => undefined))?.isDirectory()) {
      throw new RegfsError('NOT_FOUND', `the sync folder ${root} is missing; nothing is deleted or restored until it is back (or the pair is removed and added again)`);
    }
    // What an interrupted pull or delete left: a half-written folder goes; an old folder moved aside while
    // its replacement was not yet in place comes back (the round then pulls or deletes it again).
    for (const e of await fsp.readdir(root, { withFileTypes: true })) {
      const m = OUR_TEMP.exec(e.name);
      if (!m || !e.isDirectory()) continue;
      const tag = e.name.slice(1, -(m[1]!.length + 14));
      const abs = path.join(root, e.name);
      if (m[1] === 'deleted' && isTag(tag) && !(await fsp.lstat(path.join(root, tag)).catch(() => undefined))) {
        await fsp.rename(abs, path.join(root, tag));
        this.opts.log.info(`sync ${pair.display}: put back ${path.join(root, tag)}, moved aside by an interrupted round`);
      } else {
        await fsp.rm(abs, { recursive: true, force: true });
      }
    }
    for (const e of await fsp.readdir(root, { withFileTypes: true })) {
      if (!e.isDirectory() || isIgnoredName(e.name)) continue;
      if (!isTag(e.name)) {
        this.warnOnce(pair, `name:${e.name}`, `sync ${pair.display}: skipping ${e.name}: not a valid tag ([A-Za-z0-9_][A-Za-z0-9_.-]*, at most 128 characters)`);
        continue;
      }
      if (!pair.matches(e.name)) continue;
      const dir = path.join(root, e.name);
      const entries = await scanTagDir(dir, this.opts.log);
      // An empty folder holds nothing to sync: it is not a tag (yet).
      if (entries.length) out.set(e.name, { dir, entries, fp: fingerprint(entries) });
    }
    return out;
  }

  private warnOnce(pair: Pair, key: string, msg: string): void {
    if (pair.warned.has(key)) return;
    pair.warned.add(key);
    this.opts.log.warn(msg);
  }

  private async syncTag(pair: Pair, tag: string, remote: RemoteTags, locals: Map<string, LocalTag>, report: RoundReport): Promise<void> {
    const r = remote.known.get(tag);
    const l = locals.get(tag);
    if (r && pair.unsupported.get(tag) === r.digest) return;
    const c = pair.config;
    const action = decideSync(pair.state.tags[tag], r?.digest, l?.fp, c.direction, c.propagateDeletes);
    const say = (what: string, why?: string): void => this.opts.log.info(`sync ${pair.display}: ${what}${why ? `: ${why}` : ''}`);
    switch (action.kind) {
      case 'none':
        return;
      case 'forget':
        say(`${tag} is no longer synced`, action.why);
        await this.dropBase(pair, tag);
        return;
      case 'push':
        if (action.why) say(`pushing ${tag} from ${l!.dir}`, action.why);
        if (await this.push(pair, tag, l!)) report.queued.push(tag);
        return;
      case 'pull':
        if (!(await this.queueSettled(pair, tag))) return;
        if (l && !(await this.stillQuiet(l))) return;
        if (await this.pull(pair, tag, r!, l?.fp)) {
          report.pulled.push(tag);
          say(`pulled ${tag} into ${path.join(c.local, tag)}`, action.why);
        }
        return;
      case 'delete-local': {
        if (!(await this.queueSettled(pair, tag)) || !(await this.stillQuiet(l!))) return;
        const trash = path.join(c.local, `.${tag}.${randomBytes(6).toString('hex')}.deleted`);
        await fsp.rename(l!.dir, trash);
        await fsp.rm(trash, { recursive: true, force: true });
        await this.dropBase(pair, tag);
        report.deletedLocal.push(tag);
        say(`deleted ${l!.dir}`, action.why);
        return;
      }
      case 'delete-remote': {
        const sharing = [...remote.known].filter(([t, d]) => t !== tag && d.digest === r!.digest).map(([t]) => t);
        if (sharing.length) {
          this.warnOnce(pair, `share:${tag}:${r!.digest}`, `sync ${pair.display}: not deleting ${tag} in the registry: ${sharing.join(', ')} share its manifest, and a registry deletes a manifest with all its tags`);
          return;
        }
        await pair.repo.deleteManifest(r!);
        await this.dropBase(pair, tag);
        this.opts.changed?.(pair.repoName);
        report.deletedRemote.push(tag);
        say(`deleted ${tag} in the registry`, action.why);
        return;
      }
      case 'compare':
        await this.compare(pair, tag, r!, l!, report);
        return;
    }
  }

  /** push hands a tag folder to the durable queue; the base is recorded when the queue reports it done. */
  private async push(pair: Pair, tag: string, l: LocalTag): Promise<boolean> {
    // The queue skips files it pushed before; a tag deleted in the registry since must be pushed again.
    await this.opts.queue.forget(pair.source, pair.repoName, tag);
    const r = await this.opts.queue.enqueue(pair.source, { repository: pair.repoName, tag, dir: l.dir, entries: l.entries });
    return r !== 'unchanged';
  }

  /**
   * queueSettled makes sure no push of this tag will land after we change the local folder: a waiting push
   * is cancelled (the folder is about to get the registry's version); with one running, false (next round).
   */
  private async queueSettled(pair: Pair, tag: string): Promise<boolean> {
    const found = this.opts.queue.find(pair.source, pair.repoName, tag);
    if (!found || found.item.state === 'done') return true;
    if (await this.opts.queue.cancel(pair.source, pair.repoName, tag)) {
      this.opts.log.info(`sync ${pair.display}: cancelled the waiting push of ${tag}: the registry changed first`);
      return true;
    }
    return false;
  }

  private async stillQuiet(l: LocalTag): Promise<boolean> {
    return fingerprint(await scanTagDir(l.dir, this.opts.log)) === l.fp;
  }

  /** layersOf returns the titled layers of a manifest, or undefined when it is not a file artifact. */
  private async layersOf(pair: Pair, tag: string, desc: Descriptor): Promise<TagLayer[] | undefined> {
    const fetched = await pair.repo.fetchManifest(desc.digest);
    const m = fetched.manifest;
    const layers = titledLayers(m);
    if (!layers) {
      pair.unsupported.set(tag, desc.digest);
      this.opts.log.warn(`sync ${pair.display}: skipping ${tag} (${desc.digest}): it is ${m.kind === 'index' ? 'an index' : 'not a file artifact (no titled layers)'}`);
      return undefined;
    }
    return layers;
  }

  /**
   * pull materialises the registry's version as LOCAL/<tag>/: the files are written into a hidden sibling
   * folder (each through a temp file, blobs read through the cache), hidden files of the old folder are carried
   * over, and the folder is swapped in with two renames. A crash leaves the old folder (or, between the two
   * renames, its hidden copy, which the next round puts back) and never a mix. The base records the
   * fingerprint after the writes, so they are never mistaken for local edits.
   */
  private async pull(pair: Pair, tag: string, desc: Descriptor, expect: string | undefined): Promise<boolean> {
    if (!(await this.layersOf(pair, tag, desc))) return false;
    const root = pair.config.local;
    const dir = path.join(root, tag);
    const tmp = path.join(root, `.${tag}.${randomBytes(6).toString('hex')}.part`);
    await fsp.mkdir(tmp);
    let fp: string;
    try {
      await pullArtifact(cachedRepository(pair.repo, this.opts.blobs), desc.digest, tmp);
      // The fingerprint of what we wrote, taken before the swap: an edit right after it counts as local.
      fp = fingerprint(await scanTagDir(tmp, this.opts.log));
      // An edit made while we downloaded would be lost by the swap: leave it for the next round (a conflict).
      const now = await scanTagDir(dir, this.opts.log);
      if ((now.length ? fingerprint(now) : undefined) !== expect) {
        await fsp.rm(tmp, { recursive: true, force: true });
        this.opts.log.info(`sync ${pair.display}: ${dir} changed while ${tag} was being pulled; looking again next round`);
        return false;
      }
      const old = await fsp.readdir(dir, { withFileTypes: true }).catch(() => undefined);
      if (old) {
        for (const e of old) {
          if ((isIgnoredName(e.name) && !OUR_TEMP.test(e.name)) || e.isSymbolicLink()) {
            await fsp.rename(path.join(dir, e.name), path.join(tmp, e.name)).catch(() => undefined);
          }
        }
        const trash = path.join(root, `.${tag}.${randomBytes(6).toString('hex')}.deleted`);
        await fsp.rename(dir, trash);
        await fsp.rename(tmp, dir);
        await fsp.rm(trash, { recursive: true, force: true });
      } else {
        await fsp.rename(tmp, dir);
      }
    } catch (err) {
      await fsp.rm(tmp, { recursive: true, force: true });
      throw err;
    }
    await fsyncDir(root).catch(() => undefined);
    await this.setBase(pair, tag, desc.digest, fp);
    return true;
  }

  /** compare settles a tag both sides hold: equal contents record the base, different ones are a conflict. */
  private async compare(pair: Pair, tag: string, r: Descriptor, l: LocalTag, report: RoundReport): Promise<void> {
    const found = this.opts.queue.find(pair.source, pair.repoName, tag);
    if (found && found.item.state !== 'done' && !(await this.queueSettled(pair, tag))) {
      // A push of the local version is running and will move the tag: keep the registry's version aside first.
      if (found.item.expectedDigest !== r.digest) await this.keepRegistryVersion(pair, tag, r, found.item.expectedDigest ?? found.item.fingerprint, report);
      return;
    }
    const layers = await this.layersOf(pair, tag, r);
    if (!layers) return;
    if (await sameContent(l.dir, layers)) {
      await this.setBase(pair, tag, r.digest, l.fp);
      this.opts.log.info(`sync ${pair.display}: ${tag} holds the same files on both sides; recorded as in step`);
      return;
    }
    if (!(await this.stillQuiet(l))) return;
    const c = pair.config;
    if (c.direction === 'up') {
      // The local folder is the source: it keeps the tag, the registry's version is kept as a conflict tag.
      await this.keepRegistryVersion(pair, tag, r, l.fp, report);
      if (await this.push(pair, tag, l)) report.queued.push(tag);
      return;
    }
    let localId: string;
    if (c.direction === 'both') {
      localId = await tagManifestDigest(l.dir, l.entries);
    } else {
      localId = l.fp;
    }
    const kept = await freeName(c.local, conflictTag(tag, localId.replace(/^sha256:/, '')));
    const dest = path.join(c.local, kept);
    await this.recordConflict(pair, { tag, kept, at: new Date().toISOString(), registryDigest: r.digest, localDigest: localId });
    await fsp.rename(l.dir, dest);
    report.conflicts.push(tag);
    this.opts.log.warn(
      `sync ${pair.display}: conflict on ${tag}: both sides changed since the last sync; the registry keeps ${tag} (${r.digest}), ` +
        `the local version is kept in ${dest}${c.direction === 'both' ? ` and pushed as ${kept}` : ''}`,
    );
    if (c.direction === 'both') {
      const entries = await scanTagDir(dest, this.opts.log);
      if (await this.push(pair, kept, { dir: dest, entries, fp: fingerprint(entries) })) report.queued.push(kept);
    }
    if (await this.pull(pair, tag, r, undefined)) report.pulled.push(tag);
  }

  /** keepRegistryVersion tags the registry's version of `tag` as `<tag>-conflict-<12 hex of its digest>` (no download). */
  private async keepRegistryVersion(pair: Pair, tag: string, r: Descriptor, localId: string, report: RoundReport): Promise<void> {
    const kept = conflictTag(tag, digestHex(r.digest));
    // Idempotent: a round that already kept this version (before a crash, or while a push runs) does nothing.
    if ((await pair.repo.resolve(kept).catch(() => undefined))?.digest === r.digest) return;
    await pair.repo.tag(r, kept);
    this.opts.changed?.(pair.repoName);
    await this.recordConflict(pair, { tag, kept, at: new Date().toISOString(), registryDigest: r.digest, localDigest: localId });
    report.conflicts.push(tag);
    this.opts.log.warn(`sync ${pair.display}: conflict on ${tag}: both sides changed since the last sync; the local version takes ${tag}, the registry's version (${r.digest}) is kept as ${kept}`);
  }

  private recordConflict(pair: Pair, c: SyncConflict): Promise<void> {
    pair.state.conflicts.push(c);
    if (pair.state.conflicts.length > 50) pair.state.conflicts.splice(0, pair.state.conflicts.length - 50);
    return this.save(pair);
  }
}

/** freeName returns `name`, or `name-2`, `name-3`... when a folder of that name exists already. */
async function freeName(root: string, name: string): Promise<string> {
  for (let i = 1; ; i++) {
    const candidate = i === 1 ? name : `${name}-${i}`;
    if (!(await fsp.lstat(path.join(root, candidate)).catch(() => undefined))) return candidate;
  }
}

function coverage(layers: TagLayer[]): { files: Set<string>; dirs: Set<string>; parents: Set<string> } {
  const files = new Set(layers.filter((l) => !l.dir).map((l) => l.title));
  const dirs = new Set(layers.filter((l) => l.dir).map((l) => l.title));
  const parents = new Set<string>();
  for (const l of layers) {
    const parts = l.title.split('/');
    for (let i = 1; i < parts.length; i++) parents.add(parts.slice(0, i).join('/'));
  }
  return { files, dirs, parents };
}

/**
 * sameContent tells whether a tag folder holds exactly the manifest's files: every file layer's bytes hash
 * to its digest, every folder layer packs to the same tar (ORAS's tar digest annotation, else the gzip
 * digest), and no other file is there. Hidden and temp files are not synced and do not count.
 */
async function sameContent(root: string, layers: TagLayer[]): Promise<boolean> {
  const { files, dirs, parents } = coverage(layers);
  for (const l of layers) {
    const abs = path.join(root, l.title);
    const st = await fsp.lstat(abs).catch(() => undefined);
    if (l.dir) {
      if (!st?.isDirectory()) return false;
      const tarDigest = l.desc.annotations?.[Annotation.digestAnnotation];
      const got = tarDigest ? await hashStream(packDirectory(abs, { prefix: l.title })) : await hashStream(packDirectoryGzip(abs, { prefix: l.title }));
      if (got.digest !== (tarDigest ?? l.desc.digest)) return false;
    } else {
      if (!st?.isFile() || st.size !== l.desc.size) return false;
      if ((await hashStream(createReadStream(abs))).digest !== l.desc.digest) return false;
    }
  }
  const extra = async (rel: string): Promise<boolean> => {
    for (const e of await fsp.readdir(rel ? path.join(root, rel) : root, { withFileTypes: true })) {
      if (isIgnoredName(e.name)) continue;
      const p = rel ? `${rel}/${e.name}` : e.name;
      if (files.has(p) || dirs.has(p)) continue;
      if (parents.has(p) && e.isDirectory()) {
        if (await extra(p)) return true;
        continue;
      }
      if (e.isFile() || e.isDirectory()) return true;
    }
    return false;
  };
  return !(await extra(''));
}

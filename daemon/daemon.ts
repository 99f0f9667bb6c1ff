import { promises as fsp } from 'node:fs';
import { stagingModes } from '../staging/modes.js';
import path from 'node:path';
import { BlobCache } from '../cache/blob-cache.js';
import { MetadataCache } from '../cache/metadata-cache.js';
import { RegfsError } from '../util/errors.js';
import { invalidateCredentials } from '../registry/credentials.js';
import { openMountSource } from '../registry/open-mount.js';
import type { Registry } from '../registry/storage.js';
import { serveMount, type RunningMount } from '../mount/serve.js';
import { probeMount } from '../mount/mounter.js';
import { isInside } from '../util/paths.js';
import type { Logger } from '../util/log.js';
import { loadConfigFile, mountToJson, pickAccess, resolveConfig, updateConfigMounts, updateConfigSyncs, validateMount, validateSync, type DaemonConfig, type MountConfig } from './settings.js';
import { DEFAULT_ATTR_POLICY } from '../mount/attr-policy.js';
import { startControlServer } from './control.js';
import type { DaemonStatus, LoggedEvent, ReloadResult } from './protocol.js';
import { recordingLogger } from './recording-logger.js';
import { PushQueue } from './push-queue.js';
import { scanStaging, WRITES_DIR } from '../staging/layout.js';
import { watchFolder, type FolderWatcher } from '../staging/watcher.js';
import { SyncManager } from './sync.js';

interface ActiveMount {
  config: MountConfig;
  registry: Registry;
  running: RunningMount;
  watcher?: FolderWatcher;
  rescanTimer?: NodeJS.Timeout;
  periodic?: NodeJS.Timeout;
  scanning?: Promise<number>;
}

/** PERIODIC_RESCAN_MS is how often every staging folder is scanned even without a watcher event. */
const PERIODIC_RESCAN_MS = 30_000;

/**
 * Daemon runs any number of mounts sharing one blob cache, watches their staging folders, pushes
 * staged tags through the durable queue and answers the control socket. It never touches its own
 * mountpoints: staging and cache folders inside a mountpoint are refused at start.
 */
export class Daemon {
  private readonly mounts = new Map<string, ActiveMount>();
  private server: { close(): Promise<void> } | undefined;
  private stopping: Promise<void> | undefined;
  readonly startedAt = new Date();
  /** fileMounts are the mountpoints the config file names (SIGHUP may remove only these). */
  private fileMounts = new Set<string>();
  private lastReload: ReloadResult | undefined;
  readonly sync: SyncManager;

  private constructor(
    private config: DaemonConfig,
    private readonly configFile: string | undefined,
    private readonly log: Logger,
    private readonly recent: LoggedEvent[],
    readonly blobs: BlobCache,
    readonly metadata: MetadataCache,
    readonly queue: PushQueue,
  ) {
    this.sync = new SyncManager({
      stateDir: config.stateDir,
      queue,
      blobs,
      log,
      quietMs: config.quietSeconds * 1000,
      placement: () => ({
        mountpoints: [...this.mounts.keys()],
        staging: [...this.mounts.values()].flatMap((m) => (m.config.staging ? [path.resolve(m.config.staging)] : [])),
        cacheDir: this.config.cacheDir,
        stateDir: this.config.stateDir,
      }),
      changed: (repository) => metadata.dropListings(repository),
    });
  }

  /** start opens the cache (one daemon per cache), the queue and the socket, then mounts everything. */
  static async start(config: DaemonConfig, opts: { configFile?: string; log: Logger }): Promise<Daemon> {
    const { log, recent } = recordingLogger(opts.log);
    const blobs = await BlobCache.open(config.cacheDir, { maxSize: config.cacheMaxSize, minFreeBytes: config.minFreeBytes, readAheadStreams: config.readStreams, log });
    const metadata = new MetadataCache({ ttlMs: config.metadataTtlSeconds * 1000, log });
    let d: Daemon | undefined;
    try {
      const queue = await PushQueue.open(config.stateDir, {
        log,
        quietMs: config.quietSeconds * 1000,
        repositoryFor: (item) => d!.registryFor(item.target).repository(item.repository),
      });
      d = new Daemon(config, opts.configFile, log, recent, blobs, metadata, queue);
      if (opts.configFile) d.fileMounts = new Set((await loadConfigFile(opts.configFile)).mounts?.map((m) => path.resolve(m.mountpoint)) ?? []);
      queue.onChange((item) => {
        if (item.state === 'done') {
          // The mount shows a new push at once, not after the metadata TTL.
          metadata.dropListings(item.repository);
          log.info(`pushed ${item.repository}:${item.tag}`, { target: item.target, digest: item.pushedDigest });
        } else if (item.state === 'failed') {
          log.error(`push of ${item.repository}:${item.tag} failed: ${item.lastError ?? 'unknown error'}`, { target: item.target });
        }
      });
      d.server = await startControlServer(config.socket, d.routes(), log);
      for (const m of config.mounts) await d.addMount(m);
      // Pairs before the queue starts: journaled pushes of sync folders need their registries.
      for (const s of config.syncs) await d.sync.add(s);
      queue.start();
      log.info(`regfs daemon running`, { pid: process.pid, socket: config.socket, mounts: config.mounts.length });
      return d;
    } catch (err) {
      if (d) await d.stop();
      else await blobs.close();
      throw err;
    }
  }

  private registryFor(target: string): Registry {
    for (const m of this.mounts.values()) if (m.config.source === target) return m.registry;
    const synced = this.sync.registryFor(target);
    if (synced) return synced;
    throw new RegfsError('NOT_FOUND', `no mount or sync pair with source ${target} is configured`);
  }

  /** addMount mounts one source (and watches its staging folder) while the daemon runs. */
  async addMount(mc: MountConfig): Promise<void> {
    const mountpoint = path.resolve(mc.mountpoint);
    if (this.mounts.has(mountpoint)) throw new RegfsError('CONFLICT', `${mountpoint} is already mounted by this daemon`);
    for (const other of this.mounts.values()) {
      if (isInside(other.running.mountpoint, mountpoint) || isInside(mountpoint, other.running.mountpoint)) {
        throw new RegfsError('INVALID_ARGUMENT', `mountpoint ${mountpoint} overlaps ${other.running.mountpoint}`);
      }
      if (mc.staging && isInside(other.running.mountpoint, path.resolve(mc.staging))) {
        throw new RegfsError('INVALID_ARGUMENT', `staging folder ${mc.staging} is inside the mountpoint ${other.running.mountpoint}: that would deadlock`);
      }
    }
    if (mc.staging && isInside(mountpoint, path.resolve(mc.staging))) {
      throw new RegfsError('INVALID_ARGUMENT', `staging folder ${mc.staging} is inside its mountpoint ${mountpoint}: that would deadlock`);
    }
    for (const local of this.sync.locals()) {
      if (isInside(mountpoint, local) || isInside(local, mountpoint)) throw new RegfsError('INVALID_ARGUMENT', `mountpoint ${mountpoint} overlaps the sync folder ${local}: that would deadlock`);
    }
    const opened = await openMountSource(mc.source, { plainHttp: mc.plainHttp, insecure: mc.insecure, caFile: mc.caFile, registryConfig: mc.registryConfig, log: this.log, forMount: true, create: true });
    const registry = opened.registry;
    const staging = mc.staging ? path.resolve(mc.staging) : undefined;
    let active: ActiveMount | undefined;
    let running: RunningMount;
    const access = { ...this.config.mountDefaults, ...pickAccess(mc) };
    try {
      running = await serveMount({
        registry,
        root: opened.root,
        repositories: mc.repositories,
        mountpoint,
        allowOther: access.allowOther === true,
        attrs: {
          uid: access.uid,
          gid: access.gid,
          fileMode: access.fileMode ?? DEFAULT_ATTR_POLICY.fileMode,
          dirMode: access.dirMode ?? DEFAULT_ATTR_POLICY.dirMode,
          umask: access.umask ?? DEFAULT_ATTR_POLICY.umask,
        },
        cacheDir: this.config.cacheDir,
        metadataTtlMs: this.config.metadataTtlSeconds * 1000,
        cache: {},
        log: this.log,
        blobs: this.blobs,
        metadata: this.metadata,
        // Writes through the mount land in its staging folder; this queue pushes them (docs/mount.md).
        staging: staging ? {
          dir: staging,
          allowDelete: mc.allowDelete === true,
          hooks: {
            landed: (repository, tag, fp) => this.queue.pushedFingerprint(mc.source, repository, tag) === fp,
            recordPublished: (repository, tag, fp, digest) => this.queue.recordPublished(mc.source, repository, tag, fp, digest),
            touched: (p) => this.queue.postpone(path.join(staging, path.relative(staging, p).split(path.sep)[0] ?? '')),
            changed: (tagDir) => {
              if (tagDir) void this.dropStale(mc.source, (dir) => dir !== tagDir && isInside(tagDir, dir));
              if (active) this.scheduleRescan(active);
            },
          },
        } : undefined,
      });
    } catch (err) {
      await registry.close();
      throw err;
    }
    active = { config: { ...mc, mountpoint }, registry, running };
    this.mounts.set(mountpoint, active);
    const self = active;
    void running.done.then(() => {
      if (this.mounts.get(mountpoint) === self && !this.stopping) {
        this.log.warn(`${mountpoint} was unmounted from outside; its staging folder is no longer watched`);
        void this.detach(self);
      }
    });
    if (staging) {
      await fsp.mkdir(staging, { recursive: true, mode: stagingModes(access.allowOther === true).dir });
      const writes = path.join(staging, WRITES_DIR);
      // No awaitWriteFinish: the queue decides when a tag folder is quiet (from file mtimes), so a file
      // moved in whole starts uploading at once. Files being written through the mount are ignored: they
      // appear in their tag folder by rename when complete.
      active.watcher = watchFolder(staging, {
        ignored: (p) => isInside(writes, p),
        onChange: () => this.scheduleRescan(self),
        onError: (e) => this.log.warn(`watching ${staging}: ${e.message}`),
      });
      // Files written while the daemon was down are found by this first scan; the periodic one catches
      // anything the watcher missed (inotify limits, network filesystems).
      await this.rescanMount(active);
      active.periodic = setInterval(() => void this.rescanMount(self), PERIODIC_RESCAN_MS);
      active.periodic.unref();
    }
  }

  private scheduleRescan(m: ActiveMount, delayMs = 100): void {
    clearTimeout(m.rescanTimer);
    m.rescanTimer = setTimeout(() => void this.rescanMount(m), delayMs);
  }

  /** rescanMount scans one staging folder; scans of a folder run one after another, never overlapping. */
  private rescanMount(m: ActiveMount): Promise<number> {
    const next = (m.scanning ?? Promise.resolve(0)).then(() => this.scanOnce(m));
    m.scanning = next;
    return next;
  }

  private async scanOnce(m: ActiveMount): Promise<number> {
    if (!m.config.staging) return 0;
    const root = path.resolve(m.config.staging);
    let queued = 0;
    try {
      const found = await scanStaging(root, this.log);
      for (const staged of found) {
        const r = await this.queue.enqueue(m.config.source, staged);
        if (r !== 'unchanged') queued++;
      }
      const dirs = new Set(found.map((f) => f.dir));
      // One being pushed right now cannot be cancelled: look again once that attempt is over.
      if (await this.dropStale(m.config.source, (dir) => isInside(root, dir) && !dirs.has(dir))) this.scheduleRescan(m, 1000);
    } catch (err) {
      this.log.warn(`scanning ${m.config.staging}: ${(err as Error).message}`);
    }
    return queued;
  }

  /**
   * dropStale cancels pending pushes of folders that are no longer tag folders: while `cp -r` copies a
   * subfolder's files before the tag folder's own, the subfolder looks like a tag folder for a moment.
   */
  private async dropStale(target: string, stale: (dir: string) => boolean): Promise<number> {
    let busy = 0;
    for (const item of this.queue.status()) {
      if (item.target !== target || item.state === 'done' || !stale(item.dir)) continue;
      if (await this.queue.cancelItem(item)) this.log.info(`${item.repository}:${item.tag} is no longer a tag folder (${item.dir}); not pushing it`);
      else busy++;
    }
    return busy;
  }

  private async detach(m: ActiveMount): Promise<void> {
    this.mounts.delete(m.running.mountpoint);
    clearTimeout(m.rescanTimer);
    clearInterval(m.periodic);
    await m.watcher?.close();
    await m.running.stop();
    await m.registry.close();
  }

  /** removeMount unmounts one mountpoint. */
  async removeMount(mountpoint: string): Promise<void> {
    const m = this.mounts.get(path.resolve(mountpoint));
    if (!m) throw new RegfsError('NOT_FOUND', `${path.resolve(mountpoint)} is not mounted by this daemon`);
    await this.detach(m);
  }

  /** refresh drops cached listings: of the repository a mount path names, or all of them. */
  refresh(p?: string): string {
    if (!p) {
      this.metadata.dropListings();
      return 'all listings';
    }
    const abs = path.resolve(p);
    for (const m of this.mounts.values()) {
      if (isInside(m.running.mountpoint, abs)) {
        const root = m.running.view().root;
        const prefix = root.kind === 'tree' ? root.prefix.split('/').filter(Boolean) : root.repository.split('/');
        const rel = [...prefix, ...path.relative(m.running.mountpoint, abs).split(path.sep).filter(Boolean)];
        // Drop every repository prefix of the path (and with them the repository lists): the daemon
        // cannot stat its own mount to learn which prefix is the repository.
        for (let i = 1; i <= rel.length; i++) this.metadata.dropListings(rel.slice(0, i).join('/'));
        if (rel.length === 0) this.metadata.dropListings();
        return abs;
      }
    }
    throw new RegfsError('NOT_FOUND', `${abs} is not inside a mount of this daemon`);
  }

  /** rescan scans every staging folder now and returns how many tags were queued. */
  async rescan(): Promise<number> {
    let n = 0;
    for (const m of this.mounts.values()) n += await this.rescanMount(m);
    return n;
  }

  /** status is what `regfs status` shows. */
  status(): DaemonStatus {
    return {
      pid: process.pid,
      startedAt: this.startedAt.toISOString(),
      socket: this.config.socket,
      cacheDir: this.config.cacheDir,
      stateDir: this.config.stateDir,
      mounts: [...this.mounts.values()].map((m) => ({ source: m.config.source, mountpoint: m.running.mountpoint, staging: m.config.staging ?? null, allowDelete: m.config.allowDelete === true, allowOther: (m.config.allowOther ?? this.config.mountDefaults.allowOther) === true, ...m.running.view(), registry: m.registry.stats?.() ?? null })),
      cache: this.blobs.stats(),
      metadata: this.metadata.stats(),
      queue: this.queue.status(),
      sync: this.sync.status(),
      recentErrors: [...this.recent],
      lastReload: this.lastReload ?? null,
    };
  }

  /**
   * answering waits until every mount answers a stat (from a child process: the daemon never touches
   * its own mounts) and returns the mountpoints that did not within `ms`.
   */
  async answering(ms = 30_000): Promise<string[]> {
    const until = Date.now() + ms;
    const pending = new Set(this.mounts.keys());
    while (pending.size) {
      for (const mp of [...pending]) if ((await probeMount(mp, Math.max(500, Math.min(5000, until - Date.now())))) === 'ok') pending.delete(mp);
      if (!pending.size || Date.now() >= until) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    return [...pending];
  }

  /** mountCount is how many mounts the daemon serves now. */
  get mountCount(): number {
    return this.mounts.size;
  }

  /**
   * reload re-reads the config file (adding and removing mounts) and drops listings (SIGHUP). Its
   * result, success or the first error, is kept for `regfs status` and returned; it never throws.
   */
  async reload(): Promise<ReloadResult> {
    const errors: string[] = [];
    try {
      await this.reloadOnce(errors);
    } catch (err) {
      errors.unshift((err as Error).message);
    }
    this.lastReload = { time: new Date().toISOString(), ok: errors.length === 0, ...(errors.length ? { error: errors[0] } : {}), mounts: this.mounts.size };
    if (errors.length) this.log.error(`reload failed: ${errors.join('; ')}`);
    return this.lastReload;
  }

  private async reloadOnce(errors: string[]): Promise<void> {
    this.metadata.dropListings();
    // A `regfs login` since the credentials were read takes effect now.
    invalidateCredentials();
    if (!this.configFile) {
      this.log.info('SIGHUP: dropped cached listings');
      return;
    }
    const next = resolveConfig(await loadConfigFile(this.configFile), {});
    const wanted = new Map(next.mounts.map((m) => [path.resolve(m.mountpoint), m]));
    // Only mounts that came from the file can be removed by editing it; those given by flags or added
    // with `regfs mounts add` stay.
    for (const [mp, m] of this.mounts) if (this.fileMounts.has(mp) && !wanted.has(mp)) await this.detach(m);
    this.fileMounts = new Set(wanted.keys());
    for (const [mp, mc] of wanted) {
      if (!this.mounts.has(mp)) {
        await this.addMount(mc).catch((e: unknown) => {
          errors.push(`cannot mount ${mp}: ${(e as Error).message}`);
        });
      }
    }
    await this.sync.reconcile(next.syncs);
    this.config = { ...this.config, mounts: next.mounts, syncs: next.syncs };
    if (!errors.length) this.log.info('SIGHUP: configuration reloaded, listings dropped', { mounts: this.mounts.size });
  }

  private routes(): Parameters<typeof startControlServer>[1] {
    const body = (b: unknown): Record<string, unknown> => (typeof b === 'object' && b !== null ? (b as Record<string, unknown>) : {});
    const str = (v: unknown, name: string): string => {
      if (typeof v !== 'string' || !v) throw new RegfsError('INVALID_ARGUMENT', `missing ${name}`);
      return v;
    };
    return {
      'GET /ping': async () => ({ pid: process.pid }),
      'GET /status': async () => this.status(),
      'GET /mounts': async () => ({ mounts: this.status().mounts }),
      'POST /mounts': async (b) => {
        const o = body(b);
        if (o.allowDelete === true && typeof o.staging !== 'string') throw new RegfsError('INVALID_ARGUMENT', '--allow-delete needs --staging (writes through the mount go there)');
        const mc = validateMount({ ...o, source: str(o.source, 'source'), mountpoint: str(o.mountpoint, 'mountpoint') }, 'mount', process.cwd());
        await this.addMount(mc);
        // Saved into the config file as `sync add` is, so the mount comes back after a restart (and a
        // later edit of the file plus SIGHUP may remove it again).
        if (this.configFile) {
          await updateConfigMounts(this.configFile, (list, base) => [...list.filter((m) => path.resolve(base, String(m.mountpoint)) !== mc.mountpoint), mountToJson(mc)]).catch(async (err: unknown) => {
            await this.removeMount(mc.mountpoint).catch(() => undefined);
            throw err;
          });
          this.fileMounts.add(mc.mountpoint);
        }
        return { mounted: mc.mountpoint, savedTo: this.configFile ?? null };
      },
      'POST /mounts/remove': async (b) => {
        const mp = path.resolve(str(body(b).mountpoint, 'mountpoint'));
        await this.removeMount(mp);
        if (this.configFile && this.fileMounts.has(mp)) {
          await updateConfigMounts(this.configFile, (list, base) => list.filter((m) => path.resolve(base, String(m.mountpoint)) !== mp));
          this.fileMounts.delete(mp);
        }
        return { unmounted: mp, savedTo: this.configFile ?? null };
      },
      'POST /refresh': async (b) => ({ refreshed: this.refresh(typeof body(b).path === 'string' ? (body(b).path as string) : undefined) }),
      'POST /rescan': async () => ({ queued: await this.rescan() }),
      'POST /retry': async () => {
        // Pushes that failed for want of a login succeed after `regfs login` without a restart.
        invalidateCredentials();
        return { requeued: await this.queue.retry() };
      },
      'GET /syncs': async () => ({ syncs: this.sync.status() }),
      'POST /syncs': async (b) => {
        const sc = validateSync(b, 'sync', process.cwd());
        await this.sync.add(sc);
        if (this.configFile) {
          const file = this.configFile;
          await updateConfigSyncs(file, (list, base) => [...list.filter((s) => path.resolve(base, String(s.local)) !== sc.local), { ...sc }]).catch(async (err: unknown) => {
            await this.sync.remove(sc.local, { forget: true });
            throw err;
          });
        }
        return { added: sc.local, repository: sc.repository, savedTo: this.configFile ?? null };
      },
      'POST /syncs/remove': async (b) => {
        const local = path.resolve(str(body(b).local, 'local'));
        await this.sync.remove(local, { forget: true });
        if (this.configFile) await updateConfigSyncs(this.configFile, (list, base) => list.filter((s) => path.resolve(base, String(s.local)) !== local));
        return { removed: local, savedTo: this.configFile ?? null };
      },
      'POST /syncs/now': async (b) => ({ rounds: await this.sync.now(typeof body(b).local === 'string' ? (body(b).local as string) : undefined) }),
      'GET /cache/stats': async () => this.blobs.stats(),
      'POST /cache/prune': async (b) => {
        const max = body(b).maxSize;
        return this.blobs.evict(typeof max === 'number' ? { maxSize: max } : {});
      },
    };
  }

  /** stop stops accepting work, persists in-flight pushes, unmounts everything and closes the cache. */
  stop(): Promise<void> {
    this.stopping ??= (async () => {
      await this.server?.close().catch(() => undefined);
      for (const m of this.mounts.values()) {
        clearTimeout(m.rescanTimer);
        clearInterval(m.periodic);
        await m.watcher?.close();
      }
      await this.sync.stop();
      // Bounded (10 s): a push still running after that is abandoned and resumed on restart.
      const abandoned = (await this.queue.stop()) > 0;
      await this.sync.close({ abandoned });
      for (const m of [...this.mounts.values()]) {
        this.mounts.delete(m.running.mountpoint);
        await m.running.stop();
        // A pool's close waits for its requests: never for those of an abandoned push.
        const closing = m.registry.close();
        if (abandoned) void closing.catch(() => undefined);
        else await closing;
      }
      await this.blobs.close();
      this.log.info('regfs daemon stopped');
    })();
    return this.stopping;
  }
}

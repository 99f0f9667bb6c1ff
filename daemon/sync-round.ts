import { randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import type { BlobCache } from '../cache/blob-cache.js';
import { cachedRepository } from '../cache/cached-repository.js';
import type { Descriptor } from '../registry/descriptor.js';
import { digestHex } from '../registry/digest.js';
import { RegfsError, errorMessage, isRegfsError } from '../util/errors.js';
import { isTag } from '../registry/reference.js';
import type { Registry, Repository } from '../registry/storage.js';
import { pullArtifact } from '../registry/transfer.js';
import { runLimited } from '../util/limit.js';
import { fsyncDir } from '../util/fs-atomic.js';
import { redactText, type Logger } from '../util/log.js';
import { fingerprint, isIgnoredName, scanTagDir } from '../staging/layout.js';
import type { FolderWatcher } from '../staging/watcher.js';
import { tagManifestDigest, titledLayers, type TagLayer } from '../staging/tag-artifact.js';
import type { RoundReport } from './protocol.js';
import type { PushQueue } from './push-queue.js';
import type { SyncConfig } from './settings.js';
import { freeName, OUR_TEMP, sameContent, scanLocalTags, stillQuiet, type LocalTag } from './sync-local.js';
import { conflictTag, decideSync } from './sync-rule.js';
import { dropBase, recordConflict, setBase, type PairState } from './sync-state.js';

interface RemoteTags {
  known: Map<string, Descriptor>;
  /** unknown are tags listed but not resolved this round (an error other than not found): left alone. */
  unknown: Set<string>;
}

/** Pair is one running sync pair: its configuration, registry, state and round bookkeeping. */
export interface Pair {
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

/** RoundOptions are what rounds use of the daemon. */
export interface RoundOptions {
  queue: PushQueue;
  blobs: BlobCache;
  log: Logger;
  /** changed is told when sync changed a repository's tags without the queue (a delete, a conflict tag). */
  changed?(repository: string): void;
}

/**
 * SyncRounds runs the rounds of sync pairs: a round lists the tags, resolves their digests (4 at a time),
 * scans the tag folders and compares both sides with the base (sync-rule.ts decideSync): pulls go through
 * the blob cache into temp files renamed into place, pushes through the durable push queue. The caller
 * (SyncManager) makes sure rounds of a pair never overlap.
 */
export class SyncRounds {
  constructor(private readonly opts: RoundOptions) {}

  /** run is one round of a pair: list both sides, then settle every tag (an error on one tag does not stop the others). */
  async run(pair: Pair): Promise<RoundReport> {
    const report: RoundReport = { local: pair.config.local, repository: pair.config.repository, pulled: [], queued: [], conflicts: [], deletedLocal: [], deletedRemote: [] };
    if (pair.stopped) return report;
    try {
      const remote = await this.remoteTags(pair);
      const local = await scanLocalTags({ root: pair.config.local, display: pair.display, matches: pair.matches, log: this.opts.log, warnOnce: (k, m) => this.warnOnce(pair, k, m) });
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
        await dropBase(pair, this.opts.log, tag);
        return;
      case 'push':
        if (action.why) say(`pushing ${tag} from ${l!.dir}`, action.why);
        if (await this.push(pair, tag, l!, r?.digest ?? null)) report.queued.push(tag);
        return;
      case 'pull':
        if (!(await this.queueSettled(pair, tag))) return;
        if (l && !(await stillQuiet(l, this.opts.log))) return;
        if (await this.pull(pair, tag, r!, l?.fp)) {
          report.pulled.push(tag);
          say(`pulled ${tag} into ${path.join(c.local, tag)}`, action.why);
        }
        return;
      case 'delete-local': {
        if (!(await this.queueSettled(pair, tag)) || !(await stillQuiet(l!, this.opts.log))) return;
        const trash = path.join(c.local, `.${tag}.${randomBytes(6).toString('hex')}.deleted`);
        await fsp.rename(l!.dir, trash);
        await fsp.rm(trash, { recursive: true, force: true });
        await dropBase(pair, this.opts.log, tag);
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
        await dropBase(pair, this.opts.log, tag);
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

  /**
   * push hands a tag folder to the durable queue; the base is recorded when the queue reports it done. `expect`
   * is where the registry's tag is now (null: absent): the queue reads the tag again right before and after its
   * manifest PUT, and another writer's push found there is a conflict (SyncManager keeps it as a conflict tag).
   */
  private async push(pair: Pair, tag: string, l: LocalTag, expect: string | null): Promise<boolean> {
    // The queue skips files it pushed before; a tag deleted in the registry since must be pushed again.
    await this.opts.queue.forget(pair.source, pair.repoName, tag);
    const r = await this.opts.queue.enqueue(pair.source, { repository: pair.repoName, tag, dir: l.dir, entries: l.entries }, { expectTag: expect });
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
      fp = fingerprint(await scanTagDir(tmp));
      // An edit made while we downloaded would be lost by the swap: leave it for the next round (a conflict).
      const now = await scanTagDir(dir);
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
    await setBase(pair, this.opts.log, tag, desc.digest, fp);
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
      await setBase(pair, this.opts.log, tag, r.digest, l.fp);
      this.opts.log.info(`sync ${pair.display}: ${tag} holds the same files on both sides; recorded as in step`);
      return;
    }
    if (!(await stillQuiet(l, this.opts.log))) return;
    const c = pair.config;
    if (c.direction === 'up') {
      // The local folder is the source: it keeps the tag, the registry's version is kept as a conflict tag.
      await this.keepRegistryVersion(pair, tag, r, l.fp, report);
      if (await this.push(pair, tag, l, r.digest)) report.queued.push(tag);
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
    await recordConflict(pair, this.opts.log, { tag, kept, at: new Date().toISOString(), registryDigest: r.digest, localDigest: localId });
    await fsp.rename(l.dir, dest);
    report.conflicts.push(tag);
    this.opts.log.warn(
      `sync ${pair.display}: conflict on ${tag}: both sides changed since the last sync; the registry keeps ${tag} (${r.digest}), ` +
        `the local version is kept in ${dest}${c.direction === 'both' ? ` and pushed as ${kept}` : ''}`,
    );
    if (c.direction === 'both') {
      const entries = await scanTagDir(dest);
      if (await this.push(pair, kept, { dir: dest, entries, fp: fingerprint(entries) }, null)) report.queued.push(kept);
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
    await recordConflict(pair, this.opts.log, { tag, kept, at: new Date().toISOString(), registryDigest: r.digest, localDigest: localId });
    report.conflicts.push(tag);
    this.opts.log.warn(`sync ${pair.display}: conflict on ${tag}: both sides changed since the last sync; the local version takes ${tag}, the registry's version (${r.digest}) is kept as ${kept}`);
  }
}

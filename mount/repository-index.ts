/**
 * RepositoryIndex is what a mount knows about which repositories exist, without depending on the
 * catalog: the catalog's names when the registry answers it, the repositories configured for the
 * mount, and those found by path (a lookup probed the repository's tag list and it answered).
 *
 * Ordering and bounds:
 * * The catalog is asked at most once per TTL, whatever it answered. A refusal (401/403/404/405,
 *   UNSUPPORTED, or an empty list) is logged once per mount and kept in `status()`; it is never an
 *   error of the root directory.
 * * Each candidate name is probed at most once per TTL, positive or negative; concurrent lookups of
 *   one name share the request. Names are validated before any request.
 * * `version` changes whenever the set of names changes, so callers can cache what they build from it.
 */
import { isRepositoryName } from '../registry/reference.js';
import type { Registry } from '../registry/storage.js';
import { errorMessage, RegfsError } from '../util/errors.js';
import { nullLogger, type Logger } from '../util/log.js';
import type { MetadataSource } from './ports.js';

/** CatalogState is what `regfs status` shows about a mount's catalog. */
export interface CatalogState {
  /** state: unknown (not asked yet), listed (answered with names), refused (the registry will not list), unreachable (no answer). */
  state: 'unknown' | 'listed' | 'refused' | 'unreachable';
  /** repositories is how many names the catalog listed. */
  repositories: number;
  /** reason is the one line the registry gave, when it did not list. */
  reason?: string;
  checkedAt?: string;
}

/** RepositoryIndexStats is the index's part of a mount's status. */
export interface RepositoryIndexStats {
  catalog: CatalogState;
  /** configured and found count the names added without the catalog. */
  configured: number;
  found: number;
  /** probes counts tag-list requests made to find repositories by path. */
  probes: number;
}

/** RepositoryIndexOptions configure a RepositoryIndex. */
export interface RepositoryIndexOptions {
  registry: Registry;
  metadata: MetadataSource;
  /** repositories are configured names (full repository paths), shown whether or not the catalog lists them. */
  repositories?: string[];
  /** ttlMs is how long a catalog answer or a probe answer is trusted (the metadata TTL). */
  ttlMs: number;
  log?: Logger;
  now?: () => number;
}

const REFUSED_STATUS = new Set([401, 403, 404, 405]);

/** isAbsence tells whether a tag-list error means "no repository visible by that name". */
function isAbsence(err: unknown): boolean {
  return err instanceof RegfsError && (err.code === 'NOT_FOUND' || err.code === 'UNAUTHORIZED' || err.code === 'DENIED');
}

/** RepositoryIndex: see the file comment. */
export class RepositoryIndex {
  private readonly log: Logger;
  private readonly now: () => number;
  private readonly configured: string[];
  private readonly found = new Set<string>();
  private readonly probesByName = new Map<string, { at: number; value: Promise<boolean> }>();
  private catalogNames: string[] = [];
  private catalog: CatalogState = { state: 'unknown', repositories: 0 };
  private catalogAt = -Infinity;
  private catalogFlight: Promise<void> | undefined;
  private warnedCatalog = false;
  private probes = 0;
  private generation: number | undefined;
  private merged: string[] = [];
  private mergedVersion = -1;
  /** version changes whenever names() would answer differently. */
  version = 0;

  constructor(private readonly opts: RepositoryIndexOptions) {
    this.log = opts.log ?? nullLogger;
    this.now = opts.now ?? Date.now;
    this.configured = (opts.repositories ?? []).filter((n) => isRepositoryName(n));
  }

  /** authoritative tells whether the catalog answered with names (then unknown names are not guessed as namespaces). */
  get authoritative(): boolean {
    return this.catalog.state === 'listed';
  }

  /** sync forgets answers older than the metadata cache's last dropListings (a push, a refresh). */
  private sync(): void {
    const g = this.opts.metadata.listingsGeneration;
    if (g === this.generation) return;
    this.generation = g;
    this.forget();
  }

  /** names returns catalog ∪ configured ∪ found, sorted; the same array while `version` is unchanged. */
  async names(): Promise<string[]> {
    this.sync();
    await this.refreshCatalog();
    if (this.mergedVersion !== this.version) {
      this.merged = [...new Set([...this.catalogNames, ...this.configured, ...this.found])].sort();
      this.mergedVersion = this.version;
    }
    return this.merged;
  }

  /**
   * probe asks the registry whether `name` is a repository (its tag list answers), once per TTL.
   * NOT_FOUND, UNAUTHORIZED and DENIED mean no (Docker Hub answers 401 for a repository that does not
   * exist); a network error is thrown and not remembered.
   */
  probe(name: string): Promise<boolean> {
    if (!isRepositoryName(name)) return Promise.resolve(false);
    this.sync();
    const hit = this.probesByName.get(name);
    if (hit && this.now() - hit.at < this.opts.ttlMs) return hit.value;
    if (this.probesByName.size > 10_000) this.probesByName.clear();
    this.probes++;
    const value = this.opts.metadata.tags(this.opts.registry.repository(name)).then(
      () => {
        if (!this.found.has(name)) {
          this.found.add(name);
          this.version++;
        }
        return true;
      },
      (err: unknown) => {
        if (isAbsence(err)) {
          if (this.found.delete(name)) this.version++;
          return false;
        }
        this.probesByName.delete(name);
        throw err;
      },
    );
    this.probesByName.set(name, { at: this.now(), value });
    return value;
  }

  /** forget drops what was learnt (catalog and probes; found names stay listed until a probe says otherwise). */
  forget(): void {
    this.catalogAt = -Infinity;
    this.probesByName.clear();
  }

  /** stats is the index's part of the mount's status. */
  stats(): RepositoryIndexStats {
    return { catalog: { ...this.catalog }, configured: this.configured.length, found: this.found.size, probes: this.probes };
  }

  /** refreshCatalog asks the catalog when the last answer is older than the TTL; it never throws. */
  refreshCatalog(): Promise<void> {
    if (this.now() - this.catalogAt < this.opts.ttlMs) return Promise.resolve();
    this.catalogFlight ??= this.askCatalog().finally(() => {
      this.catalogFlight = undefined;
    });
    return this.catalogFlight;
  }

  private async askCatalog(): Promise<void> {
    const checkedAt = new Date().toISOString();
    let names: string[] = [];
    let next: CatalogState;
    try {
      names = (await this.opts.metadata.repositories(this.opts.registry)).filter((n) => isRepositoryName(n));
      next = names.length ? { state: 'listed', repositories: names.length, checkedAt } : { state: 'refused', repositories: 0, reason: 'the catalog is empty', checkedAt };
    } catch (err) {
      const status = err instanceof RegfsError ? err.status : undefined;
      const offline = err instanceof RegfsError && (err.code === 'NETWORK' || err.code === 'TIMEOUT');
      const refused = err instanceof RegfsError && (err.code === 'UNAUTHORIZED' || err.code === 'DENIED' || err.code === 'NOT_FOUND' || err.code === 'UNSUPPORTED' || (status !== undefined && REFUSED_STATUS.has(status)));
      next = { state: offline ? 'unreachable' : refused ? 'refused' : 'unreachable', repositories: 0, reason: errorMessage(err), checkedAt };
      // Keep what an earlier answer listed while the registry is away: the names are still reachable.
      if (offline) names = this.catalogNames;
    }
    this.catalogAt = this.now();
    if (next.state !== this.catalog.state || next.reason !== this.catalog.reason) this.report(next);
    this.catalog = next;
    if (names.join('\n') !== this.catalogNames.join('\n')) {
      this.catalogNames = names;
      this.version++;
    }
  }

  private report(next: CatalogState): void {
    const display = this.opts.registry.display;
    if (next.state === 'listed') {
      if (this.warnedCatalog) this.log.info(`${display}: the catalog answers again (${next.repositories} repositories)`);
      return;
    }
    if (next.state === 'refused' && this.warnedCatalog) return;
    this.warnedCatalog = true;
    const what = next.state === 'refused' ? 'does not list its repositories' : 'does not answer';
    this.log.warn(`${display} ${what} (${next.reason}); repositories stay reachable by path, and the root lists the configured and found ones`);
  }
}

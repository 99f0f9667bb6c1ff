import { LRUCache } from 'lru-cache';
import type { Descriptor } from '../registry/descriptor.js';
import { parseDigest, type Digest } from '../registry/digest.js';
import { RegfsError, errorMessage } from '../util/errors.js';
import type { FetchedManifest, ReadableRepository, Registry } from '../registry/storage.js';
import { nullLogger, type Logger } from '../util/log.js';
import { SingleFlight } from './single-flight.js';

/** MetadataCacheOptions tune a MetadataCache; every field has a default. */
export interface MetadataCacheOptions {
  /** ttlMs is how long tag→descriptor entries, tag lists and repository lists are fresh; default 30 s. */
  ttlMs?: number;
  /** negativeTtlMs is how long a NOT_FOUND answer is remembered; default 5 s. */
  negativeTtlMs?: number;
  /** maxManifests bounds the manifests kept (by count); default 10,000. */
  maxManifests?: number;
  /** maxManifestBytes bounds the manifests kept (by byte length); default 256 MiB. */
  maxManifestBytes?: number;
  /** maxListings bounds each listing cache (tags, resolves, repository lists) by count; default 10,000. */
  maxListings?: number;
  /** log receives the one "offline: serving cached metadata" warning per outage. */
  log?: Logger;
}

/** MetadataCacheStats counts upstream requests, cache hits and stale answers served while offline. */
export interface MetadataCacheStats {
  /** requests counts calls made to a repository or registry. */
  requests: number;
  /** hits counts answers served fresh from the cache (negative entries included). */
  hits: number;
  /** stale counts expired entries served because the registry was unreachable. */
  stale: number;
  /** manifests is how many manifests (and negative manifest entries) are cached. */
  manifests: number;
  /** listings is how many tag, resolve and repository-list entries are cached, expired ones included. */
  listings: number;
}

/** Scope names whose entry it is, so dropListings can find it. */
interface Scope {
  name: string;
  display: string;
}

type Entry<T> = (Scope & { ok: true; value: T }) | (Scope & { ok: false; error: RegfsError });

const MiB = 1024 * 1024;
const ENTRY_OVERHEAD = 64;

function isOffline(err: unknown): boolean {
  return err instanceof RegfsError && (err.code === 'NETWORK' || err.code === 'TIMEOUT');
}

function positive(v: number | undefined, def: number, name: string): number {
  if (v === undefined) return def;
  if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) throw new RegfsError('INVALID_ARGUMENT', `MetadataCache option ${name} must be a non-negative number`);
  return Math.max(1, Math.floor(v));
}

function listBytes(e: Entry<string[]>): number {
  return ENTRY_OVERHEAD + (e.ok ? e.value.reduce((n, s) => n + s.length + 8, 0) : 0);
}

/**
 * MetadataCache caches what `ls` needs: manifests by digest (immutable, kept until pushed out by the
 * count/byte bounds), tag→descriptor, tag lists and repository lists (fresh for ttlMs), and NOT_FOUND
 * answers (for negativeTtlMs). Concurrent callers of one key share one request. When the registry is
 * unreachable (NETWORK/TIMEOUT) an expired entry is served instead, with one warning per outage.
 * Keys include the repository's `display`, so two registries never collide.
 */
export class MetadataCache {
  private readonly manifests: LRUCache<string, Entry<FetchedManifest>>;
  private readonly resolves: LRUCache<string, Entry<Descriptor>>;
  private readonly tagLists: LRUCache<string, Entry<string[]>>;
  private readonly repoLists: LRUCache<string, Entry<string[]>>;
  private readonly manifestFlights = new SingleFlight<string, FetchedManifest>();
  private readonly resolveFlights = new SingleFlight<string, Descriptor>();
  private readonly listFlights = new SingleFlight<string, string[]>();
  private readonly log: Logger;
  private readonly ttlMs: number;
  private readonly negativeTtlMs: number;
  private counters = { requests: 0, hits: 0, stale: 0 };
  private offline = false;
  /** generation changes on dropListings, so answers to requests started before it are not stored. */
  private generation = 0;

  constructor(opts: MetadataCacheOptions = {}) {
    this.log = opts.log ?? nullLogger;
    this.ttlMs = positive(opts.ttlMs, 30_000, 'ttlMs');
    this.negativeTtlMs = positive(opts.negativeTtlMs, 5_000, 'negativeTtlMs');
    const maxListings = positive(opts.maxListings, 10_000, 'maxListings');
    this.manifests = new LRUCache<string, Entry<FetchedManifest>>({
      max: positive(opts.maxManifests, 10_000, 'maxManifests'),
      maxSize: positive(opts.maxManifestBytes, 256 * MiB, 'maxManifestBytes'),
      sizeCalculation: (e) => ENTRY_OVERHEAD + (e.ok ? e.value.bytes.length : 0),
      noDeleteOnStaleGet: true,
    });
    const listing = { max: maxListings, ttl: this.ttlMs, noDeleteOnStaleGet: true, updateAgeOnGet: false };
    this.resolves = new LRUCache<string, Entry<Descriptor>>(listing);
    this.tagLists = new LRUCache<string, Entry<string[]>>({ ...listing, maxSize: 64 * MiB, sizeCalculation: listBytes });
    this.repoLists = new LRUCache<string, Entry<string[]>>({ ...listing, maxSize: 64 * MiB, sizeCalculation: listBytes });
  }

  /** manifest returns a repository's manifest by digest (fetched once, then cached until pushed out). */
  manifest(repo: ReadableRepository, digest: Digest): Promise<FetchedManifest> {
    const d = parseDigest(digest);
    return this.lookup(this.manifests, this.manifestFlights, `${repo.display}@${d}`, scopeOf(repo), () => repo.fetchManifest(d), undefined);
  }

  /** resolve returns the descriptor a tag (or digest) points at, fresh for ttlMs. */
  resolve(repo: ReadableRepository, reference: string): Promise<Descriptor> {
    return this.lookup(this.resolves, this.resolveFlights, `${repo.display}:${reference}`, scopeOf(repo), () => repo.resolve(reference), this.ttlMs);
  }

  /**
   * manifestByTag returns a tag's manifest with one GET by tag when the tag is not freshly resolved
   * (no HEAD first): the answer fills both the tag entry (fresh for ttlMs) and the manifest entry.
   */
  async manifestByTag(repo: ReadableRepository, tag: string): Promise<FetchedManifest> {
    let fetched: FetchedManifest | undefined;
    const desc = await this.lookup(this.resolves, this.resolveFlights, `${repo.display}:${tag}`, scopeOf(repo), async () => {
      fetched = await repo.fetchManifest(tag);
      this.manifests.set(`${repo.display}@${fetched.descriptor.digest}`, { ...scopeOf(repo), ok: true, value: fetched });
      return fetched.descriptor;
    }, this.ttlMs);
    return fetched ?? this.manifest(repo, desc.digest);
  }

  /** tags returns a repository's tags, fresh for ttlMs. */
  tags(repo: ReadableRepository): Promise<string[]> {
    return this.lookup(this.tagLists, this.listFlights, `tags ${repo.display}`, scopeOf(repo), () => repo.listTags(), this.ttlMs);
  }

  /** repositories returns a registry's repository names, fresh for ttlMs. */
  repositories(registry: Registry): Promise<string[]> {
    const scope = { name: '', display: registry.display };
    return this.lookup(this.repoLists, this.listFlights, `repos ${registry.display}`, scope, () => registry.listRepositories(), this.ttlMs);
  }

  /**
   * dropListings forgets tag lists and tag→descriptor entries of one repository (matched by name or
   * display) or of all, and every repository list; manifests by digest stay (they cannot change).
   */
  dropListings(repoName?: string): void {
    this.generation++;
    this.repoLists.clear();
    if (repoName === undefined) {
      this.resolves.clear();
      this.tagLists.clear();
      return;
    }
    const match = (e: Scope): boolean => e.name === repoName || e.display === repoName;
    for (const cache of [this.resolves, this.tagLists] as Array<LRUCache<string, Entry<unknown>>>) {
      for (const [key, { value }] of cache.dump()) if (match(value)) cache.delete(key);
    }
  }

  /** listingsGeneration changes on every dropListings, so views built from listings know to ask again. */
  get listingsGeneration(): number {
    return this.generation;
  }

  /** stats returns counters and entry counts. */
  stats(): MetadataCacheStats {
    return {
      ...this.counters,
      manifests: this.manifests.size,
      listings: this.resolves.size + this.tagLists.size + this.repoLists.size,
    };
  }

  private async lookup<T extends object>(
    cache: LRUCache<string, Entry<T>>,
    flights: SingleFlight<string, T>,
    key: string,
    scope: Scope,
    load: () => Promise<T>,
    ttl: number | undefined,
  ): Promise<T> {
    const fresh = cache.get(key);
    if (fresh) {
      this.counters.hits++;
      if (fresh.ok) return fresh.value;
      throw new RegfsError(fresh.error.code, fresh.error.message, { cause: fresh.error, status: fresh.error.status, registryCode: fresh.error.registryCode });
    }
    return flights.run(key, async () => {
      const gen = this.generation;
      this.counters.requests++;
      try {
        const value = await load();
        if (gen === this.generation) cache.set(key, { ...scope, ok: true, value }, ttl === undefined ? {} : { ttl });
        this.online(scope.display);
        return value;
      } catch (err) {
        if (err instanceof RegfsError && err.code === 'NOT_FOUND') {
          if (gen === this.generation) cache.set(key, { ...scope, ok: false, error: err }, { ttl: this.negativeTtlMs });
          this.online(scope.display);
          throw err;
        }
        if (isOffline(err)) {
          const stale = cache.peek(key, { allowStale: true });
          if (stale?.ok) {
            this.counters.stale++;
            if (!this.offline) {
              this.offline = true;
              this.log.warn('offline: serving cached metadata', { registry: scope.display, error: errorMessage(err) });
            }
            return stale.value;
          }
        }
        throw err;
      }
    });
  }

  private online(display: string): void {
    if (!this.offline) return;
    this.offline = false;
    this.log.info('registry reachable again: metadata is fresh', { registry: display });
  }
}

function scopeOf(repo: ReadableRepository): Scope {
  return { name: repo.name, display: repo.display };
}

import test, { type ExecutionContext } from 'ava';
import { Readable } from 'node:stream';
import { MetadataCache, type MetadataCacheOptions } from '../cache/metadata-cache.js';
import type { Descriptor } from '../registry/descriptor.js';
import { digestOf } from '../registry/digest.js';
import { RegfsError } from '../util/errors.js';
import { RemoteRegistry, type RemoteRepository } from '../registry/remote.js';
import type { Logger } from '../util/log.js';
import { startFaultProxy, type FaultProxy } from '../lab/fault-proxy.js';
import { startRegistry, type StartedRegistry } from '../lab/registry.js';

const TTL = 200;
const MANIFEST_TYPE = 'application/vnd.oci.image.manifest.v1+json';
const EMPTY_CONFIG = Buffer.from('{}');
const EMPTY_CONFIG_DESC: Descriptor = { mediaType: 'application/vnd.oci.empty.v1+json', digest: digestOf(EMPTY_CONFIG), size: 2 };

let reg: StartedRegistry;

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** pushArtifact pushes a one-layer artifact whose layer holds `text`, tagged with `tags`; returns the manifest descriptor. */
async function pushArtifact(repo: RemoteRepository, text: string, tags: string[]): Promise<Descriptor> {
  const layer = Buffer.from(text);
  const layerDesc: Descriptor = { mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: digestOf(layer), size: layer.length };
  await repo.pushBlob(EMPTY_CONFIG_DESC, () => Readable.from([EMPTY_CONFIG]));
  await repo.pushBlob(layerDesc, () => Readable.from([layer]));
  const manifest = {
    schemaVersion: 2,
    mediaType: MANIFEST_TYPE,
    artifactType: 'application/x.test',
    config: EMPTY_CONFIG_DESC,
    layers: [{ ...layerDesc, annotations: { 'org.opencontainers.image.title': `${text}.txt` } }],
  };
  return repo.pushManifest(Buffer.from(JSON.stringify(manifest)), MANIFEST_TYPE, tags);
}

interface Env {
  proxy: FaultProxy;
  registry: RemoteRegistry;
  repo: RemoteRepository;
  name: string;
  cache: MetadataCache;
  warnings: string[];
}

let counter = 0;

/** env gives a test its own repository (with tags v1, v2), a fault proxy to count requests, and a cache. */
async function env(t: ExecutionContext, opts: MetadataCacheOptions = {}): Promise<Env> {
  const name = `meta/r${++counter}`;
  const direct = new RemoteRegistry(reg.host);
  await pushArtifact(direct.repository(name), `one-${name}`, ['v1']);
  await pushArtifact(direct.repository(name), `two-${name}`, ['v2']);
  await direct.close();
  const proxy = await startFaultProxy(t, reg.url);
  const registry = new RemoteRegistry(proxy.host, { retries: 0, timeoutMs: 2000 });
  t.teardown(() => registry.close());
  const warnings: string[] = [];
  const log: Logger = { debug() {}, info() {}, warn: (m) => warnings.push(m), error: (m) => warnings.push(m) };
  const cache = new MetadataCache({ ttlMs: TTL, negativeTtlMs: TTL, log, ...opts });
  return { proxy, registry, repo: registry.repository(name), name, cache, warnings };
}

test.before(async () => {
  reg = await startRegistry(undefined, { flavour: 'plain' });
});

test.after.always(async () => {
  await reg?.stop();
});

test('manifests by digest are fetched once and kept past the TTL', async (t) => {
  const e = await env(t);
  const desc = await e.repo.resolve('v1');
  e.proxy.reset();
  const [a, b] = await Promise.all([e.cache.manifest(e.repo, desc.digest), e.cache.manifest(e.repo, desc.digest)]);
  t.is(a, b);
  t.is(a.descriptor.digest, desc.digest);
  t.is(e.proxy.count('GET', /\/manifests\//), 1);
  await sleep(2 * TTL);
  t.is((await e.cache.manifest(e.repo, desc.digest)).descriptor.digest, desc.digest);
  t.is(e.proxy.count(undefined, /\/manifests\//), 1);
  t.is(e.cache.stats().requests, 1);
});

test('resolve and manifestByTag: cached for the TTL, fetched again after it (seeing a moved tag)', async (t) => {
  const e = await env(t);
  const v1 = await e.cache.resolve(e.repo, 'v1');
  const again = await e.cache.resolve(e.repo, 'v1');
  t.deepEqual(again, v1);
  t.is(e.proxy.count('HEAD', /\/manifests\/v1$/), 1);
  const fm = await e.cache.manifestByTag(e.repo, 'v1');
  t.is(fm.descriptor.digest, v1.digest);
  // Move v1 to a new artifact behind the cache's back.
  const direct = new RemoteRegistry(reg.host);
  const moved = await pushArtifact(direct.repository(e.name), `moved-${e.name}`, ['v1']);
  await direct.close();
  await sleep(2 * TTL);
  t.is((await e.cache.resolve(e.repo, 'v1')).digest, moved.digest);
  t.is((await e.cache.manifestByTag(e.repo, 'v1')).descriptor.digest, moved.digest);
  t.true(e.proxy.count('HEAD', /\/manifests\/v1$/) >= 2);
});

test('concurrent callers share one request (tags, resolve, manifest, repositories)', async (t) => {
  const e = await env(t, { ttlMs: 60_000 });
  const desc = await e.repo.resolve('v2');
  e.proxy.reset();
  const results = await Promise.all([
    ...Array.from({ length: 10 }, () => e.cache.tags(e.repo)),
    ...Array.from({ length: 10 }, () => e.cache.resolve(e.repo, 'v2')),
    ...Array.from({ length: 10 }, () => e.cache.manifest(e.repo, desc.digest)),
    ...Array.from({ length: 10 }, () => e.cache.repositories(e.registry)),
  ]);
  t.deepEqual(results[0], ['v1', 'v2']);
  t.true((results[30] as string[]).includes(e.name));
  t.is(e.proxy.count('GET', /\/tags\/list/), 1);
  t.is(e.proxy.count('HEAD', /\/manifests\/v2$/), 1);
  t.is(e.proxy.count('GET', /\/manifests\/sha256:/), 1);
  t.is(e.proxy.count('GET', /\/_catalog/), 1);
  t.is(e.cache.stats().requests, 4);
  t.is(e.cache.stats().hits, 0);
  await e.cache.tags(e.repo);
  t.is(e.cache.stats().hits, 1);
});

test('tag lists expire after the TTL', async (t) => {
  const e = await env(t);
  t.deepEqual(await e.cache.tags(e.repo), ['v1', 'v2']);
  t.deepEqual(await e.cache.tags(e.repo), ['v1', 'v2']);
  t.is(e.proxy.count('GET', /\/tags\/list/), 1, 'the second call was answered from the cache');
  const direct = new RemoteRegistry(reg.host);
  await pushArtifact(direct.repository(e.name), `three-${e.name}`, ['v3']);
  await direct.close();
  await sleep(2 * TTL);
  t.deepEqual(await e.cache.tags(e.repo), ['v1', 'v2', 'v3']);
  t.is(e.proxy.count('GET', /\/tags\/list/), 2);
});

test('NOT_FOUND is remembered for the negative TTL only', async (t) => {
  const e = await env(t, { ttlMs: 60_000, negativeTtlMs: TTL });
  const isNotFound = (err: unknown): boolean => err instanceof RegfsError && err.code === 'NOT_FOUND';
  t.true(isNotFound(await t.throwsAsync(e.cache.resolve(e.repo, 'nope'))));
  t.true(isNotFound(await t.throwsAsync(e.cache.resolve(e.repo, 'nope'))));
  t.is(e.proxy.count('HEAD', /\/manifests\/nope$/), 1);
  const direct = new RemoteRegistry(reg.host);
  const created = await pushArtifact(direct.repository(e.name), `nope-${e.name}`, ['nope']);
  await direct.close();
  await sleep(2 * TTL);
  t.is((await e.cache.resolve(e.repo, 'nope')).digest, created.digest);
  t.is(e.proxy.count('HEAD', /\/manifests\/nope$/), 2);
});

test('dropListings forgets one repository (or all) and the repository lists, not manifests', async (t) => {
  const e = await env(t, { ttlMs: 60_000, negativeTtlMs: 60_000 });
  const other = e.registry.repository(`${e.name}-other`);
  const desc = await e.cache.resolve(e.repo, 'v1');
  await e.cache.manifest(e.repo, desc.digest);
  await e.cache.tags(e.repo);
  await t.throwsAsync(e.cache.tags(other)); // NOT_FOUND, remembered
  await e.cache.repositories(e.registry);
  e.proxy.reset();
  e.cache.dropListings(e.name);
  await e.cache.tags(e.repo);
  await e.cache.resolve(e.repo, 'v1');
  await e.cache.repositories(e.registry);
  await e.cache.manifest(e.repo, desc.digest);
  await t.throwsAsync(e.cache.tags(other));
  t.is(e.proxy.count('GET', /\/tags\/list/), 1, 'only the dropped repository is asked again');
  t.is(e.proxy.count('HEAD', /\/manifests\/v1$/), 1);
  t.is(e.proxy.count('GET', /\/_catalog/), 1);
  t.is(e.proxy.count('GET', /\/manifests\/sha256:/), 0);
  e.proxy.reset();
  e.cache.dropListings();
  await e.cache.tags(e.repo);
  await t.throwsAsync(e.cache.tags(other));
  t.is(e.proxy.count('GET', /\/tags\/list/), 2);
});

test('keys include the registry: the same repository name on two registries does not collide', async (t) => {
  const e = await env(t);
  const direct = new RemoteRegistry(reg.host, { retries: 0 });
  t.teardown(() => direct.close());
  await e.cache.tags(e.repo);
  await e.cache.tags(direct.repository(e.name));
  t.is(e.cache.stats().requests, 2);
  t.is(e.cache.stats().listings, 2);
});

test('registry unreachable: expired entries are served, with one warning per outage', async (t) => {
  const own = await startRegistry(t, { flavour: 'plain' });
  const direct = new RemoteRegistry(own.host);
  await pushArtifact(direct.repository('off/line'), 'offline', ['v1']);
  await direct.close();
  const registry = new RemoteRegistry(own.host, { retries: 0, timeoutMs: 2000 });
  t.teardown(() => registry.close());
  const repo = registry.repository('off/line');
  const warnings: string[] = [];
  const cache = new MetadataCache({ ttlMs: TTL, log: { debug() {}, info() {}, warn: (m) => warnings.push(m), error: (m) => warnings.push(m) } });
  const tags = await cache.tags(repo);
  const desc = await cache.resolve(repo, 'v1');
  const names = await cache.repositories(registry);
  await own.kill();
  await sleep(2 * TTL);
  for (let i = 0; i < 3; i++) {
    t.deepEqual(await cache.tags(repo), tags);
    t.deepEqual(await cache.resolve(repo, 'v1'), desc);
    t.deepEqual(await cache.repositories(registry), names);
  }
  t.deepEqual(warnings, ['offline: serving cached metadata']);
  t.is(cache.stats().stale, 9);
  // Nothing cached: the error comes through.
  const err = await t.throwsAsync(cache.resolve(repo, 'v2'));
  t.true(err instanceof RegfsError && (err.code === 'NETWORK' || err.code === 'TIMEOUT'), String(err));
  // Back online: fresh answers, and a later outage warns again.
  await own.restart();
  t.deepEqual(await cache.tags(repo), tags);
  await own.kill();
  await sleep(2 * TTL);
  t.deepEqual(await cache.tags(repo), tags);
  t.is(warnings.length, 2);
});

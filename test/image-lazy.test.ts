import test from 'ava';
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, promises as fsp } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { BlobCache } from '../cache/blob-cache.js';
import { LAZY_MISSES } from '../cache/layer-extract.js';
import { LayerTocStore } from '../cache/layer-toc.js';
import { ByteCursor, scanTar, type TarHeader } from '../cache/tar-scan.js';
import type { ImageManifest } from '../registry/manifest.js';
import { RemoteRegistry } from '../registry/remote.js';
import { tempDir } from '../lab/cli.js';
import { startFaultProxy, type FaultProxy } from '../lab/fault-proxy.js';
import { sh, startMount, type StartedMount } from '../lab/mount.js';
import { skopeoPush, tarLayer, writeOciImage, type BuiltLayer, type ImageEntry } from '../lab/oci-image.js';
import { startRegistry, type StartedRegistry } from '../lab/registry.js';

/*
 * Lazy extraction of image rootfs/ files: the TOC pass writes no file, a file is extracted on first
 * open from the layer blob the TOC pass cached, layers/ reads fetch nothing more, eviction is safe.
 */

const exec = promisify(execFile);
const sha = (b: Buffer | string): string => createHash('sha256').update(b).digest('hex');

/** files lists the regular files under a directory (two levels: files/<dir>/<name>). */
async function files(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const d of await fsp.readdir(dir).catch(() => [] as string[])) {
    for (const n of await fsp.readdir(path.join(dir, d)).catch(() => [] as string[])) out.push(`${d}/${n}`);
  }
  return out.sort();
}

const bigFiles = Array.from({ length: 40 }, (_, i) => ({ name: `data/f${String(i).padStart(2, '0')}`, content: randomBytes(20_000 + i * 997) }));

function layers(): ImageEntry[][] {
  return [
    [
      { name: 'etc/', type: 'directory' },
      { name: 'etc/os-release', content: 'ID=lazy\n' },
      { name: 'bin/', type: 'directory' },
      { name: 'bin/tool', content: '#!/bin/sh\necho tool\n', mode: 0o755 },
      { name: 'bin/tool2', type: 'link', linkname: 'bin/tool' },
      { name: 'empty', content: '' },
      // over 100 bytes: tar-stream writes a pax path header
      { name: `deep/${'n'.repeat(120)}/file`, content: 'deep file\n' },
    ],
    [{ name: 'data/', type: 'directory' }, ...bigFiles],
    [{ name: 'etc/', type: 'directory' }, { name: 'etc/top', content: 'top layer\n' }],
  ];
}

interface Ctx {
  reg: StartedRegistry;
  proxy: FaultProxy;
  mount: StartedMount;
  built: BuiltLayer[];
  rootfs: string;
}
let ctx: Ctx;

const cleanups: (() => unknown)[] = [];
const hook = { teardown: (fn: () => unknown): void => void cleanups.push(fn) };
test.after.always(async () => {
  for (const fn of cleanups.reverse()) await fn();
});

test.before(async () => {
  const reg = await startRegistry(hook, { flavour: 'plain' });
  const layout = path.join(await tempDir(hook, 'regfs-lazy-'), 'layout');
  const built = await Promise.all(layers().map((l) => tarLayer(l)));
  await writeOciImage(layout, 'v1', built);
  await skopeoPush(layout, 'v1', reg.host, 'lazy/app:v1');
  const proxy = await startFaultProxy(hook, reg.url);
  const mount = await startMount(hook, proxy.host);
  ctx = { reg, proxy, mount, built, rootfs: path.join(mount.mnt, 'lazy/app/v1/rootfs') };
});

const blobGets = (d: string): number => ctx.proxy.count('GET', new RegExp(`/blobs/${d}`));

test.serial('a cold cat of one file writes only that file; each layer is fetched once, into the blob cache', async (t) => {
  t.is(await fsp.readFile(path.join(ctx.rootfs, 'etc/os-release'), 'utf8'), 'ID=lazy\n');
  const filesDir = path.join(ctx.mount.cacheDir, 'files');
  const written = await files(filesDir);
  t.is(written.length, 1, `only the file read was written: ${written.join(', ')}`);
  t.true(written[0]!.startsWith(`${ctx.built[0]!.digest.slice(7)}/`));
  t.deepEqual(ctx.built.map((b) => blobGets(b.digest)), [1, 1, 1]);
  const cached = await fsp.readdir(path.join(ctx.mount.cacheDir, 'blobs/sha256'));
  for (const b of ctx.built) t.true(cached.includes(b.digest.slice(7)), `layer ${b.digest} is a complete cached blob`);
  t.is((await fsp.readdir(path.join(ctx.mount.cacheDir, 'tocs'))).length, 3);
  // A hard link shares its target's file; an empty file needs no blob read; a pax long name works.
  t.is(await fsp.readFile(path.join(ctx.rootfs, 'bin/tool2'), 'utf8'), '#!/bin/sh\necho tool\n');
  t.is((await files(filesDir)).length, 2);
  t.is(await fsp.readFile(path.join(ctx.rootfs, 'bin/tool'), 'utf8'), '#!/bin/sh\necho tool\n');
  t.is((await files(filesDir)).length, 2);
  t.is(await fsp.readFile(path.join(ctx.rootfs, 'empty'), 'utf8'), '');
  t.is(await fsp.readFile(path.join(ctx.rootfs, `deep/${'n'.repeat(120)}/file`), 'utf8'), 'deep file\n');
  // stat and ls extract nothing
  const before = (await files(filesDir)).length;
  t.is((await fsp.stat(path.join(ctx.rootfs, 'etc/top'))).size, 'top layer\n'.length);
  t.is((await fsp.readdir(path.join(ctx.rootfs, 'data'))).length, bigFiles.length);
  t.is((await files(filesDir)).length, before);
});

test.serial('layers/ after rootfs/ sends no blob GET; reading every file of a layer backwards refetches nothing', async (t) => {
  const before = ctx.built.map((b) => blobGets(b.digest));
  const dir = path.join(ctx.mount.mnt, 'lazy/app/v1/layers');
  const names = (await fsp.readdir(dir)).sort();
  for (let i = 0; i < names.length; i++) t.is(`sha256:${sha(await fsp.readFile(path.join(dir, names[i]!)))}`, ctx.built[i]!.digest);
  t.deepEqual(ctx.built.map((b) => blobGets(b.digest)), before);

  // Forward misses go file by file; then a backward miss extracts the rest of the layer in one pass.
  const layerHex = ctx.built[1]!.digest.slice(7);
  const ofLayer = async (): Promise<number> => (await files(path.join(ctx.mount.cacheDir, 'files'))).filter((f) => f.startsWith(layerHex)).length;
  for (const f of bigFiles.slice(10, 13)) t.true((await fsp.readFile(path.join(ctx.rootfs, f.name))).equals(f.content));
  t.is(await ofLayer(), 3);
  t.true((await fsp.readFile(path.join(ctx.rootfs, bigFiles[0]!.name))).equals(bigFiles[0]!.content));
  t.is(await ofLayer(), bigFiles.length, 'a backward miss extracted the whole layer');
  for (const f of [...bigFiles].reverse()) t.true((await fsp.readFile(path.join(ctx.rootfs, f.name))).equals(f.content), f.name);
  t.deepEqual(ctx.built.map((b) => blobGets(b.digest)), before);
});

test.serial('after BlobCache.evict, rootfs files are extracted again (re-fetching the evicted blob) with the right bytes', async (t) => {
  const dir = path.join(await tempDir(t, 'regfs-lazy-cache-'), 'cache');
  const cache = await BlobCache.open(dir, { minFreeBytes: 0 });
  t.teardown(() => cache.close());
  const c = new RemoteRegistry(ctx.proxy.host, { retries: 1, baseDelayMs: 20, timeoutMs: 10_000 });
  t.teardown(() => c.close());
  const repo = c.repository('lazy/app');
  const m = (await repo.fetchManifest('v1')).manifest as ImageManifest;
  const layer = m.layers[1]!;
  const store = cache.layerTocs;
  const toc = await store.toc(layer.digest, 'gzip', async () => (await cache.openBlob(repo, layer, { cacheFirst: false })).stream);
  t.true(await cache.has(layer.digest), 'the TOC pass cached the blob');
  const entries = toc.entries.filter((e) => e.t === 'f');
  t.is(entries.length, bigFiles.length);
  const tocBytes = cache.stats().imageBytes;
  t.true(tocBytes > 0, 'the TOC is counted');
  // More forward misses than LAZY_MISSES: the rest of the layer is extracted at once.
  for (const e of entries.slice(0, LAZY_MISSES + 1)) {
    const file = await store.materialize(repo, layer, toc, e);
    t.true((await fsp.readFile(file)).equals(bigFiles.find((f) => f.name === e.p)!.content), e.p);
  }
  t.is(store.index.count, 1 + bigFiles.length);
  t.is(cache.stats().imageBytes, tocBytes + bigFiles.reduce((a, f) => a + f.content.length, 0));
  t.is(cache.stats().bytesOnDisk, cache.stats().imageBytes + layer.size);
  // Just-made files are kept for a moment (they are about to be opened); after that everything goes.
  await new Promise((r) => setTimeout(r, 2100));
  const r = await cache.evict({ maxSize: 0 });
  t.is(r.evicted, 2 + bigFiles.length);
  t.is(cache.stats().bytesOnDisk, 0);
  t.false(await cache.has(layer.digest));
  t.deepEqual(await files(path.join(dir, 'files')), []);
  const gets = blobGets(layer.digest);
  const last = entries[entries.length - 1]!;
  const again = await store.materialize(repo, layer, toc, last);
  t.true((await fsp.readFile(again)).equals(bigFiles.find((f) => f.name === last.p)!.content));
  t.is(blobGets(layer.digest), gets + 1, 'the evicted blob was fetched once more');
  t.is(store.index.count, 1);
});

test.serial('a blob cached by the TOC pass (written without fsync) is synced at close and listed verified', async (t) => {
  const dir = path.join(await tempDir(t, 'regfs-lazy-sync-'), 'cache');
  const cache = await BlobCache.open(dir, { minFreeBytes: 0 });
  const c = new RemoteRegistry(ctx.proxy.host, { retries: 1, baseDelayMs: 20, timeoutMs: 10_000 });
  t.teardown(() => c.close());
  const repo = c.repository('lazy/app');
  const layer = ((await repo.fetchManifest('v1')).manifest as ImageManifest).layers[2]!;
  await cache.layerTocs.toc(layer.digest, 'gzip', async () => (await cache.openBlob(repo, layer, { cacheFirst: false })).stream);
  await cache.close();
  const listed = JSON.parse(await fsp.readFile(path.join(dir, 'verified.json'), 'utf8')) as { blobs: Record<string, unknown> };
  t.truthy(listed.blobs[layer.digest]);
  // Reopened, the TOC is found on disk and the blob serves layers/ reads without a fetch.
  const again = await BlobCache.open(dir, { minFreeBytes: 0 });
  t.teardown(() => again.close());
  const gets = blobGets(layer.digest);
  const buf = Buffer.alloc(layer.size);
  t.is(await again.read(repo, layer, buf, 0, layer.size), layer.size);
  t.is(`sha256:${sha(buf)}`, layer.digest);
  t.is((await again.layerTocs.toc(layer.digest, 'gzip', () => Promise.reject(new Error('not stored')))).entries.length, 2);
  t.is(blobGets(layer.digest), gets);
});

test.serial('a layer streamed from the registry (not cached) publishes the wanted file only after its digest matched', async (t) => {
  const dir = await tempDir(t, 'regfs-lazy-nocache-');
  const filesDir = path.join(dir, 'files');
  // No blob cache: the store streams from the registry, as for a layer too large for the cache file system.
  const store = new LayerTocStore(path.join(dir, 'tocs'), filesDir);
  t.teardown(() => store.close());
  const c = new RemoteRegistry(ctx.proxy.host, { retries: 0, baseDelayMs: 20, timeoutMs: 10_000 });
  t.teardown(() => c.close());
  const repo = c.repository('lazy/app');
  const layer = ((await repo.fetchManifest('v1')).manifest as ImageManifest).layers[1]!;
  const toc = await store.toc(layer.digest, 'gzip', async () => (await store.blobs.openBlob(repo, layer, { cacheFirst: false })).stream);
  const first = toc.entries.find((e) => e.t === 'f')!;
  ctx.proxy.rules.push({ method: 'GET', path: new RegExp(`/blobs/${layer.digest}`), flipByteAt: Math.floor(layer.size * 0.9) });
  try {
    await t.throwsAsync(store.materialize(repo, layer, toc, first));
  } finally {
    ctx.proxy.rules.length = 0;
  }
  t.deepEqual(await files(filesDir), [], 'nothing published (and no temp file left) from a stream that did not match');
  const file = await store.materialize(repo, layer, toc, first);
  t.true((await fsp.readFile(file)).equals(bigFiles.find((f) => f.name === first.p)!.content));
  t.deepEqual(await files(filesDir), [`${layer.digest.slice(7)}/${first.o}`], 'only the wanted file, once the stream matched');
});

test.serial('a layer larger than the cache file system (64 MiB tmpfs) is streamed: rootfs lists it, its files read right, no blob is kept', async (t) => {
  const big = randomBytes(80 * 1024 * 1024);
  const layer = await tarLayer([{ name: 'big/', type: 'directory' }, { name: 'big/small', content: 'small\n' }, { name: 'big/data', content: big }, { name: 'big/after', content: 'after\n' }]);
  const base = await tempDir(t, 'regfs-lazy-big-');
  await writeOciImage(path.join(base, 'layout'), 'v1', [layer]);
  await skopeoPush(path.join(base, 'layout'), 'v1', ctx.reg.host, 'lazy/big:v1');
  const fsDir = path.join(base, 'tmpfs');
  await fsp.mkdir(fsDir);
  const mounted = await sh(`mount -t tmpfs -o size=64m tmpfs ${fsDir}`);
  t.is(mounted.code, 0, mounted.stderr);
  t.teardown(() => sh(`umount ${fsDir}`));
  const m = await startMount(t, ctx.reg.host, { cacheDir: path.join(fsDir, 'cache') });
  const rootfs = path.join(m.mnt, 'lazy/big/v1/rootfs');
  t.deepEqual((await fsp.readdir(path.join(rootfs, 'big'))).sort(), ['after', 'data', 'small']);
  t.is((await fsp.stat(path.join(rootfs, 'big/data'))).size, big.length);
  t.is(await fsp.readFile(path.join(rootfs, 'big/after'), 'utf8'), 'after\n');
  t.is(await fsp.readFile(path.join(rootfs, 'big/small'), 'utf8'), 'small\n');
  const du = await sh(`du -sb ${fsDir}/cache | cut -f1`);
  t.true(Number(du.stdout.trim()) < 4 * 1024 * 1024, `the cache keeps no blob: ${du.stdout}`);
  t.deepEqual(await fsp.readdir(path.join(fsDir, 'cache/blobs/sha256')), []);
  t.is(await m.stop(), 0);
});

test.serial('the tar reader finds GNU and pax long names and each file\'s data offset', async (t) => {
  const dir = await tempDir(t, 'regfs-lazy-tar-');
  const src = path.join(dir, 'src');
  const long = `${'d'.repeat(90)}/${'e'.repeat(90)}/${'f'.repeat(60)}`;
  await fsp.mkdir(path.join(src, long), { recursive: true });
  const content = new Map<string, Buffer>([
    [`${long}/data.bin`, randomBytes(3000)],
    ['short', Buffer.from('short\n')],
  ]);
  for (const [p, b] of content) await fsp.writeFile(path.join(src, p), b);
  await fsp.symlink(`../${'t'.repeat(150)}`, path.join(src, 'longlink'));
  for (const format of ['gnu', 'pax']) {
    const file = path.join(dir, `${format}.tar`);
    await exec('tar', ['-C', src, `--format=${format}`, '-cf', file, '.']);
    const raw = await fsp.readFile(file);
    const seen: TarHeader[] = [];
    await scanTar(new ByteCursor(createReadStream(file, { highWaterMark: 777 })[Symbol.asyncIterator]() as AsyncIterator<Buffer>), (h) => void seen.push(h));
    for (const [p, b] of content) {
      const h = seen.find((s) => s.name === `./${p}`);
      t.truthy(h, `${format}: ${p} found`);
      t.is(h!.size, b.length);
      t.true(raw.subarray(h!.offset, h!.offset + h!.size).equals(b), `${format}: data of ${p} at its offset`);
    }
    t.is(seen.find((s) => s.name === './longlink')?.linkname, `../${'t'.repeat(150)}`, format);
    t.truthy(seen.find((s) => s.name === `./${long}/` && s.type === 'directory'), `${format}: long directory name`);
  }
});

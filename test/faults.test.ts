/**
 * Faults and hostile input (issue 6): each test drives a real registry through the fault proxy (or a
 * real mount or daemon) into one failure and asserts the documented outcome. docs/guarantees.md maps
 * every promise to the test title here that proves it.
 */
import anyTest, { type ExecutionContext } from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { Readable } from 'node:stream';
import { BlobCache } from '../cache/blob-cache.js';
import type { Descriptor } from '../registry/descriptor.js';
import { digestOf } from '../registry/digest.js';
import { RegfsError } from '../util/errors.js';
import { EMPTY_CONFIG, MediaType } from '../registry/media-types.js';
import { RemoteRegistry } from '../registry/remote.js';
import { cliEnv, runCli, tempDir } from '../lab/cli.js';
import { startHeaderRecorder } from '../lab/blob-server.js';
import { startDaemon, waitFor, type StartedDaemon } from '../lab/daemon.js';
import { startFaultProxy, type FaultProxy } from '../lab/fault-proxy.js';
import { sh, startMount } from '../lab/mount.js';
import { startRegistry } from '../lab/registry.js';
import { tarGz, type TarEntry } from '../lab/tar-layer.js';

const MiB = 1024 * 1024;

/**
 * Every test here starts a registry and usually a mount or a daemon: at most 3 run at once (ava would
 * start all of them together), so a loaded 2-core machine keeps up with the harness deadlines.
 */
const SLOTS = { free: 3, waiting: [] as Array<() => void> };
function test(title: string, fn: (t: ExecutionContext) => Promise<void>): void {
  anyTest(title, async (t) => {
    if (SLOTS.free > 0) SLOTS.free--;
    else await new Promise<void>((resolve) => SLOTS.waiting.push(resolve));
    // Registered first, so it runs last: after the test's registries, mounts and daemons are stopped.
    t.teardown(() => {
      const next = SLOTS.waiting.shift();
      if (next) next();
      else SLOTS.free++;
    });
    await fn(t);
  });
}

const sha = (b: Buffer | string): string => createHash('sha256').update(b).digest('hex');
const config: Descriptor = { mediaType: EMPTY_CONFIG.mediaType, digest: EMPTY_CONFIG.digest, size: 2 };

/** pushLayers pushes blobs and a hand-made manifest with the library (no title checks), returning the layer descriptors. */
async function pushLayers(host: string, repo: string, tag: string, layers: Array<{ title?: string; data: Buffer; annotations?: Record<string, string>; mediaType?: string }>): Promise<Descriptor[]> {
  const client = new RemoteRegistry(host);
  try {
    const r = client.repository(repo);
    await r.pushBlob(config, () => Readable.from([Buffer.from('{}')]));
    const descs: Descriptor[] = [];
    for (const l of layers) {
      const annotations = { ...(l.title !== undefined ? { 'org.opencontainers.image.title': l.title } : {}), ...l.annotations };
      const d: Descriptor = { mediaType: l.mediaType ?? MediaType.ociLayerTar, digest: digestOf(l.data), size: l.data.length, annotations };
      await r.pushBlob(d, () => Readable.from([l.data]));
      descs.push(d);
    }
    const m = { schemaVersion: 2, mediaType: MediaType.ociManifest, artifactType: 'application/x.faults', config, layers: descs };
    await r.pushManifest(Buffer.from(JSON.stringify(m)), MediaType.ociManifest, [tag]);
    return descs;
  } finally {
    await client.close();
  }
}

/** listAll lists every file below dir (relative paths), or [] when dir is missing. */
async function listAll(dir: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (d: string, rel: string): Promise<void> => {
    let names: string[];
    try {
      names = await fsp.readdir(d);
    } catch {
      return;
    }
    for (const n of names) {
      const st = await fsp.lstat(path.join(d, n));
      if (st.isDirectory()) await walk(path.join(d, n), `${rel}${n}/`);
      else out.push(`${rel}${n}`);
    }
  };
  await walk(dir, '');
  return out.sort();
}

/** eventually polls a condition on a child's collected output (which may lag behind what the child did) for up to 10 s. */
async function eventually(fn: () => boolean, ms = 10_000): Promise<boolean> {
  for (const until = Date.now() + ms; !fn(); await new Promise((r) => setTimeout(r, 100))) if (Date.now() > until) return false;
  return true;
}

function isCode(err: unknown, ...codes: string[]): boolean {
  return err instanceof RegfsError && codes.includes(err.code);
}

async function client(t: ExecutionContext, proxy: FaultProxy): Promise<RemoteRegistry> {
  const c = new RemoteRegistry(proxy.host, { retries: 1, baseDelayMs: 20, timeoutMs: 10_000 });
  t.teardown(() => c.close());
  return c;
}

// ---------------------------------------------------------------------------------------------
// case 1: wrong digest

test('a blob served with wrong bytes reads as EIO through the mount, nothing is cached, and a log line names both digests', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const proxy = await startFaultProxy(t, reg.url);
  const small = randomBytes(100_000);
  const large = randomBytes(6 * MiB + 5);
  const [ds, dl] = await pushLayers(reg.host, 'wrong/digest', 'v1', [{ title: 'small.bin', data: small }, { title: 'large.bin', data: large }]);
  const m = await startMount(t, proxy.host);
  for (const [name, d] of [['small.bin', ds!], ['large.bin', dl!]] as const) {
    // One corrupt answer: byte 3 of the first (whole or range) GET of the blob flipped.
    proxy.rules.push({ method: 'GET', path: new RegExp(`/blobs/${d.digest}$`), flipByteAt: 3, times: 1 });
    const r = await sh(`cat ${m.mnt}/wrong/digest/v1/${name} > /dev/null`);
    t.not(r.code, 0, name);
    t.regex(r.stderr, /Input\/output error/, name);
    // Both digests on one line: the expected one and what the bytes hashed to (which byte of which
    // range was flipped depends on the kernel's read pattern, so the actual digest is not known here).
    const naming = (): string[] =>
      m.logs().split('\n').filter((l) => l.includes(d.digest) && new Set(l.match(/sha256:[a-f0-9]{64}/g)).size === 2);
    t.true(await eventually(() => naming().some((l) => l.includes(` read /wrong/digest/v1/${name}: `))), `${name}: no log line names both digests:\n${m.logs()}`);
    // Reads during the back-off fail the same way, without a log line each.
    const before = naming().length;
    for (let i = 0; i < 3; i++) t.regex((await sh(`cat ${m.mnt}/wrong/digest/v1/${name} > /dev/null`)).stderr, /Input\/output error/);
    t.is(naming().length, before, `${name}: repeated failures are not logged again`);
  }
  t.deepEqual(await listAll(path.join(m.cacheDir, 'blobs')), [], 'nothing in blobs/');
  t.deepEqual(await listAll(path.join(m.cacheDir, 'ingest')), [], 'no temp file left in ingest/');
  t.deepEqual(await listAll(path.join(m.cacheDir, 'partial')), [], 'no partial data kept');
});

// ---------------------------------------------------------------------------------------------
// case 3: Content-Length and trailing bytes

test('a Content-Length other than the descriptor size, or trailing bytes, is rejected before anything is cached', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const proxy = await startFaultProxy(t, reg.url);
  const small = randomBytes(200_000);
  const large = randomBytes(9 * MiB);
  const [ds, dl] = await pushLayers(reg.host, 'length/lies', 'v1', [{ title: 's', data: small }, { title: 'l', data: large }]);
  const c = await client(t, proxy);
  const repo = c.repository('length/lies');
  const dir = path.join(await tempDir(t), 'cache');
  const cache = await BlobCache.open(dir, { minFreeBytes: 0, mismatchBackoffMs: 0 });
  t.teardown(() => cache.close());
  const faults = [
    { name: 'Content-Length larger, with trailing bytes', rule: { appendBytes: 100 } },
    { name: 'trailing bytes, chunked (no Content-Length)', rule: { appendBytes: 100, chunked: true } },
    { name: 'Content-Length shorter than the blob', rule: { wrongContentLength: 1000 } },
    { name: 'Content-Length longer than what is sent', rule: { wrongContentLength: 10 * MiB } },
  ];
  for (const f of faults) {
    for (const [d, data] of [[ds!, small], [dl!, large]] as const) {
      proxy.rules.length = 0;
      proxy.rules.push({ method: 'GET', path: /\/blobs\//, ...f.rule });
      const buf = Buffer.alloc(data.length);
      let err: unknown;
      try {
        // Read the whole blob in 1 MiB reads, as cat would: the read that completes it must fail.
        for (let off = 0; off < data.length; off += MiB) await cache.read(repo, d, buf.subarray(off), off, Math.min(MiB, data.length - off));
      } catch (e) {
        err = e;
      }
      t.true(isCode(err, 'SIZE_MISMATCH'), `${f.name}, ${data.length} bytes: ${String(err)}`);
      t.false(await cache.has(d.digest), `${f.name}: not cached`);
      t.deepEqual(await listAll(path.join(dir, 'blobs')), [], f.name);
      t.deepEqual(await listAll(path.join(dir, 'ingest')), [], f.name);
      await cache.evict({ maxSize: 0 });
    }
  }
  // The same blobs through an honest proxy are cached and exact.
  proxy.rules.length = 0;
  t.true((await fsp.readFile(await cache.ensureBlob(repo, ds!))).equals(small));
  const got = Buffer.alloc(large.length);
  for (let off = 0; off < large.length; off += MiB) await cache.read(repo, dl!, got.subarray(off), off, Math.min(MiB, large.length - off));
  t.true(got.equals(large));
});

// ---------------------------------------------------------------------------------------------
// case 4: manifest and list caps

test('a manifest over 4 MiB or an endless body is aborted at the cap, with bounded transfer and memory', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const proxy = await startFaultProxy(t, reg.url);
  await pushLayers(reg.host, 'huge/manifest', 'v1', [{ title: 'f', data: Buffer.from('x') }]);
  const c = await client(t, proxy);
  const repo = c.repository('huge/manifest');
  const big = Buffer.alloc(5 * MiB, 0x20);
  const cases = [
    { name: 'declared 5 MiB', rule: { replaceBody: big } },
    { name: 'chunked 5 MiB', rule: { replaceBody: big, chunked: true } },
    { name: 'endless chunked body', rule: { endlessBody: true } },
  ];
  for (const k of cases) {
    proxy.rules.length = 0;
    proxy.reset();
    proxy.rules.push({ method: 'GET', path: /\/manifests\//, ...k.rule });
    const err = await t.throwsAsync(repo.fetchManifest('v1'));
    t.true(isCode(err, 'TOO_LARGE'), `${k.name}: ${String(err)}`);
    t.regex(err!.message, /4194304-byte manifest limit/);
    // The client stopped reading near the cap (what is in flight in socket buffers aside).
    t.true(proxy.bytesOut() < 32 * MiB, `${k.name}: the proxy sent ${proxy.bytesOut()} bytes`);
  }
  proxy.rules.length = 0;
  proxy.rules.push({ method: 'GET', path: /\/tags\/list/, endlessBody: true });
  t.true(isCode(await t.throwsAsync(repo.listTags()), 'TOO_LARGE'), 'an endless tag list');
  // Through a mount: the tag directory fails with EIO, and the mount process stays small.
  proxy.rules.length = 0;
  proxy.rules.push({ method: 'GET', path: /\/manifests\//, endlessBody: true });
  const m = await startMount(t, proxy.host);
  for (let i = 0; i < 3; i++) t.regex((await sh(`ls ${m.mnt}/huge/manifest/v1`)).stderr, /Input\/output error/);
  const hwm = Number(/VmHWM:\s+(\d+)/.exec(await fsp.readFile(`/proc/${m.child.pid}/status`, 'utf8'))?.[1]);
  t.log(`mount peak RSS after 3 endless manifests: ${Math.round(hwm / 1024)} MiB`);
  t.true(hwm < 300 * 1024, `peak RSS ${hwm} KiB`);
});

// ---------------------------------------------------------------------------------------------
// cases 5 and 6: hostile descriptors and ambiguous manifests

test('hostile descriptors and ambiguous manifests from the registry are rejected before any path or URL is built from them', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const proxy = await startFaultProxy(t, reg.url);
  await pushLayers(reg.host, 'hostile/desc', 'v1', [{ title: 'f', data: Buffer.from('fine') }]);
  const good = { mediaType: MediaType.ociLayerTar, digest: digestOf('fine'), size: 4, annotations: { 'org.opencontainers.image.title': 'f' } };
  const manifest = (layer: Record<string, unknown>, extra: Record<string, unknown> = {}): Buffer =>
    Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MediaType.ociManifest, config, layers: [layer], ...extra }));
  const hostile: Array<[string, Buffer, string?]> = [
    ['negative size', manifest({ ...good, size: -1 })],
    ['fractional size', manifest({ ...good, size: 1.5 })],
    ['huge size', manifest({ ...good, size: 2 ** 60 })],
    ['size as a string', manifest({ ...good, size: '4' })],
    ['digest sha256:../../x', manifest({ ...good, digest: 'sha256:../../x' })],
    ['uppercase hex', manifest({ ...good, digest: 'sha256:' + sha('fine').toUpperCase() })],
    ['wrong length', manifest({ ...good, digest: 'sha256:' + sha('fine').slice(0, 63) })],
    ['unknown algorithm', manifest({ ...good, digest: 'md5:' + sha('fine').slice(0, 32) })],
    ['both layers and manifests', manifest(good, { manifests: [] })],
    ['mediaType contradicting Content-Type', manifest(good), MediaType.ociIndex],
  ];
  const c = await client(t, proxy);
  const repo = c.repository('hostile/desc');
  const m = await startMount(t, proxy.host, { args: ['--metadata-ttl', '0'] });
  for (const [name, body, contentType] of hostile) {
    proxy.rules.length = 0;
    proxy.rules.push({ method: 'GET', path: /\/manifests\/v1$/, replaceBody: body, setHeaders: { 'docker-content-digest': digestOf(body), ...(contentType ? { 'content-type': contentType } : {}) } });
    proxy.reset();
    const err = await t.throwsAsync(repo.fetchManifest('v1'));
    t.true(isCode(err, 'INVALID_MANIFEST', 'INVALID_DIGEST'), `${name}: ${String(err)}`);
    const r = await sh(`ls ${m.mnt}/hostile/desc/v1; cat ${m.mnt}/hostile/desc/v1/f`);
    t.not(r.code, 0, name);
    t.regex(r.stderr, /Input\/output error/, name);
    t.deepEqual(proxy.requests.filter((q) => !/\/manifests\/v1$|\/tags\/list|\/_catalog/.test(q.path)).map((q) => `${q.method} ${q.path}`), [], `${name}: no other request was made`);
  }
  // The genuine manifest still works afterwards.
  proxy.rules.length = 0;
  t.is((await sh(`cat ${m.mnt}/hostile/desc/v1/f`)).stdout, 'fine');
});

// ---------------------------------------------------------------------------------------------
// case 7: hostile titles and tar layers

test('hostile titles and tar layers never escape the mount, the pull directory or the cache', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const { env } = await cliEnv(t);
  const base = await tempDir(t);
  const outside = path.join(base, 'outside');
  await fsp.mkdir(outside);
  await fsp.writeFile(path.join(outside, 'victim'), 'untouched');
  const dirLayer = async (title: string, entries: TarEntry[]): Promise<{ title: string; data: Buffer; mediaType: string; annotations: Record<string, string> }> => ({
    title,
    data: await tarGz(entries),
    mediaType: MediaType.ociLayerTarGzip,
    annotations: { 'io.deis.oras.content.unpack': 'true' },
  });
  const victim = path.join(outside, 'victim');
  const layers = [
    { title: 'good.txt', data: Buffer.from('good') },
    { title: '', data: Buffer.from('empty title') },
    { title: '.', data: Buffer.from('dot') },
    { title: '..', data: Buffer.from('dotdot') },
    { title: 'a\u0000b', data: Buffer.from('nul') },
    { title: 'back\\slash', data: Buffer.from('backslash') },
    { title: 'x'.repeat(300), data: Buffer.from('too long') },
    await dirLayer('gooddir', [{ name: 'gooddir/', type: 'directory' }, { name: 'gooddir/in.txt', content: 'inside' }, { name: 'gooddir/rel', type: 'symlink', linkname: 'in.txt' }]),
    await dirLayer('symdir', [{ name: 'symdir/', type: 'directory' }, { name: 'symdir/link', type: 'symlink', linkname: outside }, { name: 'symdir/link/victim', content: 'pwned' }]),
    await dirLayer('hardlink', [{ name: 'hardlink/', type: 'directory' }, { name: 'hardlink/h', type: 'link', linkname: victim }]),
    await dirLayer('updir', [{ name: 'updir/', type: 'directory' }, { name: 'updir/up', type: 'symlink', linkname: '../../../..' }]),
    await dirLayer('dotdot', [{ name: 'dotdot/', type: 'directory' }, { name: 'dotdot/../../escaped', content: 'pwned' }]),
  ];
  await pushLayers(reg.host, 'hostile/titles', 'v1', layers);
  const m = await startMount(t, reg.host);
  const v1 = path.join(m.mnt, 'hostile/titles/v1');
  // Only the safe names are shown; every hidden layer is logged with its reason.
  t.deepEqual((await fsp.readdir(v1)).sort(), ['dotdot', 'good.txt', 'gooddir', 'hardlink', 'symdir', 'updir']);
  for (const re of [/hiding layer .*empty path/, /hiding layer .*refers to '\.'/, /hiding layer .*'\.\.' segment/, /hiding layer .*NUL or control/, /hiding layer .*backslash/, /hiding layer .*255 bytes/]) {
    t.true(await eventually(() => re.test(m.logs())), `${re}:\n${m.logs()}`);
  }
  t.is(await fsp.readFile(path.join(v1, 'good.txt'), 'utf8'), 'good');
  t.is(await fsp.readFile(path.join(v1, 'gooddir/in.txt'), 'utf8'), 'inside');
  t.is(await fsp.readlink(path.join(v1, 'gooddir/rel')), 'in.txt');
  // In a directory layer an escaping symlink, hard link or `..` entry is hidden (logged once), the rest shown.
  const shown: Record<string, string[]> = { symdir: ['link'], hardlink: [], updir: [], dotdot: [] };
  for (const [d, names] of Object.entries(shown)) t.deepEqual((await fsp.readdir(path.join(v1, d))).sort(), names, d);
  // symdir/link was hidden, so `symdir/link/victim` landed in a real directory of the layer, not through the link.
  t.true((await fsp.lstat(path.join(v1, 'symdir/link'))).isDirectory());
  for (const name of ['symdir/link', 'hardlink/h', 'updir/up', 'dotdot/../../escaped']) {
    t.true(await eventually(() => m.logs().split('\n').filter((l) => l.includes(`hiding tar entry ${JSON.stringify(name)}`)).length === 1), `${name}:\n${m.logs()}`);
  }
  // Nothing was written outside; the only symlink extracted is gooddir's own.
  t.deepEqual(await fsp.readdir(outside), ['victim']);
  t.is(await fsp.readFile(victim, 'utf8'), 'untouched');
  const links = await sh(`find ${m.cacheDir}/extracted -type l -printf '%P -> %l\\n'`);
  const gooddir = layers.find((l) => l.title === 'gooddir')!;
  t.deepEqual(links.stdout.trim().split('\n'), [`${sha(gooddir.data)}/rel -> in.txt`]);
  t.deepEqual((await fsp.readdir(m.cacheDir)).sort(), ['blobs', 'extracted', 'files', 'ingest', 'lock', 'partial', 'tocs']);

  // pull: the first unsafe title stops the pull before anything is written.
  const out = path.join(base, 'pulled');
  const pull = await runCli(['pull', `${reg.host}/hostile/titles:v1`, '-o', out], { env });
  t.is(pull.code, 1, pull.stderr);
  t.regex(pull.stderr, /unsafe path/);
  t.is(pull.stderr.trim().split('\n').length, 1);
  await t.throwsAsync(fsp.access(out));
  // A directory layer with an escaping entry fails its pull; nothing lands outside the output directory.
  for (const d of ['symdir', 'hardlink', 'updir', 'dotdot']) {
    const one = layers.find((l) => l.title === d)!;
    await pushLayers(reg.host, 'hostile/onedir', d, [one]);
    const o = path.join(base, `pull-${d}`);
    const r = await runCli(['pull', `${reg.host}/hostile/onedir:${d}`, '-o', o], { env });
    t.is(r.code, 1, `${d}: ${r.stderr}`);
    t.regex(r.stderr, /unsafe (path|tar entry)/, d);
    t.deepEqual(await listAll(o), [], `${d}: nothing extracted`);
  }
  t.deepEqual(await fsp.readdir(outside), ['victim']);
  t.is(await fsp.readFile(victim, 'utf8'), 'untouched');
  t.true((await fsp.readdir(base)).every((n) => n === 'outside' || n.startsWith('pull-')), 'nothing created beside the output directories');
});

// ---------------------------------------------------------------------------------------------
// case 11: a registry that accepts connections and never answers

test('a registry that never answers: an uncached read fails with EIO at the mount deadline while cached files and listings keep working', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const proxy = await startFaultProxy(t, reg.url);
  await pushLayers(reg.host, 'silent/app', 'v1', [{ title: 'cached.txt', data: Buffer.from('I am cached') }, { title: 'uncached.bin', data: randomBytes(300_000) }]);
  const m = await startMount(t, proxy.host, { args: ['--metadata-ttl', '600'] });
  const v1 = path.join(m.mnt, 'silent/app/v1');
  t.is(await fsp.readFile(path.join(v1, 'cached.txt'), 'utf8'), 'I am cached');
  t.deepEqual((await fsp.readdir(v1)).sort(), ['cached.txt', 'uncached.bin']);
  // From now on every request is accepted and never answered.
  proxy.rules.push({ stall: true });
  proxy.reset();
  const started = Date.now();
  // The bound is the shell's timeout (45 s), below fuse-native's own 60 s operation timeout: only
  // regfs's deadline (8 s per attempt, 2 attempts) can produce the EIO asserted below.
  const stalled = sh(`cat ${v1}/uncached.bin > /dev/null`, { timeoutMs: 45_000 });
  await waitFor(async () => proxy.count('GET', /\/blobs\//) > 0, 20_000, 'the blob request to be stalled');
  // Meanwhile, cached files and listings answer.
  t.is((await sh(`cat ${v1}/cached.txt`, { timeoutMs: 10_000 })).stdout, 'I am cached');
  t.is((await sh(`ls ${m.mnt}/silent/app`, { timeoutMs: 10_000 })).stdout.trim(), 'v1');
  t.is((await sh(`ls ${v1}`, { timeoutMs: 10_000 })).stdout.trim().split('\n').sort().join(','), 'cached.txt,uncached.bin');
  const r = await stalled;
  t.log(`uncached read failed after ${Date.now() - started} ms`);
  t.regex(r.stderr, /Input\/output error/);
  t.true(await eventually(() => /did not answer in time/.test(m.logs())), m.logs());
  // Two attempts of 8 s (the mount's retry budget), and no second round for the kernel's retry of the read.
  t.is(proxy.count('GET', /\/blobs\//), 2);
});

// ---------------------------------------------------------------------------------------------
// case 12: 503/429 with Retry-After

/** retryGap returns the ms between the first request matching (method, re) answered `status` and its retry (same path). */
function retryGap(proxy: FaultProxy, method: string, re: RegExp, status: number): number {
  const failed = proxy.requests.find((r) => r.method === method && re.test(r.path) && r.status === status);
  const retry = failed && proxy.requests.find((r) => r !== failed && r.time >= failed.time && r.method === method && r.path === failed.path && r.status !== status);
  if (!failed || !retry) throw new Error(`no retry of ${method} ${re} after ${status}`);
  return retry.time - failed.time;
}

test('503 and 429 with Retry-After during push, pull and a mount read are waited out, then succeed; a long Retry-After fails at once', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const proxy = await startFaultProxy(t, reg.url);
  const { env } = await cliEnv(t);
  const src = await tempDir(t);
  const data = randomBytes(50_000);
  await fsp.writeFile(path.join(src, 'r.bin'), data);
  await fsp.writeFile(path.join(src, 'other.bin'), randomBytes(40_000));
  proxy.rules.push(
    { method: 'HEAD', path: /\/blobs\//, status: 429, headers: { 'Retry-After': '1' }, times: 1 },
    { method: 'POST', path: /\/blobs\/uploads\/$/, status: 503, headers: { 'Retry-After': '1' }, times: 1 },
    { method: 'PUT', path: /\/manifests\//, status: 503, headers: { 'Retry-After': '2' }, times: 1 },
  );
  // One blob at a time, so the request after a refused one is its retry.
  const push = await runCli(['push', `${proxy.host}/retry/after:v1`, 'r.bin', 'other.bin', '--concurrency', '1'], { cwd: src, env });
  t.is(push.code, 0, push.stderr);
  t.true(retryGap(proxy, 'HEAD', /\/blobs\//, 429) >= 990, 'HEAD waited 1 s');
  t.true(retryGap(proxy, 'POST', /\/blobs\/uploads\/$/, 503) >= 990, 'POST waited 1 s');
  t.true(retryGap(proxy, 'PUT', /\/manifests\//, 503) >= 1990, 'manifest PUT waited 2 s');

  proxy.reset();
  proxy.rules.push(
    { method: 'GET', path: /\/manifests\//, status: 503, headers: { 'Retry-After': '1' }, times: 1 },
    { method: 'GET', path: /\/blobs\/sha256:/, status: 429, headers: { 'Retry-After': '1' }, times: 1 },
  );
  const out = await tempDir(t);
  const pull = await runCli(['pull', `${proxy.host}/retry/after:v1`, '-o', out], { env });
  t.is(pull.code, 0, pull.stderr);
  t.true((await fsp.readFile(path.join(out, 'r.bin'))).equals(data));
  t.true(retryGap(proxy, 'GET', /\/manifests\//, 503) >= 990);
  t.true(retryGap(proxy, 'GET', /\/blobs\/sha256:/, 429) >= 990);

  // Through a mount: a 503 with Retry-After 1 is waited out; a Retry-After beyond the mount's 10 s
  // retry budget is not waited for: the read fails at once with EIO and the registry is asked once.
  const m = await startMount(t, proxy.host);
  proxy.reset();
  proxy.rules.push({ method: 'GET', path: new RegExp(`/blobs/${digestOf(data)}$`), status: 503, headers: { 'Retry-After': '1' }, times: 1 });
  t.is((await sh(`cmp ${m.mnt}/retry/after/v1/r.bin ${src}/r.bin`)).code, 0);
  t.true(retryGap(proxy, 'GET', /\/blobs\/sha256:/, 503) >= 990);
  const other = digestOf(await fsp.readFile(path.join(src, 'other.bin')));
  proxy.rules.push({ method: 'GET', path: new RegExp(`/blobs/${other}$`), status: 429, headers: { 'Retry-After': '3600' } });
  const r = await sh(`cat ${m.mnt}/retry/after/v1/other.bin > /dev/null`, { timeoutMs: 30_000 });
  t.regex(r.stderr, /Input\/output error/);
  t.is(proxy.count('GET', new RegExp(`/blobs/${other}$`)), 1);
  t.true(await eventually(() => /rate limited by the registry/.test(m.logs())), m.logs());
});

// ---------------------------------------------------------------------------------------------
// case 14: redirects

test('a blob redirect to another origin carries no credentials or cookies; an https to http redirect is refused', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const proxy = await startFaultProxy(t, reg.url);
  const { env, configDir } = await cliEnv(t);
  const src = await tempDir(t);
  await fsp.writeFile(path.join(src, 'f.txt'), 'redirected bytes');
  t.is((await runCli(['push', `${reg.host}/redir/app:v1`, 'f.txt'], { cwd: src, env })).code, 0);
  const password = 'redirect-secret-' + randomBytes(6).toString('hex');
  const basic = Buffer.from(`someone:${password}`).toString('base64');
  await fsp.writeFile(path.join(configDir, 'config.json'), JSON.stringify({ auths: { [proxy.host]: { auth: basic } } }));
  const store = await startHeaderRecorder(t, reg.url);
  // The registry asks for Basic auth once (so the client holds credentials) and sets a cookie on every answer.
  proxy.rules.push(
    { method: 'GET', path: /\/manifests\//, status: 401, headers: { 'WWW-Authenticate': 'Basic realm="r"', 'Set-Cookie': 'session=registry-cookie' }, times: 1 },
    { method: 'GET', path: /\/blobs\/sha256:/, redirectTo: store.url },
    { setHeaders: { 'set-cookie': 'session=registry-cookie' } },
  );
  const out = await tempDir(t);
  const pull = await runCli(['pull', `${proxy.host}/redir/app:v1`, '-o', out, '--debug'], { env });
  t.is(pull.code, 0, pull.stderr);
  t.is(await fsp.readFile(path.join(out, 'f.txt'), 'utf8'), 'redirected bytes');
  t.true(store.requests.length >= 1, 'the blob came from the other origin');
  for (const r of store.requests) {
    t.deepEqual(Object.keys(r.headers).filter((h) => /auth|cookie|token|session/i.test(h)), [], `${r.path}: ${JSON.stringify(r.headers)}`);
    t.false(JSON.stringify(r.headers).includes(basic) || JSON.stringify(r.headers).includes(password));
  }
  t.true(proxy.requests.some((r) => r.headers.authorization === `Basic ${basic}`), 'the registry itself got the credentials');
  t.false((pull.stdout + pull.stderr).includes(password) || (pull.stdout + pull.stderr).includes(basic), 'no credential in the debug output');

  // https -> http: a TLS "registry" (self-signed for 127.0.0.1) that redirects every blob to plain http.
  const dir = await tempDir(t);
  const key = path.join(dir, 'key.pem');
  const cert = path.join(dir, 'cert.pem');
  const gen = await sh(`openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 -keyout ${key} -out ${cert}`);
  t.is(gen.code, 0, gen.stderr);
  const tls = https.createServer({ key: await fsp.readFile(key), cert: await fsp.readFile(cert) }, (req, res) => {
    req.resume();
    if (req.url === '/v2/') return res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
    res.writeHead(307, { location: `${store.url}${req.url}` }).end();
  });
  await new Promise<void>((resolve) => tls.listen(0, '127.0.0.1', resolve));
  t.teardown(() => new Promise<void>((resolve) => (tls.closeAllConnections(), tls.close(() => resolve()))));
  const tlsHost = `127.0.0.1:${(tls.address() as AddressInfo).port}`;
  store.requests.length = 0;
  const digest = digestOf('redirected bytes');
  const blobOut = path.join(dir, 'blob');
  const r = await runCli(['blob', 'fetch', `${tlsHost}/redir/app@${digest}`, '-o', blobOut, '--ca-file', cert], { env });
  t.is(r.code, 1, r.stderr);
  t.regex(r.stderr, /refusing redirect from https to http:/);
  t.is(r.stderr.trim().split('\n').length, 1);
  t.deepEqual(store.requests, [], 'nothing went to the plain-http origin');
  await t.throwsAsync(fsp.access(blobOut));
});

// ---------------------------------------------------------------------------------------------
// case 8: planted symlinks and unsafe permissions

/** daemonRefuses starts a daemon expected to fail at start; returns its exit code and output. */
async function daemonRefuses(t: ExecutionContext, source: string, dirs: Partial<StartedDaemon['dirs']>): Promise<{ code: number | null; logs: string }> {
  const d = await startDaemon(t, { source, dirs, waitReady: false, staging: false });
  await waitFor(async () => d.child.exitCode !== null && d.child.stderr!.readableEnded, 20_000, 'the daemon to refuse to start');
  return { code: d.child.exitCode, logs: d.logs() };
}

test('a group- or world-writable cache root, or a symlinked cache or state directory, stops the daemon at start with a clear error, the target untouched', async (t) => {
  const { env } = await cliEnv(t);
  const src = await tempDir(t);
  await fsp.writeFile(path.join(src, 'f.txt'), 'layout');
  const store = await tempDir(t);
  t.is((await runCli(['push', `oci:${store}/app:v1`, 'f.txt'], { cwd: src, env })).code, 0);
  const source = `oci:${store}`;
  const base = await tempDir(t, 'regfs-unsafe-');
  const outside = path.join(base, 'outside');
  await fsp.mkdir(outside, { mode: 0o755 });
  await fsp.chmod(outside, 0o755);
  const fresh = (name: string): { mnt: string; cache: string; state: string; socket: string } => ({
    mnt: path.join(base, name, 'mnt'),
    cache: path.join(base, name, 'cache'),
    state: path.join(base, name, 'state'),
    socket: path.join(base, name, 'run/control.sock'),
  });
  for (const mode of [0o770, 0o707, 0o777]) {
    const dirs = fresh(`mode${mode.toString(8)}`);
    await fsp.mkdir(dirs.cache, { recursive: true });
    await fsp.chmod(dirs.cache, mode);
    const r = await daemonRefuses(t, source, dirs);
    t.not(r.code, 0);
    const shown = mode.toString(8).padStart(4, '0');
    t.true(r.logs.includes(`cache directory ${dirs.cache} is group- or world-writable (mode ${shown}); run \`chmod 700 ${dirs.cache}\``), r.logs);
    t.is(r.logs.trim().split('\n').length, 1, r.logs);
    t.is((await fsp.stat(dirs.cache)).mode & 0o777, mode, 'left as it was');
  }
  // Symlinks where the cache root, a cache subdirectory, the state directory or its queue should be.
  const plants: Array<[string, (d: ReturnType<typeof fresh>) => string, RegExp]> = [
    ['cache root', (d) => d.cache, /cache directory .* is a symlink/],
    ['blobs/sha256', (d) => path.join(d.cache, 'blobs/sha256'), /cache directory .*blobs\/sha256 is a symlink/],
    ['extracted', (d) => path.join(d.cache, 'extracted'), /cache directory .*extracted is a symlink/],
    ['state directory', (d) => d.state, /state directory .* is a symlink/],
    ['state queue', (d) => path.join(d.state, 'queue'), /state directory .*queue is a symlink/],
  ];
  for (const [name, where, re] of plants) {
    const dirs = fresh(name.replace(/\W/g, '-'));
    const link = where(dirs);
    await fsp.mkdir(path.dirname(link), { recursive: true, mode: 0o700 });
    await fsp.symlink(outside, link);
    const r = await daemonRefuses(t, source, dirs);
    t.not(r.code, 0, name);
    t.regex(r.logs, re, name);
    t.deepEqual(await fsp.readdir(outside), [], `${name}: nothing created through the link`);
    t.is((await fsp.stat(outside)).mode & 0o777, 0o755, `${name}: the target's mode is untouched`);
  }
});

test('symlinks planted in the cache (blob, partial data, range map, ingest, extracted) are never followed: content is fetched again, the targets stay untouched', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const small = randomBytes(50_000);
  const large = randomBytes(6 * MiB);
  const dirData = await tarGz([{ name: 'tree/', type: 'directory' }, { name: 'tree/in.txt', content: 'inside the layer' }]);
  const [ds, dl, dd] = await pushLayers(reg.host, 'planted/app', 'v1', [
    { title: 's.bin', data: small },
    { title: 'l.bin', data: large },
    { title: 'tree', data: dirData, mediaType: MediaType.ociLayerTarGzip, annotations: { 'io.deis.oras.content.unpack': 'true' } },
  ]);
  const base = await tempDir(t);
  const cacheDir = path.join(base, 'cache');
  // A first mount fills the cache layout.
  let m = await startMount(t, reg.host, { cacheDir });
  t.is((await sh(`cat ${m.mnt}/planted/app/v1/tree/in.txt`)).stdout, 'inside the layer');
  await m.stop();
  // Outside victims: a file per kind of link, and a directory posing as an extracted layer.
  const outside = path.join(base, 'outside');
  await fsp.mkdir(path.join(outside, 'fake-layer'), { recursive: true });
  await fsp.writeFile(path.join(outside, 'fake-layer', '.regfs-complete'), '');
  await fsp.writeFile(path.join(outside, 'fake-layer', 'in.txt'), 'served from outside');
  const victims: Record<string, string> = {};
  for (const v of ['blob', 'partial', 'map', 'ingest']) {
    victims[v] = path.join(outside, v);
    await fsp.writeFile(victims[v]!, `victim ${v}`, { mode: 0o640 });
  }
  const hex = (d: Descriptor): string => d.digest.slice('sha256:'.length);
  await fsp.symlink(victims.blob!, path.join(cacheDir, 'blobs/sha256', hex(ds!)));
  await fsp.symlink(victims.partial!, path.join(cacheDir, 'partial', hex(dl!)));
  await fsp.symlink(victims.map!, path.join(cacheDir, 'partial', `${hex(dl!)}.ranges.json`));
  await fsp.symlink(victims.ingest!, path.join(cacheDir, 'ingest', `${hex(ds!)}.aaaaaaaaaaaa`));
  await fsp.rm(path.join(cacheDir, 'extracted', hex(dd!)), { recursive: true });
  await fsp.symlink(path.join(outside, 'fake-layer'), path.join(cacheDir, 'extracted', hex(dd!)));
  const snapshot = async (): Promise<string> => JSON.stringify(await Promise.all((await listAll(outside)).map(async (f) => [f, await fsp.readFile(path.join(outside, f), 'utf8'), (await fsp.stat(path.join(outside, f))).mode])));
  const before = await snapshot();

  m = await startMount(t, reg.host, { cacheDir });
  const v1 = path.join(m.mnt, 'planted/app/v1');
  t.true((await fsp.readFile(path.join(v1, 's.bin'))).equals(small));
  t.true((await fsp.readFile(path.join(v1, 'l.bin'))).equals(large));
  t.is(await fsp.readFile(path.join(v1, 'tree/in.txt'), 'utf8'), 'inside the layer');
  t.is(await snapshot(), before, 'no target was written, truncated or chmodded');
  // The planted links are gone (replaced by verified content) or were never used.
  for (const p of [path.join(cacheDir, 'blobs/sha256', hex(ds!)), path.join(cacheDir, 'extracted', hex(dd!))]) t.false((await fsp.lstat(p)).isSymbolicLink(), p);
  t.deepEqual(await fsp.readdir(path.join(cacheDir, 'ingest')), []);
});

// ---------------------------------------------------------------------------------------------
// case 10: ENOSPC

test('a full cache filesystem (8 MiB tmpfs): reads stream through with the right bytes, nothing is kept, the daemon stays up and caches again when space returns', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const small = randomBytes(2 * MiB);
  const large = randomBytes(6 * MiB);
  const later = randomBytes(5 * MiB);
  await pushLayers(reg.host, 'full/disk', 'v1', [{ title: 'small.bin', data: small }, { title: 'large.bin', data: large }, { title: 'later.bin', data: later }]);
  const base = await tempDir(t);
  const fs = path.join(base, 'tmpfs');
  await fsp.mkdir(fs);
  const mounted = await sh(`mount -t tmpfs -o size=8m tmpfs ${fs}`);
  t.is(mounted.code, 0, mounted.stderr);
  t.teardown(() => sh(`umount ${fs}`));
  // Fill the filesystem but ~512 KiB, with a file that is not the cache's to evict.
  const filler = path.join(fs, 'filler');
  await sh(`head -c ${8 * MiB - 512 * 1024} /dev/zero > ${filler}`);
  // minFreeBytes 0: no eviction for free space, so the cache itself must clean up after ENOSPC.
  const cfg = path.join(base, 'config.json');
  await fsp.writeFile(cfg, JSON.stringify({ minFreeBytes: 0 }));
  const d = await startDaemon(t, { source: reg.host, staging: false, dirs: { base, cache: path.join(fs, 'cache') }, args: ['--config', cfg] });
  const v1 = path.join(d.dirs.mnt, 'full/disk/v1');
  // Neither blob fits: both are read through from the registry (the small one verified before serving).
  for (const [f, data] of [['small.bin', small], ['large.bin', large]] as const) {
    t.true((await fsp.readFile(path.join(v1, f))).equals(data), f);
  }
  t.is(d.logs().split('\n').filter((l) => /streaming it from the registry/.test(l)).length, 2, d.logs());
  // No half-written file is left behind to take the space.
  await waitFor(async () => (await listAll(path.join(d.dirs.cache, 'partial'))).length === 0, 10_000, 'partial files to be removed');
  t.deepEqual(await listAll(path.join(d.dirs.cache, 'ingest')), []);
  t.deepEqual(await listAll(path.join(d.dirs.cache, 'blobs')), []);
  // The daemon is still up and answering.
  t.is(d.child.exitCode, null);
  const { env } = await cliEnv(t);
  t.is((await runCli(['status', '--socket', d.dirs.socket], { env })).code, 0);
  // Space comes back: a blob read from then on is cached again (the streamed ones stay in the page cache).
  await fsp.rm(filler);
  t.true((await fsp.readFile(path.join(v1, 'later.bin'))).equals(later));
  await waitFor(async () => (await listAll(path.join(d.dirs.cache, 'blobs'))).length === 1, 20_000, 'the blob read after space came back to be cached', d.logs);
  t.true((await fsp.readFile(path.join(v1, 'large.bin'))).equals(large));
  t.is(d.logs().split('\n').filter((l) => /streaming it from the registry/.test(l)).length, 2, 'said once per blob, not per kernel read');
  t.is(await d.stop(), 0);
});

// ---------------------------------------------------------------------------------------------
// case 13: kill -9 between the blobs and the manifest PUT

test('kill -9 after the blobs and before (or during) the manifest PUT: after a restart exactly one manifest lands on the expected digest, staged files untouched', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const proxy = await startFaultProxy(t, reg.url);
  const base = await tempDir(t, 'regfs-daemon-');
  const dirs = { base, mnt: path.join(base, 'mnt'), staging: path.join(base, 'staging'), cache: path.join(base, 'cache'), state: path.join(base, 'state'), socket: path.join(base, 'run/control.sock') };
  const direct = new RemoteRegistry(reg.host);
  t.teardown(() => direct.close());
  const fingerprint = async (dir: string): Promise<string> =>
    JSON.stringify(await Promise.all((await listAll(dir)).map(async (f) => {
      const st = await fsp.stat(path.join(dir, f));
      return [f, sha(await fsp.readFile(path.join(dir, f))), st.size, st.mtimeMs, st.mode];
    })));
  const expectedDigest = async (): Promise<string> => {
    const items = await Promise.all((await fsp.readdir(path.join(dirs.state, 'queue'))).filter((f) => f.endsWith('.json')).map(async (f) => JSON.parse(await fsp.readFile(path.join(dirs.state, 'queue', f), 'utf8')) as { tag: string; expectedDigest?: string; state: string }));
    return items.find((i) => i.state === 'uploading')!.expectedDigest!;
  };
  const stage = async (tag: string): Promise<string> => {
    const dir = path.join(dirs.staging, 'crash/app', tag);
    await fsp.mkdir(path.join(dir, 'sub'), { recursive: true });
    await fsp.writeFile(path.join(dir, 'a.bin'), randomBytes(300_000));
    await fsp.writeFile(path.join(dir, 'sub/b.txt'), `file b of ${tag}\n`);
    return dir;
  };

  // 1. The manifest PUT never reaches the registry: the daemon dies while it waits for it.
  proxy.rules.push({ method: 'PUT', path: /\/manifests\//, stall: true });
  let d = await startDaemon(t, { source: proxy.host, dirs });
  const dir1 = await stage('before');
  await waitFor(async () => proxy.count('PUT', /\/manifests\//) > 0, 60_000, 'the manifest PUT');
  t.true(proxy.requests.filter((r) => r.method === 'PUT' && /\/blobs\/uploads\//.test(r.path) && r.status === 201).length >= 2, 'the blobs were uploaded');
  const staged1 = await fingerprint(dir1);
  const want1 = await expectedDigest();
  await d.crash();
  await t.throwsAsync(direct.repository('crash/app').resolve('before'), undefined, 'no tag yet');
  proxy.rules.length = 0;
  proxy.reset();
  d = await startDaemon(t, { source: proxy.host, dirs });
  await d.waitLog(/pushed crash\/app:before/, 60_000);
  t.is((await direct.repository('crash/app').resolve('before')).digest as string, want1);
  t.is(proxy.count('PUT', /\/manifests\//), 1, 'exactly one manifest PUT after the restart');
  t.is(proxy.count('POST', /\/blobs\/uploads\//), 0, 'the blobs already there were not uploaded again');
  t.is(await fingerprint(dir1), staged1, 'staged files untouched');

  // 2. The manifest PUT lands, but the daemon dies before it hears the answer.
  proxy.rules.push({ method: 'PUT', path: /\/manifests\//, delayResponseMs: 60_000 });
  const dir2 = await stage('during');
  await waitFor(async () => direct.repository('crash/app').resolve('during').then(() => true, () => false), 60_000, 'the manifest to land');
  const staged2 = await fingerprint(dir2);
  const want2 = await expectedDigest();
  await d.crash();
  proxy.rules.length = 0;
  proxy.reset();
  d = await startDaemon(t, { source: proxy.host, dirs });
  await d.waitLog(/pushed crash\/app:during/, 60_000);
  t.regex(d.logs(), /crash\/app:during already on sha256:[a-f0-9]{64}; not putting the manifest again/);
  t.is(proxy.count('PUT', /\/manifests\//), 0, 'the landed manifest is not PUT again');
  t.is((await direct.repository('crash/app').resolve('during')).digest as string, want2);
  t.is(await fingerprint(dir2), staged2, 'staged files untouched');
  t.is(await d.stop(), 0);
});

// ---------------------------------------------------------------------------------------------
// case 15: credentials never leak

test('wrong password, expired tokens and a token service that is down give clear, bounded errors, and no output, log or state file holds a credential', async (t) => {
  const reg = await startRegistry(t, { flavour: 'token' });
  const ts = reg.tokenServer!;
  const { env, configDir } = await cliEnv(t);
  const outputs: string[] = [];
  const run = async (args: string[], opts: { cwd?: string; input?: string } = {}): Promise<Awaited<ReturnType<typeof runCli>>> => {
    const r = await runCli(args, { env, ...opts });
    outputs.push(r.stdout, r.stderr); // (not the arguments: -p carries a password on purpose)
    return r;
  };
  // Wrong password: exit 3, one line, nothing stored.
  const wrong = 'wrong-' + randomBytes(8).toString('hex');
  const bad = await run(['login', reg.host, '-u', reg.username!, '-p', wrong, '--debug']);
  t.is(bad.code, 3);
  t.regex(bad.stderr, /rejected the credentials/);
  t.deepEqual(await fsp.readdir(configDir), []);
  const login = await run(['login', reg.host, '-u', reg.username!, '--password-stdin', '--debug'], { input: reg.password! });
  t.is(login.code, 0, login.stderr);
  const src = await tempDir(t);
  await fsp.writeFile(path.join(src, 'a.txt'), 'secret-protected');
  await fsp.writeFile(path.join(src, 'b.bin'), randomBytes(100_000));
  t.is((await run(['push', `${reg.host}/creds/app:v1`, 'a.txt', 'b.bin', '--debug'], { cwd: src })).code, 0);
  const out = await tempDir(t);
  t.is((await run(['pull', `${reg.host}/creds/app:v1`, '-o', out, '--debug'])).code, 0);

  // A daemon at debug level, with tokens that expire every 2 s: mount reads and a staged push.
  ts.tokenLifetimeSeconds = 2;
  const d = await startDaemon(t, { source: reg.host, env, args: ['--log-level', 'debug'] });
  const v1 = path.join(d.dirs.mnt, 'creds/app/v1');
  t.is(await fsp.readFile(path.join(v1, 'a.txt'), 'utf8'), 'secret-protected');
  const issued = ts.issuedTokens.length;
  await new Promise((r) => setTimeout(r, 2500));
  t.true((await fsp.readFile(path.join(v1, 'b.bin'))).equals(await fsp.readFile(path.join(src, 'b.bin'))));
  t.true(ts.issuedTokens.length > issued, 'an expired token was renewed');
  await fsp.mkdir(path.join(d.dirs.staging, 'creds/staged/v2'), { recursive: true });
  await fsp.writeFile(path.join(d.dirs.staging, 'creds/staged/v2/s.txt'), 'staged');
  await d.waitLog(/pushed creds\/staged:v2/, 60_000);

  // The token service goes down: a CLI call fails fast with one line; so does an uncached mount read
  // and a staged push (recorded in the journal and in status).
  ts.down = true;
  await new Promise((r) => setTimeout(r, 2500)); // every token the daemon holds has expired now
  const before = ts.requests.length;
  const down = await run(['repo', 'tags', `${reg.host}/creds/other`, '--debug']);
  t.not(down.code, 0);
  t.regex(down.stderr, /token service of .* answered HTTP 503/);
  t.true(ts.requests.length - before <= 2, `${ts.requests.length - before} token requests for one command`);
  t.regex((await sh(`ls ${d.dirs.mnt}/creds/none-such/v9`)).stderr, /No such file|Input\/output error/);
  await fsp.mkdir(path.join(d.dirs.staging, 'creds/staged/v3'), { recursive: true });
  await fsp.writeFile(path.join(d.dirs.staging, 'creds/staged/v3/s.txt'), 'staged while down');
  await d.waitLog(/push of creds\/staged:v3 failed/, 60_000);
  const status = await run(['status', '--socket', d.dirs.socket, '--format', 'json']);
  t.is(status.code, 0);
  t.is(await d.stop(), 0);

  // Everything printed, logged or persisted: no password, token or base64 credential.
  const stateFiles = await Promise.all((await listAll(d.dirs.state)).map((f) => fsp.readFile(path.join(d.dirs.state, f), 'utf8')));
  const all = [...outputs, d.logs(), ...stateFiles].join('\n');
  t.regex(d.logs(), / DEBUG /, 'the daemon logged at debug level');
  t.regex(all, /token service/);
  const secrets = [reg.password!, wrong, ...ts.issuedTokens, Buffer.from(`${reg.username}:${reg.password}`).toString('base64'), Buffer.from(`${reg.username}:${wrong}`).toString('base64')];
  t.true(ts.issuedTokens.length >= 3);
  for (const s of secrets) t.false(all.includes(s), `a credential leaked: ${s.slice(0, 6)}…`);
  t.notRegex(all, /Bearer ey|Basic [A-Za-z0-9+/]{8,}/);
});

// ---------------------------------------------------------------------------------------------
// case 17: load under latency and cuts

/** LOAD_RSS_BOUND_MIB is the stated bound on the daemon's peak RSS (VmHWM) in the load test (docs/guarantees.md). */
const LOAD_RSS_BOUND_MIB = 256;

test('load: 16 concurrent readers over 8 files through the daemon\'s mount, with latency and cut connections: every byte right, peak RSS bounded', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const proxy = await startFaultProxy(t, reg.url);
  const { env } = await cliEnv(t);
  const src = await tempDir(t);
  // 172 MiB in all: more than the RSS bound minus the daemon's own ~130 MiB, so buffering blobs would show.
  const sizes = [1 * MiB + 7, 3 * MiB, 8 * MiB + 1, 16 * MiB, 24 * MiB + 333, 32 * MiB, 40 * MiB - 5, 48 * MiB];
  const names = sizes.map((_, i) => `f${i}.bin`);
  for (const [i, size] of sizes.entries()) await fsp.writeFile(path.join(src, names[i]!), randomBytes(size));
  const push = await runCli(['push', `${reg.host}/load/app:v1`, ...names], { cwd: src, env });
  t.is(push.code, 0, push.stderr);
  // Every blob GET waits 40 ms; the first 12 are cut after 400 KB (the reader resumes by Range).
  proxy.rules.push({ method: 'GET', path: /\/blobs\//, latencyMs: 40, cutAfterBytes: 400_000, times: 12 }, { method: 'GET', path: /\/blobs\//, latencyMs: 40 });
  const d = await startDaemon(t, { source: proxy.host, staging: false });
  const v1 = path.join(d.dirs.mnt, 'load/app/v1');
  t.deepEqual((await fsp.readdir(v1)).sort(), [...names].sort());
  // 16 readers: two per file, each comparing every byte with the source.
  const script = names.flatMap((n) => [n, n]).map((n) => `(cmp ${v1}/${n} ${src}/${n} && echo "ok ${n}") &`).join('\n') + '\nwait';
  const r = await sh(script, { timeoutMs: 240_000 });
  const oks = r.stdout.split('\n').filter((l) => l.startsWith('ok '));
  t.is(oks.length, 16, r.stdout + r.stderr);
  t.is(proxy.requests.filter((q) => q.rule === 0).length, 12, 'all 12 cuts happened');
  t.true(proxy.requests.filter((q) => q.rule === 0).every((q) => q.bytesOut <= 400_000));
  const rss = await d.rssPeakKiB();
  t.log(`daemon peak RSS ${Math.round(rss / 1024)} MiB (bound ${LOAD_RSS_BOUND_MIB} MiB); ${proxy.count('GET', /\/blobs\//)} blob GETs, ${Math.round(proxy.bytesOut() / MiB)} MiB through the proxy`);
  t.true(rss < LOAD_RSS_BOUND_MIB * 1024, `peak RSS ${rss} KiB`);
  t.is(await d.stop(), 0);
});

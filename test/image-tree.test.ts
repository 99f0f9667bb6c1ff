import test from 'ava';
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { lstat, readdir, readFile, readlink } from 'node:fs/promises';
import path from 'node:path';
import { startRegistry, type StartedRegistry } from '../lab/registry.js';
import { startFaultProxy, type FaultProxy } from '../lab/fault-proxy.js';
import { tempDir } from '../lab/cli.js';
import { sh, startMount, type StartedMount } from '../lab/mount.js';
import { skopeoPush, tarLayer, umociUnpack, writeOciImage, writeOciIndex, type BuiltLayer, type ImageEntry } from '../lab/oci-image.js';

const sha = (b: Buffer | string): string => createHash('sha256').update(b).digest('hex');
const fileSha = (p: string): Promise<string> =>
  new Promise((resolve, reject) => {
    const h = createHash('sha256');
    createReadStream(p).on('data', (c) => h.update(c)).on('end', () => resolve(h.digest('hex'))).on('error', reject);
  });

const T0 = new Date('2023-05-06T07:08:09Z');

function baseEntries(): ImageEntry[] {
  return [
    { name: 'etc/', type: 'directory' },
    { name: 'etc/os-release', content: 'ID=regfs\nVERSION_ID=1\n', mtime: T0 },
    { name: 'etc/hostname', content: 'base\n' },
    { name: 'etc/passwd', content: 'root:x:0:0::/root:/bin/sh\n' },
    { name: 'bin/', type: 'directory' },
    { name: 'bin/tool', content: '#!/bin/sh\necho tool\n', mode: 0o755, uid: 1000, gid: 1001, mtime: T0 },
    { name: 'bin/tool2', type: 'link', linkname: 'bin/tool' },
    { name: 'bin/su', content: 'suid', mode: 0o4755 },
    { name: 'bin/sh', type: 'symlink', linkname: 'tool' },
    { name: 'escape', type: 'symlink', linkname: '../../../etc/passwd' },
    { name: 'absolute', type: 'symlink', linkname: '/etc/passwd' },
    { name: 'gone/', type: 'directory' },
    { name: 'gone/x', content: 'x' },
    { name: 'opq/', type: 'directory', mode: 0o700 },
    { name: 'opq/old1', content: 'old1' },
    { name: 'opq/old2', content: 'old2' },
    { name: './usr/', type: 'directory' },
    { name: './usr/lib/', type: 'directory' },
    { name: './usr/lib/a.so', content: 'a' },
  ];
}

function manyEntries(): ImageEntry[] {
  const out: ImageEntry[] = [{ name: 'many/', type: 'directory' }];
  for (let d = 0; d < 100; d++) {
    out.push({ name: `many/d${d}/`, type: 'directory' });
    for (let f = 0; f < 100; f++) out.push({ name: `many/d${d}/f${f}`, content: `file ${d}/${f}\n` });
  }
  return out;
}

function upperEntries(): ImageEntry[] {
  return [
    { name: 'etc/', type: 'directory' },
    { name: 'etc/.wh.hostname', content: '' },
    { name: 'etc/os-release', content: 'ID=regfs\nVERSION_ID=2\n', mtime: T0 },
    { name: '.wh.gone', content: '' },
    { name: 'opq/', type: 'directory', mode: 0o750 },
    { name: 'opq/.wh..wh..opq', content: '' },
    { name: 'opq/new', content: 'new' },
    { name: 'usr/', type: 'directory' },
    { name: 'usr/lib/', type: 'directory' },
    { name: 'usr/lib/.wh.a.so', content: '' },
    { name: 'usr/lib/b.so', content: 'b' },
    // a file over a lower symlink, and a symlink over a lower file
    { name: 'bin/', type: 'directory' },
    { name: 'bin/sh', content: 'real sh', mode: 0o755 },
    { name: 'etc/passwd', type: 'symlink', linkname: '../proc/self/environ' },
  ];
}

interface Ctx {
  reg: StartedRegistry;
  /** proxy (no rules) sits between the mount and the registry: its request log shows what the mount fetched. */
  proxy: FaultProxy;
  layout: string;
  mount: StartedMount;
  base: BuiltLayer;
  many: BuiltLayer;
  corrupt: BuiltLayer;
}
let ctx: Ctx;

/** listing is `find -printf '%P %y %m %s %l'` of a tree, directory sizes dropped (filesystems differ there), sorted. */
async function listing(root: string): Promise<string[]> {
  const r = await sh(`find ${JSON.stringify(root)} -mindepth 1 -printf '%P %y %m %s %l\\n'`, { timeoutMs: 60_000 });
  if (r.code !== 0) throw new Error(r.stderr);
  return r.stdout.split('\n').filter(Boolean).map((l) => {
    const [p, y, m, s, ...rest] = l.split(' ');
    return [p, y, m, y === 'd' ? '-' : s, ...rest].join(' ');
  }).sort();
}

/** cleanups are the before hook's teardowns (hooks have no t.teardown), run last, newest first. */
const cleanups: (() => unknown)[] = [];
const hook = { teardown: (fn: () => unknown): void => void cleanups.push(fn) };
test.after.always(async () => {
  for (const fn of cleanups.reverse()) await fn();
});

test.before(async () => {
  const t = hook;
  const reg = await startRegistry(t, { flavour: 'plain' });
  const layout = path.join(await tempDir(t, 'regfs-img-'), 'layout');
  const base = await tarLayer(baseEntries());
  const many = await tarLayer(manyEntries());
  const upper = await tarLayer(upperEntries());
  const hostile = await tarLayer([
    { name: 'ok', content: 'fine' },
    { name: '../evil', content: 'evil' },
    { name: '/abs', content: 'abs' },
    { name: 'a/../../b', content: 'b' },
    { name: 'hl', type: 'link', linkname: '../../etc/shadow' },
  ]);
  const a = await writeOciImage(layout, 'a', [base, many, upper]);
  const b = await writeOciImage(layout, 'b', [base, many, await tarLayer([{ name: 'etc/', type: 'directory' }, { name: 'etc/b', content: 'only in b' }])], [{ tag: 'a', manifest: a.manifest }]);
  const h = await writeOciImage(layout, 'h', [hostile], [{ tag: 'a', manifest: a.manifest }, { tag: 'b', manifest: b.manifest }]);
  const corrupt = await tarLayer([{ name: 'etc/', type: 'directory' }, { name: 'etc/secret', content: 'verified bytes only\n'.repeat(100) }]);
  const c = await writeOciImage(layout, 'c', [corrupt], [{ tag: 'a', manifest: a.manifest }, { tag: 'b', manifest: b.manifest }, { tag: 'h', manifest: h.manifest }]);
  await skopeoPush(layout, 'c', reg.host, 'img/app:c');
  await writeOciIndex(layout, 'multi', b.manifest, [{ tag: 'a', manifest: a.manifest }, { tag: 'b', manifest: b.manifest }, { tag: 'h', manifest: h.manifest }, { tag: 'c', manifest: c.manifest }]);
  await skopeoPush(layout, 'a', reg.host, 'img/app:a');
  await skopeoPush(layout, 'b', reg.host, 'img/other:b');
  await skopeoPush(layout, 'h', reg.host, 'img/app:h');
  await skopeoPush(layout, 'multi', reg.host, 'img/app:multi');
  const proxy = await startFaultProxy(t, reg.url);
  const mount = await startMount(t, proxy.host);
  ctx = { reg, proxy, layout, mount, base, many, corrupt };
});

test.serial('an image shows config.json, manifest.json, layers/ and a rootfs/ equal to umoci unpack', async (t) => {
  const dir = path.join(ctx.mount.mnt, 'img/app/a');
  t.deepEqual((await readdir(dir)).sort(), ['config.json', 'layers', 'manifest.json', 'rootfs']);
  const cfg = JSON.parse(await readFile(path.join(dir, 'config.json'), 'utf8')) as { rootfs: { diff_ids: string[] } };
  t.is(cfg.rootfs.diff_ids.length, 3);
  const manifest = await readFile(path.join(dir, 'manifest.json'));
  const m = JSON.parse(manifest.toString()) as { layers: { digest: string }[] };
  const layers = (await readdir(path.join(dir, 'layers'))).sort();
  t.deepEqual(layers, m.layers.map((l, i) => `0${i}-${l.digest.slice(7, 19)}.tar.gz`));
  t.is(`sha256:${sha(await readFile(path.join(dir, 'layers', layers[0]!)))}`, ctx.base.digest);

  const started = Date.now();
  const rootfs = path.join(dir, 'rootfs');
  const ours = await listing(rootfs);
  const bundle = path.join(await tempDir(t, 'regfs-umoci-'), 'bundle');
  await umociUnpack(ctx.layout, 'a', bundle);
  const theirs = await listing(path.join(bundle, 'rootfs'));
  t.deepEqual(ours, theirs);
  t.true(ours.length > 10_000);
  for (const line of ours.filter((l) => / f /.test(l)).slice(0, 400).concat(ours.filter((l) => !l.startsWith('many/') && / f /.test(l)))) {
    const p = line.split(' ')[0]!;
    t.is(await fileSha(path.join(rootfs, p)), await fileSha(path.join(bundle, 'rootfs', p)), p);
  }
  t.log(`listing + umoci compare of ${ours.length} entries took ${Date.now() - started} ms`);

  // Whiteouts, opaque dirs, markers never shown.
  t.false(ours.some((l) => l.includes('.wh.')));
  t.deepEqual(await readdir(path.join(rootfs, 'opq')), ['new']);
  t.deepEqual((await readdir(path.join(rootfs, 'etc'))).sort(), ['os-release', 'passwd']);
  t.is(await readFile(path.join(rootfs, 'etc/os-release'), 'utf8'), 'ID=regfs\nVERSION_ID=2\n');
  // Symlinks as stored, never followed; hard links share content and count.
  t.is(await readlink(path.join(rootfs, 'escape')), '../../../etc/passwd');
  t.is(await readlink(path.join(rootfs, 'absolute')), '/etc/passwd');
  t.is(await readlink(path.join(rootfs, 'etc/passwd')), '../proc/self/environ');
  const tool = await lstat(path.join(rootfs, 'bin/tool'));
  const tool2 = await lstat(path.join(rootfs, 'bin/tool2'));
  t.is(tool.nlink, 2);
  t.is(tool2.nlink, 2);
  t.is(await readFile(path.join(rootfs, 'bin/tool2'), 'utf8'), '#!/bin/sh\necho tool\n');
  // Owner, mode and mtime from the tar headers.
  t.is(tool.uid, 1000);
  t.is(tool.gid, 1001);
  t.is(tool.mode & 0o7777, 0o755);
  t.is(tool.mtime.getTime(), T0.getTime());
  t.is((await lstat(path.join(rootfs, 'bin/su'))).mode & 0o7777, 0o4755);
  t.is((await lstat(path.join(rootfs, 'opq'))).mode & 0o7777, 0o750);
});

test.serial('a second image sharing base layers fetches nothing for them; TOCs live in the cache by digest', async (t) => {
  const blobGets = (d: string): number => ctx.proxy.count('GET', new RegExp(`/blobs/${d}`));
  const before = [blobGets(ctx.base.digest), blobGets(ctx.many.digest)];
  t.true(before[0]! > 0, 'the first image fetched its base layer');
  const rootfs = path.join(ctx.mount.mnt, 'img/other/b/rootfs');
  t.deepEqual((await readdir(path.join(rootfs, 'etc'))).sort(), ['b', 'hostname', 'os-release', 'passwd']);
  t.is(await readFile(path.join(rootfs, 'etc/b'), 'utf8'), 'only in b');
  t.is((await readdir(path.join(rootfs, 'many'))).length, 100);
  t.deepEqual([blobGets(ctx.base.digest), blobGets(ctx.many.digest)], before);
  const tocs = await readdir(path.join(ctx.mount.cacheDir, 'tocs'));
  t.true(tocs.includes(`${ctx.base.digest.slice(7)}.json`));
  t.true(tocs.includes(`${ctx.many.digest.slice(7)}.json`));
});

test.serial('an index shows each platform folder as an image', async (t) => {
  const dir = path.join(ctx.mount.mnt, 'img/app/multi');
  t.deepEqual(await readdir(dir), ['linux-amd64']);
  t.deepEqual((await readdir(path.join(dir, 'linux-amd64'))).sort(), ['config.json', 'layers', 'manifest.json', 'rootfs']);
  t.is(await readFile(path.join(dir, 'linux-amd64/rootfs/etc/b'), 'utf8'), 'only in b');
});

test.serial('a corrupted layer stream is EIO on rootfs/ and stores nothing; the next try with good bytes works', async (t) => {
  const rootfs = path.join(ctx.mount.mnt, 'img/app/c/rootfs');
  ctx.proxy.rules.push({ method: 'GET', path: new RegExp(`/blobs/${ctx.corrupt.digest}`), flipByteAt: 40 });
  const err = await readdir(rootfs).then(() => undefined, (e: NodeJS.ErrnoException) => e);
  t.is(err?.code, 'EIO');
  t.false((await readdir(path.join(ctx.mount.cacheDir, 'tocs'))).includes(`${ctx.corrupt.digest.slice(7)}.json`));
  ctx.proxy.rules.length = 0;
  // The blob cache backs off a digest for 5 s after a mismatch (reads fail at once meanwhile), then fetches afresh.
  const deadline = Date.now() + 10_000;
  let text: string | undefined;
  while (text === undefined) {
    text = await readFile(path.join(rootfs, 'etc/secret'), 'utf8').catch((e: NodeJS.ErrnoException) => {
      if (e.code !== 'EIO' || Date.now() > deadline) throw e;
      return undefined;
    });
    if (text === undefined) await new Promise((r) => setTimeout(r, 250));
  }
  t.is(text, 'verified bytes only\n'.repeat(100));
});

test.serial('hostile tar entries are hidden and logged, the rest of the layer is shown', async (t) => {
  const rootfs = path.join(ctx.mount.mnt, 'img/app/h/rootfs');
  t.deepEqual(await readdir(rootfs), ['ok']);
  t.is(await readFile(path.join(rootfs, 'ok'), 'utf8'), 'fine');
  t.regex(ctx.mount.logs(), /hiding tar entry "\.\.\/evil"/);
  t.regex(ctx.mount.logs(), /hiding tar entry "hl".*hard link target/);
});

test.serial('a layer over the entry limit is EIO on rootfs/ with a logged reason, not a crash', async (t) => {
  const m = await startMount(t, ctx.proxy.host, { env: { REGFS_TOC_MAX_ENTRIES: '5000' } });
  const dir = path.join(m.mnt, 'img/app/a');
  t.true((await readdir(dir)).includes('rootfs'));
  const err = await readdir(path.join(dir, 'rootfs')).then(() => undefined, (e: NodeJS.ErrnoException) => e);
  t.is(err?.code, 'EIO');
  t.regex(m.logs(), /more than 5000 entries/);
  t.is(await readFile(path.join(dir, 'config.json')).then((b) => b.length > 0), true);
  t.is(m.child.exitCode, null);
});

test.serial('a 200 MiB file in a layer reads back with the right bytes', async (t) => {
  const big = Buffer.alloc(200 * 1024 * 1024);
  for (let i = 0; i < big.length; i += 4096) big.write(`block ${i}\n`, i);
  const layer = await tarLayer([{ name: 'data/', type: 'directory' }, { name: 'data/big.bin', content: big }]);
  const layout = path.join(await tempDir(t, 'regfs-img-big-'), 'layout');
  await writeOciImage(layout, 'big', [layer]);
  await skopeoPush(layout, 'big', ctx.reg.host, 'img/big:v1');
  const file = path.join(ctx.mount.mnt, 'img/big/v1/rootfs/data/big.bin');
  t.is((await lstat(file)).size, big.length);
  t.is(await fileSha(file), sha(big));
});

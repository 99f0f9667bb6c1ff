import test from 'ava';
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { lstat, mkdir, readdir, readFile, readlink } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { gunzipSync, gzipSync } from 'node:zlib';
import { tempDir } from '../lab/cli.js';
import { estargzLayer, type EstargzLayer } from '../lab/estargz.js';
import { startFaultProxy, type FaultProxy, type RequestRecord } from '../lab/fault-proxy.js';
import { sh, startMount, type StartedMount } from '../lab/mount.js';
import { skopeoPush, tarLayer, umociUnpack, writeOciImage, type ImageEntry } from '../lab/oci-image.js';
import { startRegistry, type StartedRegistry } from '../lab/registry.js';

const exec = promisify(execFile);
const sha = (b: Buffer | string): string => createHash('sha256').update(b).digest('hex');
const fileSha = (p: string): Promise<string> =>
  new Promise((resolve, reject) => {
    const h = createHash('sha256');
    createReadStream(p).on('data', (c) => h.update(c)).on('end', () => resolve(h.digest('hex'))).on('error', reject);
  });
const T0 = new Date('2023-05-06T07:08:09Z');
/** The format's own files (the TOC and the landmark) are in the tar, so umoci unpacks them; rootfs/ hides them. */
const FORMAT_FILES = new Set(['stargz.index.json', '.no.prefetch.landmark']);

function baseEntries(): ImageEntry[] {
  return [
    { name: 'etc/', type: 'directory' },
    { name: 'etc/os-release', content: 'ID=base\n' },
    { name: 'etc/hostname', content: 'base\n' },
    { name: 'gone/', type: 'directory' },
    { name: 'gone/x', content: 'x' },
    { name: 'opq/', type: 'directory' },
    { name: 'opq/old', content: 'old' },
  ];
}

const multi = randomBytes(300 * 1024);
function upperEntries(): ImageEntry[] {
  return [
    { name: 'etc/', type: 'directory' },
    { name: 'etc/os-release', content: 'ID=estargz\nVERSION_ID=2\n', mtime: T0 },
    { name: 'etc/.wh.hostname', content: '' },
    { name: '.wh.gone', content: '' },
    { name: 'opq/', type: 'directory', mode: 0o750 },
    { name: 'opq/.wh..wh..opq', content: '' },
    { name: 'opq/new', content: 'new' },
    { name: 'bin/', type: 'directory' },
    { name: 'bin/tool', content: '#!/bin/sh\necho tool\n', mode: 0o755, uid: 1000, gid: 1001, mtime: T0 },
    { name: 'bin/tool2', type: 'link', linkname: 'bin/tool' },
    { name: 'bin/su', content: 'suid', mode: 0o4755 },
    { name: 'bin/sh', type: 'symlink', linkname: 'tool' },
    { name: 'escape', type: 'symlink', linkname: '../../../etc/passwd' },
    { name: 'data/', type: 'directory' },
    { name: 'data/multi.bin', content: multi },
    { name: 'data/empty', content: '' },
    { name: './data/dot', content: 'dot' },
  ];
}

interface Ctx {
  reg: StartedRegistry;
  proxy: FaultProxy;
  layout: string;
  mount: StartedMount;
  upper: EstargzLayer;
  lazy: EstargzLayer;
  stored: EstargzLayer;
  wrongToc: EstargzLayer;
}
let ctx: Ctx;
let t0Packed: EstargzLayer;
const cleanups: (() => unknown)[] = [];
const hook = { teardown: (fn: () => unknown): void => void cleanups.push(fn) };
test.after.always(async () => {
  for (const fn of cleanups.reverse()) await fn();
});

test.before(async () => {
  const reg = await startRegistry(hook, { flavour: 'plain' });
  const layout = path.join(await tempDir(hook, 'regfs-esgz-'), 'layout');
  const base = await tarLayer(baseEntries());
  const upper = await estargzLayer(upperEntries(), { chunkSize: 64 * 1024 });
  const lazy = await estargzLayer([
    { name: 'etc/', type: 'directory' },
    { name: 'etc/os-release', content: 'ID=lazy\n' },
    { name: 'usr/', type: 'directory' },
    { name: 'usr/big1', content: randomBytes(2 * 1024 * 1024) },
    { name: 'usr/big2', content: randomBytes(2 * 1024 * 1024) },
    { name: 'usr/chunked', content: randomBytes(1024 * 1024) },
  ], { chunkSize: 256 * 1024 });
  // Level 0 (stored): a member rebuilt from other bytes of the same length has the same length.
  const stored = await estargzLayer([{ name: 'victim', content: 'A'.repeat(5000) }, { name: 'other', content: 'other' }], { level: 0 });
  const hostile = await estargzLayer([
    { name: 'ok', content: 'fine' },
    { name: '../evil', content: 'evil' },
    { name: 'a/../../b', content: 'b' },
    { name: 'hl', type: 'link', linkname: '../../etc/shadow' },
    { name: 'hl2', type: 'link', linkname: 'later' },
    { name: 'later', content: 'later' },
  ]);
  const good = await estargzLayer([{ name: 'etc/', type: 'directory' }, { name: 'etc/motd', content: 'fallback works\n' }]);
  const wrongToc: EstargzLayer = { ...good, annotations: { 'containerd.io/snapshot/stargz/toc.digest': `sha256:${sha('not the toc')}` } };
  // Small payloads sharing gzip members (innerOffset), over the other two.
  const packed = await estargzLayer([
    { name: 'packed/', type: 'directory' },
    ...Array.from({ length: 30 }, (_, i): ImageEntry => ({ name: `packed/f${i}`, content: `small file ${i}\n`.repeat(i * 40) })),
  ], { minChunkSize: 64 * 1024 });
  t0Packed = packed;
  const a = await writeOciImage(layout, 'a', [base, upper, packed]);
  const b = await writeOciImage(layout, 'b', [lazy], [{ tag: 'a', manifest: a.manifest }]);
  const c = await writeOciImage(layout, 'c', [stored], [{ tag: 'a', manifest: a.manifest }, { tag: 'b', manifest: b.manifest }]);
  const d = await writeOciImage(layout, 'd', [wrongToc], [{ tag: 'a', manifest: a.manifest }, { tag: 'b', manifest: b.manifest }, { tag: 'c', manifest: c.manifest }]);
  await writeOciImage(layout, 'h', [hostile], [{ tag: 'a', manifest: a.manifest }, { tag: 'b', manifest: b.manifest }, { tag: 'c', manifest: c.manifest }, { tag: 'd', manifest: d.manifest }]);
  for (const tag of ['a', 'b', 'c', 'd', 'h']) await skopeoPush(layout, tag, reg.host, `es/app:${tag}`);
  const proxy = await startFaultProxy(hook, reg.url);
  const mount = await startMount(hook, proxy.host);
  ctx = { reg, proxy, layout, mount, upper, lazy, stored, wrongToc };
});

async function listing(root: string, drop: Set<string> = new Set()): Promise<string[]> {
  const r = await sh(`find ${JSON.stringify(root)} -mindepth 1 -printf '%P %y %m %s %U %G %T@ %n %l\\n'`, { timeoutMs: 60_000 });
  if (r.code !== 0) throw new Error(r.stderr);
  return r.stdout.split('\n').filter(Boolean).filter((l) => !drop.has(l.split(' ')[0]!)).map((l) => {
    const [p, y, m, s, ...rest] = l.split(' ');
    return [p, y, m, y === 'd' ? '-' : s, ...rest].join(' ');
  }).sort();
}

const blobRequests = (digest: string): RequestRecord[] => ctx.proxy.requests.filter((r) => r.method === 'GET' && r.path.includes(`/blobs/${digest}`));

test.serial('an eStargz layer over a gzip layer: rootfs/ equals umoci unpack (format files aside), every file by sha256', async (t) => {
  const rootfs = path.join(ctx.mount.mnt, 'es/app/a/rootfs');
  const bundle = path.join(await tempDir(t, 'regfs-esgz-umoci-'), 'bundle');
  await umociUnpack(ctx.layout, 'a', bundle);
  const theirs = path.join(bundle, 'rootfs');
  t.true((await readdir(theirs)).includes('stargz.index.json'), 'umoci (not eStargz-aware) unpacks the TOC file');
  const ours = await listing(rootfs);
  t.deepEqual(ours, await listing(theirs, FORMAT_FILES));
  const files = ours.filter((l) => / f /.test(l)).map((l) => l.split(' ')[0]!);
  t.true(files.includes('data/multi.bin') && files.includes('bin/tool2') && files.includes('packed/f29'));
  t.true(t0Packed.toc.entries.filter((e) => (e.innerOffset ?? 0) > 0).length > 10, 'the packed layer shares members');
  for (const p of files) t.is(await fileSha(path.join(rootfs, p)), await fileSha(path.join(theirs, p)), p);
  t.deepEqual(await readdir(path.join(rootfs, 'opq')), ['new']);
  t.deepEqual(await readdir(path.join(rootfs, 'etc')), ['os-release']);
  t.is(await readlink(path.join(rootfs, 'escape')), '../../../etc/passwd');
  t.is((await lstat(path.join(rootfs, 'bin/tool2'))).nlink, 2);
  t.is((await lstat(path.join(rootfs, 'bin/su'))).mode & 0o7777, 0o4755);
  // The eStargz layer was never fetched whole: every GET of it was a Range.
  const gets = blobRequests(ctx.upper.digest);
  t.true(gets.length > 0);
  t.true(gets.every((r) => typeof r.headers.range === 'string'), 'every request for the eStargz layer is a Range request');
  const tocs = await readdir(path.join(ctx.mount.cacheDir, 'tocs'));
  t.true(tocs.includes(`${ctx.upper.digest.slice(7)}.estargz-${ctx.upper.tocDigest.slice(7)}.json`));
});

test.serial('a cold cat of one file fetches only the footer, the TOC and that file\'s chunks', async (t) => {
  const l = ctx.lazy;
  const rootfs = path.join(ctx.mount.mnt, 'es/app/b/rootfs');
  ctx.proxy.reset();
  // stat and listing need the TOC only: the footer and the TOC member, two Range requests.
  t.is((await lstat(path.join(rootfs, 'usr/big1'))).size, 2 * 1024 * 1024);
  t.deepEqual((await readdir(path.join(rootfs, 'usr'))).sort(), ['big1', 'big2', 'chunked']);
  t.is(blobRequests(l.digest).length, 2);
  t.is(await readFile(path.join(rootfs, 'etc/os-release'), 'utf8'), 'ID=lazy\n');
  const gets = blobRequests(l.digest);
  const entry = l.toc.entries.find((e) => e.name === 'etc/os-release')!;
  const offsets = [...new Set(l.toc.entries.filter((e) => e.offset !== undefined).map((e) => e.offset!))].sort((x, y) => x - y);
  const footer = l.gz.subarray(l.gz.length - 51);
  const tocOffset = Number.parseInt(footer.subarray(16, 32).toString(), 16);
  const memberEnd = offsets.find((o) => o > entry.offset!) ?? tocOffset;
  const expected = 51 + (l.gz.length - 51 - tocOffset) + (memberEnd - entry.offset!);
  const sent = gets.reduce((a, r) => a + r.bytesOut, 0);
  t.is(gets.length, 3, gets.map((r) => String(r.headers.range)).join(', '));
  t.is(sent, expected);
  t.true(sent < l.gz.length / 20, `${sent} of ${l.gz.length} bytes fetched`);
  // A chunked file: one request per chunk, nothing else.
  ctx.proxy.reset();
  const chunked = await readFile(path.join(rootfs, 'usr/chunked'));
  t.is(sha(chunked), l.toc.entries.find((e) => e.name === 'usr/chunked')!.digest!.slice(7));
  t.is(blobRequests(l.digest).length, 4);
  // A second read is local.
  ctx.proxy.reset();
  t.is(await readFile(path.join(rootfs, 'etc/os-release'), 'utf8'), 'ID=lazy\n');
  t.is(blobRequests(l.digest).length, 0);
});

test.serial('a chunk that does not match its chunkDigest is EIO, never served, and a later good fetch works', async (t) => {
  const l = ctx.stored;
  const rootfs = path.join(ctx.mount.mnt, 'es/app/c/rootfs');
  t.deepEqual((await readdir(rootfs)).sort(), ['other', 'victim']);
  const e = l.toc.entries.find((x) => x.name === 'victim')!;
  const next = l.toc.entries.find((x) => x.name === 'other')!;
  const member = l.gz.subarray(e.offset!, next.offset!);
  const raw = Buffer.from(gunzipSync(member));
  raw[0] = 'B'.charCodeAt(0);
  const evil = gzipSync(raw, { level: 0 });
  t.is(evil.length, member.length, 'same length, so the range answer stays well-formed');
  ctx.proxy.rules.push({ method: 'GET', path: new RegExp(`/blobs/${l.digest}`), replaceBody: evil });
  const err = await readFile(path.join(rootfs, 'victim')).then(() => undefined, (x: NodeJS.ErrnoException) => x);
  t.is(err?.code, 'EIO');
  t.regex(ctx.mount.logs(), /chunkDigest/);
  const files = path.join(ctx.mount.cacheDir, 'files', e.digest!.slice(7, 9));
  t.false((await readdir(files).catch(() => [] as string[])).includes(e.digest!.slice(7)), 'nothing stored for the failed file');
  ctx.proxy.rules.length = 0;
  t.is(await readFile(path.join(rootfs, 'victim'), 'utf8'), 'A'.repeat(5000));
});

test.serial('a TOC that does not match the annotation falls back to the plain gzip path (whole blob, digest-checked)', async (t) => {
  const l = ctx.wrongToc;
  const rootfs = path.join(ctx.mount.mnt, 'es/app/d/rootfs');
  ctx.proxy.reset();
  // The plain gzip path shows the tar as is, the format's files included (as umoci does).
  t.deepEqual((await readdir(rootfs)).sort(), ['.no.prefetch.landmark', 'etc', 'stargz.index.json']);
  t.is(await readFile(path.join(rootfs, 'etc/motd'), 'utf8'), 'fallback works\n');
  t.regex(ctx.mount.logs(), /reading layer sha256:[0-9a-f]+ as plain gzip, not eStargz: its TOC has digest/);
  t.true(blobRequests(l.digest).some((r) => r.headers.range === undefined), 'the whole blob was fetched');
});

test.serial('hostile TOC names are hidden and logged, hard links only to earlier files', async (t) => {
  const rootfs = path.join(ctx.mount.mnt, 'es/app/h/rootfs');
  t.deepEqual((await readdir(rootfs)).sort(), ['later', 'ok']);
  t.is(await readFile(path.join(rootfs, 'ok'), 'utf8'), 'fine');
  t.is(await readFile(path.join(rootfs, 'later'), 'utf8'), 'later');
  t.regex(ctx.mount.logs(), /hiding tar entry "\.\.\/evil"/);
  t.regex(ctx.mount.logs(), /hiding tar entry "hl2".*not a file earlier/);
});

test.serial('an eStargz layer over the entry limit is EIO on rootfs/ with a logged reason', async (t) => {
  const m = await startMount(t, ctx.proxy.host, { env: { REGFS_TOC_MAX_ENTRIES: '5' } });
  const err = await readdir(path.join(m.mnt, 'es/app/b/rootfs')).then(() => undefined, (e: NodeJS.ErrnoException) => e);
  t.is(err?.code, 'EIO');
  t.regex(m.logs(), /more than 5 entries/);
  t.is(m.child.exitCode, null);
});

test.serial('an eStargz blob is a valid tar.gz: tar -xzf gives the same files', async (t) => {
  const dir = await tempDir(t, 'regfs-esgz-tar-');
  const blob = path.join(dir, 'layer.tar.gz');
  const { writeFile } = await import('node:fs/promises');
  await writeFile(blob, ctx.upper.gz);
  const out = path.join(dir, 'x');
  await mkdir(out);
  await exec('tar', ['-xzf', blob, '-C', out]);
  t.is(await fileSha(path.join(out, 'data/multi.bin')), sha(multi));
  t.is(await readFile(path.join(out, 'etc/os-release'), 'utf8'), 'ID=estargz\nVERSION_ID=2\n');
  t.is(JSON.parse(await readFile(path.join(out, 'stargz.index.json'), 'utf8')).version, 1);
  t.is(`sha256:${sha(await readFile(path.join(out, 'stargz.index.json')))}`, ctx.upper.tocDigest);
});

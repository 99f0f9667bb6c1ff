/*
 * Exact reads (issue 16, read and mount side): what a read through the mount returns is the
 * registry's verified bytes or an error, never wrong bytes with exit 0.
 */
import test, { type ExecutionContext } from 'ava';
import { mkdir, readdir, readFile, readlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';
import type { Descriptor } from '../registry/descriptor.js';
import { digestOf } from '../registry/digest.js';
import { EMPTY_CONFIG, MediaType } from '../registry/media-types.js';
import { RemoteRegistry } from '../registry/remote.js';
import { startRegistry } from '../lab/registry.js';
import { tarGz } from '../lab/tar-layer.js';
import { startFaultProxy } from '../lab/fault-proxy.js';
import { cliEnv, runCli, tempDir } from '../lab/cli.js';
import { sh, startMount } from '../lab/mount.js';
import { startDaemon } from '../lab/daemon.js';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/**
 * laterReadsNeverWrong reads `file` again until it succeeds (30 s at most): every read either fails or
 * returns exactly `expected`'s bytes, and one must succeed (regfs fetched the right blob).
 */
async function laterReadsNeverWrong(t: ExecutionContext, file: string, expected: string, got: string): Promise<void> {
  let ok = false;
  for (const until = Date.now() + 30_000; !ok && Date.now() < until; ) {
    const r = await sh(`cat ${file} > ${got}`);
    if (r.code === 0) {
      const c = await sh(`cmp ${got} ${expected}`);
      t.is(c.code, 0, `a read after the digest failure exited 0 with wrong bytes: ${c.stdout}`);
      ok = true;
    } else await sleep(500);
  }
  t.true(ok, 'the file became readable again');
}

/** pushLayers pushes one manifest with these layers (title annotations, optional media types) straight through registry/remote.ts. */
async function pushLayers(host: string, repo: string, tag: string, layers: Array<{ title: string; data: Buffer; mediaType?: string; annotations?: Record<string, string> }>): Promise<void> {
  const client = new RemoteRegistry(host);
  try {
    const r = client.repository(repo);
    const config = { mediaType: EMPTY_CONFIG.mediaType, digest: EMPTY_CONFIG.digest, size: 2 };
    await r.pushBlob(config, () => Readable.from([Buffer.from('{}')]));
    const descs: Descriptor[] = [];
    for (const l of layers) {
      const d: Descriptor = { mediaType: l.mediaType ?? MediaType.ociLayerTar, digest: digestOf(l.data), size: l.data.length, annotations: { 'org.opencontainers.image.title': l.title, ...l.annotations } };
      await r.pushBlob(d, () => Readable.from([l.data]));
      descs.push(d);
    }
    const m = { schemaVersion: 2, mediaType: MediaType.ociManifest, artifactType: 'application/x.exact-read', config, layers: descs };
    await r.pushManifest(Buffer.from(JSON.stringify(m)), MediaType.ociManifest, [tag]);
  } finally {
    await client.close();
  }
}

test('lazy verify: after one corrupted response no later read returns the bad pages the kernel cached', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const proxy = await startFaultProxy(t, reg.url);
  const { env } = await cliEnv(t);
  const src = await tempDir(t);
  // Large enough for range reads (lazy verify serves bytes before the whole blob is hashed).
  t.is((await sh(`head -c ${8 * 1024 * 1024} /dev/urandom > ${src}/big.bin`)).code, 0);
  t.is((await runCli(['push', `${reg.host}/flip:v1`, 'big.bin'], { cwd: src, env })).code, 0);
  const m = await startMount(t, proxy.host);
  const file = path.join(m.mnt, 'flip/v1/big.bin');
  // One response has one byte flipped, in the first page: the kernel caches that page.
  proxy.rules.push({ method: 'GET', path: /\/blobs\/sha256:/, flipByteAt: 100, times: 1 });
  const first = await sh(`cat ${file} > /dev/null`);
  t.not(first.code, 0, 'the read that completes the blob fails its digest check');
  t.regex(first.stderr, /Input\/output error/);
  // Every later read either fails or returns the right bytes; once regfs has the right blob, cmp succeeds.
  await laterReadsNeverWrong(t, file, path.join(src, 'big.bin'), path.join(src, 'got.bin'));
  t.is((await sh(`cmp ${file} ${src}/big.bin`)).code, 0);
});

test('lazy verify: a partial cache file corrupted while the mount was down fails the first full read, and no later read returns its bad pages', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const { env } = await cliEnv(t);
  const src = await tempDir(t);
  t.is((await sh(`head -c ${8 * 1024 * 1024} /dev/urandom > ${src}/big.bin`)).code, 0);
  t.is((await runCli(['push', `${reg.host}/crashed:v1`, 'big.bin'], { cwd: src, env })).code, 0);
  const hex = (await sh(`sha256sum ${src}/big.bin | cut -d' ' -f1`)).stdout.trim();
  const cacheDir = path.join(await tempDir(t), 'cache');
  let m = await startMount(t, reg.host, { cacheDir });
  // The first MiB only: a partial blob with its range map, kept by a clean stop.
  t.is((await sh(`head -c 4096 ${m.mnt}/crashed/v1/big.bin > /dev/null`)).code, 0);
  t.is(await m.stop(), 0);
  const partial = path.join(cacheDir, 'partial', hex);
  t.is((await sh(`printf 'X' | dd of=${partial} bs=1 seek=100 conv=notrunc status=none`)).code, 0);
  m = await startMount(t, reg.host, { cacheDir });
  const file = path.join(m.mnt, 'crashed/v1/big.bin');
  const first = await sh(`cat ${file} > /dev/null`);
  t.not(first.code, 0, 'the read that completes the blob fails its digest check');
  await laterReadsNeverWrong(t, file, path.join(src, 'big.bin'), path.join(src, 'got.bin'));
});

test('a blob larger than the cache file system (64 MiB tmpfs, 100 MiB file) streams through: cmp succeeds, nothing kept, said once in the log', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const { env } = await cliEnv(t);
  const src = await tempDir(t);
  t.is((await sh(`head -c ${100 * 1024 * 1024} /dev/urandom > ${src}/huge.bin`)).code, 0);
  t.is((await runCli(['push', `${reg.host}/huge:v1`, 'huge.bin'], { cwd: src, env, timeoutMs: 120_000 })).code, 0);
  const base = await tempDir(t);
  const fsDir = path.join(base, 'tmpfs');
  await mkdir(fsDir);
  const mounted = await sh(`mount -t tmpfs -o size=64m tmpfs ${fsDir}`);
  t.is(mounted.code, 0, mounted.stderr);
  t.teardown(() => sh(`umount ${fsDir}`));
  const m = await startMount(t, reg.host, { cacheDir: path.join(fsDir, 'cache') });
  const file = path.join(m.mnt, 'huge/v1/huge.bin');
  for (let i = 0; i < 2; i++) {
    const c = await sh(`cmp ${file} ${src}/huge.bin`, { timeoutMs: 120_000 });
    t.is(c.code, 0, `read ${i + 1}: ${c.stdout}${c.stderr}\n${m.logs()}`);
  }
  // Random access works too.
  const mid = await sh(`cmp <(tail -c +50000001 ${file} | head -c 3000000) <(tail -c +50000001 ${src}/huge.bin | head -c 3000000)`);
  t.is(mid.code, 0, mid.stdout + mid.stderr);
  const du = await sh(`du -sb ${fsDir}/cache | cut -f1`);
  t.true(Number(du.stdout.trim()) < 8 * 1024 * 1024, `the cache keeps nothing of it: ${du.stdout}`);
  t.is(m.logs().split('\n').filter((l) => /streaming it/.test(l)).length, 1, m.logs());
  t.is(await m.stop(), 0);
});

test('symlinks leaving a subfolder tar layer: the mount hides those entries (logged once) and shows the rest; pull refuses the layer with one line', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const { env } = await cliEnv(t);
  const sub = await tarGz([
    { name: 'sub/', type: 'directory' },
    { name: 'sub/ok.txt', content: 'fine\n' },
    { name: 'sub/sh', type: 'symlink', linkname: '/etc/shadow' },
    { name: 'sub/rel', type: 'symlink', linkname: '../top.txt' },
    { name: 'sub/inner', type: 'symlink', linkname: 'ok.txt' },
  ]);
  await pushLayers(reg.host, 'links/sub', 'v1', [
    { title: 'top.txt', data: Buffer.from('top\n') },
    { title: 'sub', data: sub, mediaType: MediaType.ociLayerTarGzip, annotations: { 'io.deis.oras.content.unpack': 'true' } },
  ]);
  const m = await startMount(t, reg.host);
  const v1 = path.join(m.mnt, 'links/sub/v1');
  t.deepEqual((await readdir(v1)).sort(), ['sub', 'top.txt']);
  t.deepEqual((await readdir(path.join(v1, 'sub'))).sort(), ['inner', 'ok.txt']);
  t.is(await readFile(path.join(v1, 'sub/ok.txt'), 'utf8'), 'fine\n');
  t.is(await readlink(path.join(v1, 'sub/inner')), 'ok.txt');
  for (const name of ['sh', 'rel']) {
    const r = await sh(`stat ${v1}/sub/${name}`);
    t.regex(r.stderr, /No such file or directory/, name);
  }
  await readdir(path.join(v1, 'sub'));
  const hidden = m.logs().split('\n').filter((l) => /hiding tar entry/.test(l));
  t.is(hidden.filter((l) => l.includes('"sub/sh"')).length, 1, m.logs());
  t.is(hidden.filter((l) => l.includes('"sub/rel"')).length, 1, m.logs());
  // pull does what oras does (oras-go's extractTarDirectory fails on a link outside the directory): the
  // layer is refused with one clear line, and nothing of it is written.
  const out = path.join(await tempDir(t), 'out');
  const r = await runCli(['pull', `${reg.host}/links/sub:v1`, '-o', out], { env });
  t.is(r.code, 1, r.stderr);
  t.is(r.stderr.trim().split('\n').length, 1, r.stderr);
  t.regex(r.stderr, /unsafe tar entry "sub\/sh": symlink target "\/etc\/shadow" is absolute/);
  await t.throwsAsync(readdir(path.join(out, 'sub')));
});

test('a hostile tag list (".", "..", a name with "/", an empty name, a duplicate) does not break ls of the repository, and those names are ENOENT', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const proxy = await startFaultProxy(t, reg.url);
  const { env } = await cliEnv(t);
  const src = await tempDir(t);
  await writeFile(path.join(src, 'a.txt'), 'tagged\n');
  t.is((await runCli(['push', `${reg.host}/hostile/tags:v1`, 'a.txt'], { cwd: src, env })).code, 0);
  t.is((await runCli(['push', `${reg.host}/hostile/tags:b`, 'a.txt'], { cwd: src, env })).code, 0);
  const body = JSON.stringify({ name: 'hostile/tags', tags: ['v1', '.', '..', 'a/b', '', '../../etc', 'b', 'v1'] });
  proxy.rules.push({ method: 'GET', path: /^\/v2\/hostile\/tags\/tags\/list/, replaceBody: Buffer.from(body), setHeaders: { 'content-type': 'application/json' } });
  const m = await startMount(t, proxy.host);
  const repo = path.join(m.mnt, 'hostile/tags');
  const ls = await sh(`ls -a ${repo}`);
  t.is(ls.code, 0, ls.stderr + m.logs());
  t.deepEqual(ls.stdout.trim().split('\n'), ['.', '..', 'b', 'v1'], 'each tag once, no hostile name');
  const long = await sh(`ls -la ${repo}`);
  t.is(long.code, 0, long.stderr);
  t.is(await readFile(path.join(repo, 'v1/a.txt'), 'utf8'), 'tagged\n');
  for (const name of ['a', 'a/b', '../../etc']) {
    const r = await sh(`stat ${repo}/${name}`);
    t.regex(r.stderr, /No such file or directory/, name);
  }
  // "." and ".." are the kernel's own: they are the repository and its parent, never a tag.
  t.is((await sh(`stat -c %i ${repo}/.`)).stdout, (await sh(`stat -c %i ${repo}`)).stdout);
});

test('files written through a private daemon mount land 0600 in 0700 folders of the staging tree (new tag, copied-in tag, truncate)', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const { env } = await cliEnv(t);
  const src = await tempDir(t);
  await writeFile(path.join(src, 'old.txt'), 'published\n');
  await writeFile(path.join(src, 'new.txt'), 'written\n');
  t.is((await runCli(['push', `${reg.host}/perm/app:v1`, 'old.txt'], { cwd: src, env })).code, 0);
  const d = await startDaemon(t, { source: reg.host });
  const mnt = d.dirs.mnt;
  // A new tag folder (mkdir -p, cp), a published tag changed (copied into staging first), a truncate.
  t.is((await sh(`mkdir -p ${mnt}/perm/app/v2/sub && cp ${src}/new.txt ${mnt}/perm/app/v2/sub/ && cp ${src}/new.txt ${mnt}/perm/app/v2/`)).code, 0);
  t.is((await sh(`cp ${src}/new.txt ${mnt}/perm/app/v1/ && : > ${mnt}/perm/app/v1/old.txt && echo again > ${mnt}/perm/app/v1/new.txt`)).code, 0);
  const stat = await sh(`cd ${d.dirs.staging} && find perm -name '.regfs*' -prune -o -printf '%y %m %p\\n' | sort -k3`);
  const lines = stat.stdout.trim().split('\n');
  t.true(lines.length >= 8, stat.stdout);
  for (const l of lines) {
    const [type, mode, p] = l.split(' ');
    if (type === 'd') t.is(mode, '700', `${p} (${l})`);
    else t.is(mode, '600', `${p} (${l})`);
  }
  t.is(await readFile(path.join(d.dirs.staging, 'perm/app/v1/new.txt'), 'utf8'), 'again\n');
});

test('two blobs that each fit but not together: the one whose fetch hits ENOSPC streams through, both read right', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const { env } = await cliEnv(t);
  const src = await tempDir(t);
  t.is((await sh(`head -c ${40 * 1024 * 1024} /dev/urandom > ${src}/one.bin && head -c ${40 * 1024 * 1024} /dev/urandom > ${src}/two.bin`)).code, 0);
  t.is((await runCli(['push', `${reg.host}/pair:v1`, 'one.bin', 'two.bin'], { cwd: src, env, timeoutMs: 120_000 })).code, 0);
  const base = await tempDir(t);
  const fsDir = path.join(base, 'tmpfs');
  await mkdir(fsDir);
  const mounted = await sh(`mount -t tmpfs -o size=64m tmpfs ${fsDir}`);
  t.is(mounted.code, 0, mounted.stderr);
  t.teardown(() => sh(`umount ${fsDir}`));
  const m = await startMount(t, reg.host, { cacheDir: path.join(fsDir, 'cache') });
  const v1 = path.join(m.mnt, 'pair/v1');
  const both = await sh(`(cmp ${v1}/one.bin ${src}/one.bin && echo one-ok) & (cmp ${v1}/two.bin ${src}/two.bin && echo two-ok) & wait`, { timeoutMs: 120_000 });
  t.deepEqual(both.stdout.trim().split('\n').sort(), ['one-ok', 'two-ok'], both.stderr + m.logs());
  t.regex(m.logs(), /cache file system is full: streaming it from the registry, nothing kept/);
  t.is(await m.stop(), 0);
});

test('a streamed blob is verified as it is read: one flipped byte fails the read bringing its last byte, no later read returns wrong bytes; strict verify refuses to stream it', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const proxy = await startFaultProxy(t, reg.url);
  const { env } = await cliEnv(t);
  const src = await tempDir(t);
  t.is((await sh(`head -c ${24 * 1024 * 1024} /dev/urandom > ${src}/s.bin`)).code, 0);
  t.is((await runCli(['push', `${reg.host}/streamed:v1`, 's.bin'], { cwd: src, env })).code, 0);
  const base = await tempDir(t);
  const fsDir = path.join(base, 'tmpfs');
  await mkdir(fsDir);
  const mounted = await sh(`mount -t tmpfs -o size=16m tmpfs ${fsDir}`);
  t.is(mounted.code, 0, mounted.stderr);
  t.teardown(() => sh(`umount ${fsDir}`));
  const m = await startMount(t, proxy.host, { cacheDir: path.join(fsDir, 'lazy') });
  const file = path.join(m.mnt, 'streamed/v1/s.bin');
  proxy.rules.push({ method: 'GET', path: /\/blobs\/sha256:/, flipByteAt: 100, times: 1 });
  const first = await sh(`cat ${file} > /dev/null`);
  t.regex(first.stderr, /Input\/output error/, m.logs());
  t.regex(m.logs(), /digest mismatch: streamed blob/);
  await laterReadsNeverWrong(t, file, path.join(src, 's.bin'), path.join(src, 'got.bin'));
  await m.stop();
  const strict = await startMount(t, reg.host, { cacheDir: path.join(fsDir, 'strict'), args: ['--verify', 'strict'] });
  const r = await sh(`cat ${strict.mnt}/streamed/v1/s.bin > /dev/null`);
  t.regex(r.stderr, /Input\/output error/);
  t.regex(strict.logs(), /does not fit in the cache file system, and --verify strict serves no byte/);
});

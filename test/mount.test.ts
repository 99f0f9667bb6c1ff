import test from 'ava';
import { createHash } from 'node:crypto';
import { mkdir, readFile, writeFile, readdir, stat } from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';
import { startRegistry } from '../lab/registry.js';
import { startFaultProxy } from '../lab/fault-proxy.js';
import { cliEnv, runCli, tempDir } from '../lab/cli.js';
import { isMounted, sh, startMount } from '../lab/mount.js';
import { RemoteRegistry } from '../registry/remote.js';
import { digestOf } from '../registry/digest.js';
import { EMPTY_CONFIG, MediaType } from '../registry/media-types.js';

const sha = (b: Buffer | string): string => createHash('sha256').update(b).digest('hex');

test('the mount shows artifacts as a tree: files, nested titles, a directory layer, an index; bytes, sizes and xattrs match', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const { env } = await cliEnv(t);
  const src = await tempDir(t);
  await writeFile(path.join(src, 'single.txt'), 'just one\n');
  await mkdir(path.join(src, 'docs/guide'), { recursive: true });
  await writeFile(path.join(src, 'docs/guide/intro.md'), '# intro\n');
  await writeFile(path.join(src, 'big.bin'), Buffer.alloc(3 * 1024 * 1024 + 17, 9));
  await mkdir(path.join(src, 'site/css'), { recursive: true });
  await writeFile(path.join(src, 'site/index.html'), '<html></html>');
  await writeFile(path.join(src, 'site/css/a.css'), 'body{}');
  const push = async (ref: string, ...files: string[]): Promise<string> => {
    const r = await runCli(['push', `${reg.host}/${ref}`, ...files, '--format', 'json'], { cwd: src, env });
    t.is(r.code, 0, r.stderr);
    return (JSON.parse(r.stdout) as { digest: string }).digest;
  };
  const d1 = await push('apps/one:v1', 'single.txt');
  await push('apps/many:v2', 'single.txt', 'docs/guide/intro.md', 'big.bin', 'site');
  // An index over two platform manifests.
  const repo = new RemoteRegistry(reg.host).repository('apps/multi');
  t.teardown(() => repo.registry.close());
  const children = [];
  for (const arch of ['amd64', 'arm64']) {
    const data = Buffer.from(`binary for ${arch}`);
    const layer = { mediaType: MediaType.ociLayerTar, digest: digestOf(data), size: data.length, annotations: { 'org.opencontainers.image.title': 'tool' } };
    await repo.pushBlob(layer, () => Readable.from([data]));
    await repo.pushBlob({ mediaType: EMPTY_CONFIG.mediaType, digest: EMPTY_CONFIG.digest, size: 2 }, () => Readable.from([Buffer.from('{}')]));
    const m = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MediaType.ociManifest, artifactType: 'application/x.tool', config: { mediaType: EMPTY_CONFIG.mediaType, digest: EMPTY_CONFIG.digest, size: 2 }, layers: [layer] }));
    const desc = await repo.pushManifest(m, MediaType.ociManifest, []);
    children.push({ ...desc, platform: { os: 'linux', architecture: arch } });
  }
  await repo.pushManifest(Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MediaType.ociIndex, manifests: children })), MediaType.ociIndex, ['latest']);

  const m = await startMount(t, reg.host);
  const mnt = m.mnt;
  t.deepEqual(await readdir(mnt), ['apps']);
  t.deepEqual(await readdir(path.join(mnt, 'apps')), ['many', 'multi', 'one']);
  t.deepEqual(await readdir(path.join(mnt, 'apps/many/v2')), ['big.bin', 'docs', 'single.txt', 'site']);
  const find = await sh(`cd ${mnt}/apps/many/v2 && find . | sort`);
  t.deepEqual(find.stdout.trim().split('\n'), ['.', './big.bin', './docs', './docs/guide', './docs/guide/intro.md', './single.txt', './site', './site/css', './site/css/a.css', './site/index.html']);
  t.is((await stat(path.join(mnt, 'apps/many/v2/big.bin'))).size, 3 * 1024 * 1024 + 17);
  const st = await stat(path.join(mnt, 'apps/one/v1/single.txt'));
  // 0644/0755 as rclone and mountpoint-s3 show them (writes are still refused: EROFS).
  t.is(st.mode & 0o7777, 0o644);
  t.is((await stat(path.join(mnt, 'apps/one/v1'))).mode & 0o7777, 0o755);
  for (const f of ['single.txt', 'docs/guide/intro.md', 'big.bin', 'site/index.html', 'site/css/a.css']) {
    const c = await sh(`cmp ${path.join(src, f)} ${path.join(mnt, 'apps/many/v2', f)}`);
    t.is(c.code, 0, `${f}: ${c.stdout}${c.stderr}`);
  }
  // cp -r gives exactly what regfs pull gives.
  const copied = await tempDir(t);
  const pulled = await tempDir(t);
  t.is((await sh(`cp -r ${mnt}/apps/many/v2/. ${copied}/`)).code, 0);
  t.is((await runCli(['pull', `${reg.host}/apps/many:v2`, '-o', pulled], { env })).code, 0);
  const diff = await sh(`diff -r ${copied} ${pulled}`);
  t.is(diff.code, 0, diff.stdout);
  // Extended attributes.
  const fattr = await sh(`getfattr -d -m - ${mnt}/apps/one/v1/single.txt ${mnt}/apps/one/v1`);
  t.true(fattr.stdout.includes(`user.oci.digest="sha256:${sha('just one\n')}"`), fattr.stdout);
  t.true(fattr.stdout.includes('user.oci.annotation.org.opencontainers.image.title="single.txt"'));
  t.true(fattr.stdout.includes(`user.oci.manifest.digest="${d1}"`));
  t.true(fattr.stdout.includes('user.oci.artifacttype="application/vnd.unknown.artifact.v1"'));
  // Manifest by digest (looked up, not listed), and the index by platform.
  t.is(await readFile(path.join(mnt, 'apps/one', d1, 'single.txt'), 'utf8'), 'just one\n');
  t.false((await readdir(path.join(mnt, 'apps/one'))).includes(d1));
  t.deepEqual(await readdir(path.join(mnt, 'apps/multi/latest')), ['linux-amd64', 'linux-arm64']);
  t.is(await readFile(path.join(mnt, 'apps/multi/latest/linux-arm64/tool'), 'utf8'), 'binary for arm64');
  // Read-only, with the documented errno.
  const w = await sh(`echo x > ${mnt}/apps/one/v1/single.txt`);
  t.regex(w.stderr, /Read-only file system/);
  const mk = await sh(`mkdir ${mnt}/apps/one/newtag`);
  t.regex(mk.stderr, /Read-only file system/);
  const missing = await sh(`cat ${mnt}/apps/one/nope/x`);
  t.regex(missing.stderr, /No such file or directory/);
  const df = await sh(`df ${mnt}`);
  t.is(df.code, 0);
  t.is(await m.stop(), 0);
});

test('a name that is both a tag and a nested repository: the repository wins, the tag stays reachable as :tag; a repository without tags hides nothing', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const { env } = await cliEnv(t);
  const src = await tempDir(t);
  await writeFile(path.join(src, 'tagfile'), 'from tag a:b');
  await writeFile(path.join(src, 'repofile'), 'from repo a/b');
  t.is((await runCli(['push', `${reg.host}/a:b`, 'tagfile'], { cwd: src, env })).code, 0);
  t.is((await runCli(['push', `${reg.host}/a/b:c`, 'repofile'], { cwd: src, env })).code, 0);
  // a:d is a tag, and a/d/e a repository the catalog lists only because a blob was uploaded to it (an
  // abandoned push): it has no tag, so it must not hide the tag d.
  t.is((await runCli(['push', `${reg.host}/a:d`, 'tagfile'], { cwd: src, env })).code, 0);
  const blob = await runCli(['blob', 'push', `${reg.host}/a/d/e`, 'repofile'], { cwd: src, env });
  t.is(blob.code, 0, blob.stderr);
  const catalog = (await (await fetch(`${reg.url}/v2/_catalog`)).json()) as { repositories: string[] };
  t.true(catalog.repositories.includes('a/d/e'), JSON.stringify(catalog));
  const m = await startMount(t, reg.host);
  t.deepEqual(await readdir(path.join(m.mnt, 'a')), [':b', 'b', 'd']);
  t.deepEqual(await readdir(path.join(m.mnt, 'a/b')), ['c']);
  t.is(await readFile(path.join(m.mnt, 'a/b/c/repofile'), 'utf8'), 'from repo a/b');
  t.is(await readFile(path.join(m.mnt, 'a/:b/tagfile'), 'utf8'), 'from tag a:b');
  t.deepEqual(await readdir(path.join(m.mnt, 'a/d')), ['tagfile']);
  t.is(await readFile(path.join(m.mnt, 'a/d/tagfile'), 'utf8'), 'from tag a:b');
  t.is(await readFile(path.join(m.mnt, 'a/:d/tagfile'), 'utf8'), 'from tag a:b');
  // `regfs unmount` from outside detaches the tree and the mount process exits cleanly, releasing the cache.
  const un = await runCli(['unmount', m.mnt], { env });
  t.is(un.code, 0, un.stderr);
  const exit = await new Promise<number | null>((resolve) => (m.child.exitCode !== null ? resolve(m.child.exitCode) : m.child.once('exit', (c) => resolve(c))));
  t.is(exit, 0);
  t.false(await isMounted(m.mnt));
  const again = await runCli(['unmount', m.mnt], { env });
  t.is(again.code, 4);
});

test('a stale mount left by a crash is cleared at the next start', async (t) => {
  const { env } = await cliEnv(t);
  const src = await tempDir(t);
  await writeFile(path.join(src, 's.txt'), 'survives');
  const store = await tempDir(t);
  t.is((await runCli(['push', `oci:${store}/st:v1`, 's.txt'], { cwd: src, env })).code, 0);
  const m = await startMount(t, `oci:${store}`);
  t.is(await readFile(path.join(m.mnt, 'st/v1/s.txt'), 'utf8'), 'survives');
  await m.crash();
  t.true(await isMounted(m.mnt), 'kill -9 leaves the mount behind');
  const stale = await sh(`ls ${m.mnt}`);
  t.regex(stale.stderr, /Transport endpoint is not connected/);
  const m2 = await startMount(t, `oci:${store}`, { mnt: m.mnt, cacheDir: m.cacheDir });
  t.is(await readFile(path.join(m2.mnt, 'st/v1/s.txt'), 'utf8'), 'survives');
  t.regex(m2.logs(), /clearing a stale mount/);
});

test('laziness: 4 KiB of a 1 GiB file transfers a few MiB; 16 readers of one blob cause one fetch; a re-read and a restart fetch nothing', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const proxy = await startFaultProxy(t, reg.url);
  const { env } = await cliEnv(t);
  const src = await tempDir(t);
  const size = 1024 * 1024 * 1024;
  await sh(`head -c ${size} /dev/urandom > ${src}/large.bin && head -c 2000000 /dev/urandom > ${src}/medium.bin`);
  t.is((await runCli(['push', `${reg.host}/lazy:v1`, 'large.bin', 'medium.bin'], { cwd: src, env })).code, 0);
  const cacheDir = path.join(await tempDir(t), 'cache');
  let m = await startMount(t, proxy.host, { cacheDir });
  proxy.reset();
  const head = await sh(`head -c 4096 ${m.mnt}/lazy/v1/large.bin | cmp - <(head -c 4096 ${src}/large.bin)`);
  t.is(head.code, 0, head.stderr);
  const blobBytes = proxy.requests.filter((r) => /\/blobs\//.test(r.path)).reduce((a, r) => a + r.bytesOut, 0);
  t.true(blobBytes <= 8 * 1024 * 1024, `head -c 4096 transferred ${blobBytes} bytes`);

  proxy.reset();
  const readers = await sh(`for i in $(seq 16); do (cmp ${m.mnt}/lazy/v1/medium.bin ${src}/medium.bin && echo ok) & done; wait`);
  t.is(readers.stdout.trim().split('\n').filter((l) => l === 'ok').length, 16, readers.stderr);
  t.is(proxy.count('GET', /\/blobs\//), 1, '16 readers, one upstream fetch');

  const full = await sh(`cmp ${m.mnt}/lazy/v1/large.bin ${src}/large.bin`);
  t.is(full.code, 0, full.stdout + full.stderr);
  proxy.reset();
  t.is((await sh(`cat ${m.mnt}/lazy/v1/large.bin ${m.mnt}/lazy/v1/medium.bin > /dev/null`)).code, 0);
  t.is(proxy.count('GET', /\/blobs\//), 0, 'a second read transfers nothing');
  t.is(await m.stop(), 0);

  m = await startMount(t, proxy.host, { cacheDir });
  proxy.reset();
  t.is((await sh(`cmp ${m.mnt}/lazy/v1/large.bin ${src}/large.bin`)).code, 0);
  t.is(proxy.count('GET', /\/blobs\//), 0, 'after a restart nothing again');
});

test('corruption: wrong bytes from the registry give EIO and nothing cached; a cached blob altered on disk is fetched again', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const proxy = await startFaultProxy(t, reg.url);
  const { env } = await cliEnv(t);
  const src = await tempDir(t);
  await writeFile(path.join(src, 'c.txt'), 'correct content\n');
  t.is((await runCli(['push', `${reg.host}/corrupt:v1`, 'c.txt'], { cwd: src, env })).code, 0);
  const m = await startMount(t, proxy.host);
  proxy.rules.push({ method: 'GET', path: /\/blobs\/sha256:/, flipByteAt: 2 });
  const bad = await sh(`cat ${m.mnt}/corrupt/v1/c.txt`);
  t.regex(bad.stderr, /Input\/output error/);
  const hex = sha('correct content\n');
  await t.throwsAsync(stat(path.join(m.cacheDir, 'blobs/sha256', hex)));
  proxy.rules.length = 0;
  // After a mismatch the digest is refused for a short back-off, then fetched afresh.
  let again = '';
  for (const until = Date.now() + 20_000; again !== 'correct content\n' && Date.now() < until; ) {
    again = (await sh(`cat ${m.mnt}/corrupt/v1/c.txt`)).stdout;
    if (again !== 'correct content\n') await new Promise((r) => setTimeout(r, 500));
  }
  t.is(again, 'correct content\n');
  t.true(m.logs().includes(`sha256:${hex}`), 'the log names the digest');
  await m.stop();
  // Alter the cached copy while the mount is down: the next mount detects it and refetches.
  await writeFile(path.join(m.cacheDir, 'blobs/sha256', hex), 'CORRUPT content\n');
  const m2 = await startMount(t, proxy.host, { cacheDir: m.cacheDir });
  proxy.reset();
  t.is((await sh(`cat ${m2.mnt}/corrupt/v1/c.txt`)).stdout, 'correct content\n');
  t.true(proxy.count('GET', /\/blobs\//) >= 1, 'fetched again');
});

test('offline: cached files and listings keep working, uncached reads fail with EIO within seconds', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const { env } = await cliEnv(t);
  const src = await tempDir(t);
  await writeFile(path.join(src, 'cached.txt'), 'I am cached');
  await writeFile(path.join(src, 'uncached.txt'), 'I am not');
  t.is((await runCli(['push', `${reg.host}/off:v1`, 'cached.txt', 'uncached.txt'], { cwd: src, env })).code, 0);
  const m = await startMount(t, reg.host, { args: ['--metadata-ttl', '1'] });
  t.is(await readFile(path.join(m.mnt, 'off/v1/cached.txt'), 'utf8'), 'I am cached');
  await reg.kill();
  await new Promise((r) => setTimeout(r, 1500));
  t.is(await readFile(path.join(m.mnt, 'off/v1/cached.txt'), 'utf8'), 'I am cached');
  t.deepEqual((await readdir(path.join(m.mnt, 'off/v1'))).sort(), ['cached.txt', 'uncached.txt']);
  const started = Date.now();
  const r = await sh(`cat ${m.mnt}/off/v1/uncached.txt`);
  t.regex(r.stderr, /Input\/output error/);
  t.true(Date.now() - started < 20_000);
});

test('the same tree over an OCI layout made by skopeo copy', async (t) => {
  const { env } = await cliEnv(t);
  const src = await tempDir(t);
  await writeFile(path.join(src, 'layout.txt'), 'in a layout');
  const store = await tempDir(t);
  const first = path.join(store, 'first');
  t.is((await runCli(['push', `oci:${first}:v1`, 'layout.txt'], { cwd: src, env })).code, 0);
  await mkdir(path.join(store, 'team/copied'), { recursive: true });
  const copy = await sh(`skopeo --insecure-policy copy --preserve-digests oci:${first}:v1 oci:${store}/team/copied:v9`);
  t.is(copy.code, 0, copy.stderr);
  const m = await startMount(t, `oci:${store}`);
  t.deepEqual((await readdir(m.mnt)).sort(), ['first', 'team']);
  t.is(await readFile(path.join(m.mnt, 'team/copied/v9/layout.txt'), 'utf8'), 'in a layout');
  t.is(await readFile(path.join(m.mnt, 'first/v1/layout.txt'), 'utf8'), 'in a layout');
});

test('a tag moved to new content shows the new bytes after the metadata TTL, never a mix', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const { env } = await cliEnv(t);
  const src = await tempDir(t);
  const a = Buffer.alloc(2 * 1024 * 1024, 0x61);
  const b = Buffer.alloc(2 * 1024 * 1024, 0x62);
  await writeFile(path.join(src, 'f.bin'), a);
  t.is((await runCli(['push', `${reg.host}/moving:cur`, 'f.bin'], { cwd: src, env })).code, 0);
  const m = await startMount(t, reg.host, { args: ['--metadata-ttl', '1'] });
  const file = path.join(m.mnt, 'moving/cur/f.bin');
  t.true((await readFile(file)).equals(a));
  await writeFile(path.join(src, 'f.bin'), b);
  t.is((await runCli(['push', `${reg.host}/moving:cur`, 'f.bin'], { cwd: src, env })).code, 0);
  const deadline = Date.now() + 10_000;
  let seenNew = false;
  while (Date.now() < deadline && !seenNew) {
    const got = await readFile(file);
    const allA = got.equals(a);
    const allB = got.equals(b);
    t.true(allA || allB, 'never a mix of old and new bytes');
    seenNew = allB;
    if (!seenNew) await new Promise((r) => setTimeout(r, 200));
  }
  t.true(seenNew, 'the new content shows after the TTL');
});

test('unsafe and colliding titles are hidden with a logged warning, never escaping the tree', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const repo = new RemoteRegistry(reg.host).repository('hostile');
  t.teardown(() => repo.registry.close());
  await repo.pushBlob({ mediaType: EMPTY_CONFIG.mediaType, digest: EMPTY_CONFIG.digest, size: 2 }, () => Readable.from([Buffer.from('{}')]));
  const layers = [];
  for (const [title, body] of [['good.txt', 'good'], ['../escape.txt', 'evil1'], ['/abs.txt', 'evil2'], ['good.txt', 'dup'], ['x'.repeat(300), 'long'], ['dir/ok.txt', 'nested']]) {
    const data = Buffer.from(body!);
    const d = { mediaType: MediaType.ociLayerTar, digest: digestOf(data), size: data.length, annotations: { 'org.opencontainers.image.title': title! } };
    await repo.pushBlob(d, () => Readable.from([data]));
    layers.push(d);
  }
  const m = { schemaVersion: 2, mediaType: MediaType.ociManifest, artifactType: 'application/x.evil', config: { mediaType: EMPTY_CONFIG.mediaType, digest: EMPTY_CONFIG.digest, size: 2 }, layers };
  await repo.pushManifest(Buffer.from(JSON.stringify(m)), MediaType.ociManifest, ['v1']);
  const mnt = await startMount(t, reg.host);
  t.deepEqual((await readdir(path.join(mnt.mnt, 'hostile/v1'))).sort(), ['dir', 'good.txt']);
  t.is(await readFile(path.join(mnt.mnt, 'hostile/v1/good.txt'), 'utf8'), 'good', 'the first layer with a title wins');
  t.is(await readFile(path.join(mnt.mnt, 'hostile/v1/dir/ok.txt'), 'utf8'), 'nested');
  await t.throwsAsync(stat(path.join(mnt.mnt, 'hostile/escape.txt')));
  const logs = mnt.logs();
  for (const re of [/hiding layer .*"\.\.\/escape\.txt"/, /hiding layer .*"\/abs\.txt"/, /hiding layer .*collides/, /hiding layer .*255/]) t.regex(logs, re);
});

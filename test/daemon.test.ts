import test from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, readFile, rename, stat, utimes, writeFile, cp } from 'node:fs/promises';
import path from 'node:path';
import { startRegistry } from '../lab/registry.js';
import { startFaultProxy } from '../lab/fault-proxy.js';
import { cliEnv, runCli, tempDir } from '../lab/cli.js';
import { startDaemon, waitFor } from '../lab/daemon.js';
import { isMounted, sh } from '../lab/mount.js';
import { skopeoInspect } from '../lab/skopeo.js';

const sha = (b: Buffer | string): string => createHash('sha256').update(b).digest('hex');

test('files copied into staging are pushed: skopeo sees the artifact and the mount shows it at once', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const d = await startDaemon(t, { source: reg.host, args: ['--metadata-ttl', '600'] });
  // Listing before the push caches "no such repository" for the TTL; the push must drop it.
  t.deepEqual(await sh(`ls ${d.dirs.mnt}`).then((r) => r.stdout.trim()), '');
  const tagDir = path.join(d.dirs.staging, 'team/app/v1');
  await mkdir(path.join(tagDir, 'conf'), { recursive: true });
  await writeFile(path.join(tagDir, 'app.bin'), Buffer.alloc(100_000, 1));
  await writeFile(path.join(tagDir, 'conf/settings.ini'), 'a=1\n');
  const info = await waitFor(() => skopeoInspect(reg.host, 'team/app:v1'), 90_000, 'the staged tag in the registry');
  const titles = info.LayersData.map((l) => l.Annotations['org.opencontainers.image.title']).sort();
  t.deepEqual(titles, ['app.bin', 'conf']);
  t.true(info.LayersData.some((l) => l.Digest === `sha256:${sha(Buffer.alloc(100_000, 1))}`));
  const cmp = await waitFor(async () => (await sh(`cmp ${d.dirs.mnt}/team/app/v1/app.bin ${tagDir}/app.bin`)).code === 0, 5000, 'the pushed file through the mount');
  t.true(cmp);
  t.is(await readFile(path.join(d.dirs.mnt, 'team/app/v1/conf/settings.ini'), 'utf8'), 'a=1\n');
  // The files stay where they are; an unchanged tag is not pushed again; an edit updates the tag.
  t.is(await readFile(path.join(tagDir, 'conf/settings.ini'), 'utf8'), 'a=1\n');
  const before = info.Digest;
  await writeFile(path.join(tagDir, 'app.bin'), Buffer.alloc(100_000, 2));
  const after = await waitFor(async () => {
    const i = await skopeoInspect(reg.host, 'team/app:v1');
    return i && i.Digest !== before ? i : undefined;
  }, 90_000, 'the edited tag');
  t.true(after.LayersData.some((l) => l.Digest === `sha256:${sha(Buffer.alloc(100_000, 2))}`));
  // The journal records "done" just after the manifest lands: wait for the log line, then count.
  await d.waitLog(/pushed team\/app:v1[\s\S]*pushed team\/app:v1/);
  const pushes = (d.logs().match(/pushed team\/app:v1/g) ?? []).length;
  t.is(pushes, 2, d.logs());
  t.is(await d.stop(), 0);
  t.false(await isMounted(d.dirs.mnt));
});

test('the control CLI: status, mounts, refresh, rescan, retry, cache stats and prune; socket 0600 in a 0700 dir; a second daemon is refused', async (t) => {
  const { env } = await cliEnv(t);
  const src = await tempDir(t);
  await writeFile(path.join(src, 'f.txt'), 'layout file');
  const store = await tempDir(t);
  t.is((await runCli(['push', `oci:${store}/lay/out:v1`, 'f.txt'], { cwd: src, env })).code, 0);
  const d = await startDaemon(t, { source: `oci:${store}` });
  const sock = ['--socket', d.dirs.socket];
  t.is((await stat(d.dirs.socket)).mode & 0o777, 0o600);
  t.is((await stat(path.dirname(d.dirs.socket))).mode & 0o777, 0o700);
  t.is(await readFile(path.join(d.dirs.mnt, 'lay/out/v1/f.txt'), 'utf8'), 'layout file');

  const st = await runCli(['status', ...sock, '--format', 'json'], { env });
  t.is(st.code, 0, st.stderr);
  const s = JSON.parse(st.stdout) as { pid: number; mounts: Array<{ mountpoint: string }>; cache: { blobs: number; hits: number } };
  t.is(s.pid, d.child.pid ?? -1);
  t.deepEqual(s.mounts.map((m) => m.mountpoint), [d.dirs.mnt]);
  t.true(s.cache.blobs >= 1);
  const text = await runCli(['status', ...sock], { env });
  t.regex(text.stdout, /Mounts:\n {2}oci:.* -> /);

  const extra = path.join(d.dirs.base, 'mnt2');
  await mkdir(extra);
  t.is((await runCli(['mounts', 'add', `oci:${store}`, extra, ...sock], { env })).code, 0);
  t.is(await readFile(path.join(extra, 'lay/out/v1/f.txt'), 'utf8'), 'layout file');
  const ls = await runCli(['mounts', 'ls', ...sock], { env });
  t.is(ls.stdout.trim().split('\n').length, 2);
  t.is((await runCli(['mounts', 'rm', extra, ...sock], { env })).code, 0);
  t.false(await isMounted(extra));
  t.is((await runCli(['refresh', path.join(d.dirs.mnt, 'lay/out'), ...sock], { env })).code, 0);
  t.is((await runCli(['refresh', '/not/a/mount', ...sock], { env })).code, 4);
  t.regex((await runCli(['rescan', ...sock], { env })).stdout, /Queued: 0/);
  t.regex((await runCli(['retry', ...sock], { env })).stdout, /Requeued: 0/);
  const cs = await runCli(['cache', 'stats', ...sock, '--format', 'json'], { env });
  t.true((JSON.parse(cs.stdout) as { bytesOnDisk: number }).bytesOnDisk > 0);
  const pr = await runCli(['cache', 'prune', '--max-size', '0', ...sock], { env });
  t.regex(pr.stdout, /Evicted \d+ blobs/);

  // A second daemon on the same socket, cache or mountpoint fails with a clear message.
  const second = await startDaemon(t, { source: `oci:${store}`, dirs: { ...d.dirs, mnt: path.join(d.dirs.base, 'mnt3') }, waitReady: false });
  await waitFor(async () => second.child.exitCode !== null, 60_000, 'the second daemon to give up');
  t.not(second.child.exitCode, 0);
  t.regex(second.logs(), /in use by pid|already running/);
  t.is(await d.stop(), 0);
  const none = await runCli(['status', ...sock], { env });
  t.is(none.code, 1);
  t.regex(none.stderr, /no regfs daemon is running.*regfs daemon/);
  t.is(none.stderr.trim().split('\n').length, 1);
});

test('kill -9 in the middle of a staged 200 MiB push: after a restart it completes exactly once, the stale mount is cleared', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const proxy = await startFaultProxy(t, reg.url);
  const base = await tempDir(t, 'regfs-daemon-');
  const dirs = { base, mnt: path.join(base, 'mnt'), staging: path.join(base, 'staging'), cache: path.join(base, 'cache'), state: path.join(base, 'state'), socket: path.join(base, 'run/control.sock') };
  // Slow the blob upload so the kill lands in the middle of it.
  proxy.rules.push({ method: 'PUT', path: /\/blobs\/uploads\//, latencyMs: 3000 });
  proxy.rules.push({ method: 'PATCH', path: /\/blobs\/uploads\//, latencyMs: 3000 });
  const d = await startDaemon(t, { source: proxy.host, dirs });
  const tagDir = path.join(dirs.staging, 'big/blob/v1');
  await mkdir(tagDir, { recursive: true });
  await sh(`head -c ${200 * 1024 * 1024} /dev/urandom > ${base}/big.bin`);
  await cp(path.join(base, 'big.bin'), path.join(tagDir, 'big.bin'));
  await waitFor(async () => proxy.requests.some((r) => /\/blobs\/uploads\//.test(r.path) && r.method !== 'POST'), 120_000, 'the upload to start', d.logs);
  await d.crash();
  t.true(await isMounted(dirs.mnt), 'kill -9 leaves a stale mount');
  t.is(proxy.count('PUT', /\/manifests\//), 0);
  proxy.rules.length = 0;
  const d2 = await startDaemon(t, { source: proxy.host, dirs });
  const info = await waitFor(() => skopeoInspect(proxy.host, 'big/blob:v1'), 120_000, 'the push to complete after restart', d2.logs);
  const bigDigest = `sha256:${sha(await readFile(path.join(base, 'big.bin')))}`;
  t.true(info.LayersData.some((l) => l.Digest === bigDigest));
  t.is(proxy.count('PUT', /\/manifests\//), 1, 'exactly one manifest PUT');
  t.is((await stat(path.join(tagDir, 'big.bin'))).size, 200 * 1024 * 1024, 'staged file untouched');
  t.regex(d2.logs(), /clearing a stale mount/);
  t.is(await d2.stop(), 0);
});

test('a file moved in whole uploads at once (the quiet period counts from mtimes); an unchanged big file is not uploaded again', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const proxy = await startFaultProxy(t, reg.url);
  // A 10-minute quiet period: anything that waits for it would not land within this test.
  const d = await startDaemon(t, { source: proxy.host, args: ['--quiet-period', '600'] });
  const hourAgo = new Date(Date.now() - 3600_000);
  const big = randomBytes(20 * 1024 * 1024);
  const src = path.join(d.dirs.base, 'src');
  await mkdir(src);
  await writeFile(path.join(src, 'big.bin'), big);
  await writeFile(path.join(src, 'note.txt'), 'first');
  for (const f of ['big.bin', 'note.txt']) await utimes(path.join(src, f), hourAgo, hourAgo);
  // A folder still being written (fresh mtime) waits for the quiet period.
  await mkdir(path.join(d.dirs.staging, 'q/fresh/v1'), { recursive: true });
  await writeFile(path.join(d.dirs.staging, 'q/fresh/v1/new.txt'), 'just written');
  const tagDir = path.join(d.dirs.staging, 'q/old/v1');
  await mkdir(path.dirname(tagDir), { recursive: true });
  await rename(src, tagDir);
  const first = await waitFor(() => skopeoInspect(proxy.host, 'q/old:v1'), 120_000, 'the moved-in tag');
  t.true(first.LayersData.some((l) => l.Digest === `sha256:${sha(big)}`));
  t.is(proxy.count('PATCH', /\/q\/old\/blobs\/uploads\//), 1, 'the big file went up as one streamed PATCH');
  t.is(proxy.count('PUT', /\/q\/fresh\/manifests\//), 0, 'the fresh folder is still inside its quiet period');
  // Edit the small file (old mtime again, so no wait): the big one is neither read nor uploaded again.
  proxy.reset();
  await writeFile(path.join(tagDir, 'note.txt'), 'second');
  await utimes(path.join(tagDir, 'note.txt'), hourAgo, hourAgo);
  const second = await waitFor(async () => {
    const i = await skopeoInspect(proxy.host, 'q/old:v1');
    return i && i.Digest !== first.Digest ? i : undefined;
  }, 120_000, 'the edited tag');
  t.true(second.LayersData.some((l) => l.Digest === `sha256:${sha('second')}`));
  t.true(second.LayersData.some((l) => l.Digest === `sha256:${sha(big)}`));
  t.is(proxy.count('PATCH'), 0, 'no blob was streamed again');
  t.is(proxy.count('PUT', /\/blobs\/uploads\//), 1, 'only the edited file was uploaded');
  t.is(proxy.count('PUT', /\/q\/fresh\/manifests\//), 0);
  t.is(await d.stop(), 0);
});

test('1,000 small files in 20 tag folders are all pushed with bounded memory; a registry outage is retried', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const d = await startDaemon(t, { source: reg.host });
  await reg.kill();
  for (let tag = 0; tag < 20; tag++) {
    const dir = path.join(d.dirs.staging, 'many/files', `t${tag}`);
    await mkdir(dir, { recursive: true });
    await Promise.all(Array.from({ length: 50 }, (_, i) => writeFile(path.join(dir, `f${i}.txt`), `tag ${tag} file ${i}\n`)));
  }
  await new Promise((r) => setTimeout(r, 3000));
  await reg.restart();
  const { env } = await cliEnv(t);
  await waitFor(async () => {
    const r = await runCli(['repo', 'tags', `${reg.host}/many/files`, '--format', 'json'], { env });
    return r.code === 0 && (JSON.parse(r.stdout) as { tags: string[] }).tags.length === 20;
  }, 180_000, 'all 20 tags');
  const out = await tempDir(t);
  const pull = await runCli(['pull', `${reg.host}/many/files:t7`, '-o', out], { env });
  t.is(pull.code, 0, pull.stderr);
  t.is(await readFile(path.join(out, 'f42.txt'), 'utf8'), 'tag 7 file 42\n');
  const rss = await d.rssPeakKiB();
  t.log(`daemon peak RSS ${Math.round(rss / 1024)} MiB`);
  t.true(rss < 400 * 1024, `peak RSS ${rss} KiB`);
  t.is(await d.stop(), 0);
});

test('SIGHUP reloads the config (adds a mount); SIGTERM with pushes pending exits 0 and a restart finishes them', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const proxy = await startFaultProxy(t, reg.url);
  const base = await tempDir(t, 'regfs-daemon-');
  const cfg = path.join(base, 'config.json');
  const m1 = path.join(base, 'm1');
  const m2 = path.join(base, 'm2');
  const staging = path.join(base, 'staging');
  await mkdir(m1);
  await mkdir(m2);
  const m3 = path.join(base, 'm3');
  await mkdir(m3);
  const common = { cacheDir: path.join(base, 'cache'), stateDir: path.join(base, 'state'), socket: path.join(base, 'run/control.sock'), quietSeconds: 0.5 };
  await writeFile(cfg, JSON.stringify({ ...common, mounts: [{ source: proxy.host, mountpoint: m1, staging }] }));
  const { spawn } = await import('node:child_process');
  const { REGFS_BIN } = await import('../lab/cli.js');
  const start = () => {
    // m3 comes from flags, not the file: a SIGHUP must leave it mounted.
    const child = spawn(process.execPath, [REGFS_BIN, 'daemon', '--config', cfg, '--source', proxy.host, '--mountpoint', m3], { stdio: ['ignore', 'pipe', 'pipe'] });
    let logs = '';
    child.stderr.on('data', (x: Buffer) => (logs += x.toString()));
    const exit = new Promise<number | null>((r) => child.on('exit', (c) => r(c)));
    t.teardown(async () => {
      child.kill('SIGKILL');
      await exit;
      await sh(`fusermount -uz ${m1}; fusermount -uz ${m2}; fusermount -uz ${m3}`);
    });
    return { child, exit, logs: () => logs };
  };
  let d = start();
  await waitFor(async () => /regfs daemon running/.test(d.logs()), 60_000, 'daemon start');
  await writeFile(cfg, JSON.stringify({ ...common, mounts: [{ source: proxy.host, mountpoint: m1, staging }, { source: proxy.host, mountpoint: m2 }] }));
  d.child.kill('SIGHUP');
  await waitFor(() => isMounted(m2), 60_000, 'the second mount after SIGHUP');
  t.true(await isMounted(m3), 'the mount given by flags survives the reload');
  // Pushes pending at SIGTERM: the manifest PUT is refused for now.
  proxy.rules.push({ method: 'PUT', path: /\/manifests\//, status: 503 });
  await mkdir(path.join(staging, 'pending/art/v1'), { recursive: true });
  await writeFile(path.join(staging, 'pending/art/v1/p.txt'), 'pending');
  await waitFor(async () => proxy.count('PUT', /\/manifests\//) > 0, 90_000, 'a push attempt');
  d.child.kill('SIGTERM');
  t.is(await d.exit, 0);
  t.false(await isMounted(m1));
  t.false(await isMounted(m2));
  proxy.rules.length = 0;
  d = start();
  await waitFor(() => skopeoInspect(reg.host, 'pending/art:v1'), 60_000, 'the pending push after restart');
  d.child.kill('SIGTERM');
  t.is(await d.exit, 0);
});

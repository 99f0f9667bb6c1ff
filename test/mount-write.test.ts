import test from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import { appendFile, chmod, chown, link, mkdir, open, readFile, readdir, rename, rmdir, stat, symlink, unlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { startRegistry } from '../lab/registry.js';
import { startFaultProxy } from '../lab/fault-proxy.js';
import { cliEnv, runCli, tempDir } from '../lab/cli.js';
import { startDaemon, waitFor } from '../lab/daemon.js';
import { sh, startMount } from '../lab/mount.js';
import { skopeoInspect, skopeoTags, type SkopeoManifest } from '../lab/skopeo.js';
import { resolveConfig, validateConfig } from '../daemon/settings.js';

const sha = (b: Buffer | string): string => createHash('sha256').update(b).digest('hex');
const TITLE = 'org.opencontainers.image.title';

/** errCode runs a file operation that must fail and returns its error code (undefined if it succeeded). */
async function errCode(p: Promise<unknown>): Promise<string | undefined> {
  try {
    await p;
    return undefined;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code;
  }
}

/** layersByTitle maps each layer's title to its digest. */
function layersByTitle(m: SkopeoManifest): Record<string, string> {
  return Object.fromEntries(m.LayersData.map((l) => [l.Annotations[TITLE] ?? '', l.Digest]));
}

interface QueueItem {
  repository: string;
  tag: string;
  state: string;
}

async function queue(socket: string, env: Record<string, string>): Promise<QueueItem[]> {
  const r = await runCli(['status', '--socket', socket, '--format', 'json'], { env });
  if (r.code !== 0) throw new Error(r.stderr);
  return (JSON.parse(r.stdout) as { queue: QueueItem[] }).queue;
}

async function push(t: Parameters<typeof cliEnv>[0], ref: string, cwd: string, files: string[]): Promise<void> {
  const { env } = await cliEnv(t);
  const r = await runCli(['push', ref, ...files], { cwd, env });
  if (r.code !== 0) throw new Error(`push ${ref}: ${r.stderr}`);
}

test('mkdir + cp -r into the mount: read-your-writes before the push, then byte for byte from a second mount; one manifest', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const proxy = await startFaultProxy(t, reg.url);
  // The manifest PUT is refused until the checks below are done: until then only staging has the files.
  proxy.rules.push({ method: 'PUT', path: /\/manifests\//, status: 503 });
  const d = await startDaemon(t, { source: proxy.host });
  const { env } = await cliEnv(t);
  const src = await tempDir(t);
  const big = randomBytes(20 * 1024 * 1024 + 123);
  await writeFile(path.join(src, 'big.bin'), big);
  await writeFile(path.join(src, 'readme.txt'), 'read me\n');
  await mkdir(path.join(src, 'assets/css'), { recursive: true });
  await mkdir(path.join(src, 'assets/img/icons'), { recursive: true });
  await writeFile(path.join(src, 'assets/css/site.css'), 'body { color: red }\n');
  await writeFile(path.join(src, 'assets/img/logo.bin'), randomBytes(300_000));
  await writeFile(path.join(src, 'assets/img/icons/x.svg'), '<svg/>');

  const tagDir = path.join(d.dirs.mnt, 'web/site/v1');
  const cp = await sh(`mkdir -p ${tagDir} && cp -r ${src}/. ${tagDir}/`);
  t.is(cp.code, 0, cp.stderr);
  // Read-your-writes: the same mount shows the new repository, tag and files before anything landed.
  const same = await sh(`diff -r ${src} ${tagDir}`);
  t.is(same.code, 0, same.stdout + same.stderr);
  t.deepEqual(await readdir(d.dirs.mnt), ['web']);
  t.deepEqual(await readdir(path.join(d.dirs.mnt, 'web/site')), ['v1']);
  t.is((await stat(path.join(tagDir, 'big.bin'))).size, big.length);
  t.is((await sh(`getfattr -n user.regfs.staged --only-values ${tagDir}`)).stdout, 'web/site:v1');
  // `regfs status` lists it, not done.
  const items = await waitFor(async () => {
    const q = await queue(d.dirs.socket, env);
    return q.some((i) => i.repository === 'web/site' && i.tag === 'v1') ? q : undefined;
  }, 30_000, 'the push in regfs status');
  t.not(items.find((i) => i.repository === 'web/site')!.state, 'done');
  t.is(await skopeoInspect(reg.host, 'web/site:v1'), undefined, 'nothing has landed yet');

  // In a new repository, a subfolder copied before any file of the tag level looks like a tag folder for
  // a while (here on purpose): once a file lands at the tag level, its queued push is dropped. (Below a
  // known repository, mkdir marks the tag folder, so this cannot happen there.)
  const blog = path.join(d.dirs.mnt, 'web/blog/v1');
  t.is((await sh(`mkdir -p ${blog} && cp -r ${src}/assets ${blog}/`)).code, 0);
  await waitFor(async () => (await queue(d.dirs.socket, env)).some((i) => i.repository === 'web/blog/v1/assets'), 30_000, 'the subfolder queued as a tag');
  t.is((await sh(`cp ${src}/readme.txt ${blog}/`)).code, 0);
  await waitFor(async () => !(await queue(d.dirs.socket, env)).some((i) => i.repository.startsWith('web/blog/v1')), 30_000, 'the subfolder dropped from the queue');
  t.regex(d.logs(), /web\/blog\/v1\/assets:(css|img) is no longer a tag folder/);
  t.deepEqual(await readdir(path.join(d.dirs.mnt, 'web')), ['blog', 'site']);

  proxy.rules.length = 0;
  t.is((await runCli(['retry', '--socket', d.dirs.socket], { env })).code, 0);
  const info = await waitFor(() => skopeoInspect(reg.host, 'web/site:v1'), 90_000, 'the pushed tag');
  t.deepEqual(Object.keys(layersByTitle(info)).sort(), ['assets', 'big.bin', 'readme.txt']);
  t.is(layersByTitle(info)['big.bin'], `sha256:${sha(big)}`);
  const blogInfo = await waitFor(() => skopeoInspect(reg.host, 'web/blog:v1'), 90_000, 'the pushed web/blog:v1');
  t.deepEqual(Object.keys(layersByTitle(blogInfo)).sort(), ['assets', 'readme.txt']);
  // One manifest per tag: nothing pushed under a folder that only looked like a tag mid-copy.
  t.deepEqual(await skopeoTags(reg.host, 'web/site'), ['v1']);
  t.deepEqual(await skopeoTags(reg.host, 'web/blog'), ['v1']);
  // (The dropped subfolder's push may have uploaded blobs, which lists a repository, but no tag landed there.)
  for (const repo of ((await (await fetch(`${reg.url}/v2/_catalog`)).json()) as { repositories: string[] }).repositories) {
    if (repo === 'web/site' || repo === 'web/blog') continue;
    const res = await fetch(`${reg.url}/v2/${repo}/tags/list`);
    const tags = res.ok ? (((await res.json()) as { tags: string[] | null }).tags ?? []) : [];
    t.true(res.ok || res.status === 404, `${repo}: ${res.status}`);
    t.deepEqual(tags, [], repo);
  }

  // Another machine's view: a second mount with its own cache reads it byte for byte.
  const m2 = await startMount(t, reg.host);
  const other = await sh(`diff -r ${src} ${m2.mnt}/web/site/v1`);
  t.is(other.code, 0, other.stdout + other.stderr);
  // web/blog/v1/assets held a tag folder mid-copy, so mkdir of its other subfolder wrote staging's tag marker
  // there: the marker is never published (a second mount shows exactly the copied tree).
  const blogOther = await sh(`diff -r ${src}/assets ${m2.mnt}/web/blog/v1/assets`);
  t.is(blogOther.code, 0, blogOther.stdout + blogOther.stderr);
  // Once landed, the first mount shows the registry's tree again (no overlay), with the same bytes.
  await waitFor(async () => (await sh(`getfattr -n user.regfs.staged ${tagDir}`)).code !== 0, 30_000, 'the overlay to end');
  t.is((await sh(`cmp ${src}/big.bin ${tagDir}/big.bin`)).code, 0);
  t.is(await d.stop(), 0);
});

test('overwriting a file of a tag pushes the other files unchanged plus the new layer; unsupported operations fail at once with their errno', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const src = await tempDir(t);
  await writeFile(path.join(src, 'a.txt'), 'alpha\n');
  await writeFile(path.join(src, 'b.txt'), 'bravo\n');
  await writeFile(path.join(src, 'big.bin'), randomBytes(5 * 1024 * 1024));
  await Promise.all([push(t, `${reg.host}/app/cfg:v1`, src, ['a.txt', 'b.txt', 'big.bin']), push(t, `${reg.host}/org/team/svc:v1`, src, ['a.txt'])]);
  // A longer quiet period: the steps on v2 below are pushed together.
  const d = await startDaemon(t, { source: reg.host, args: ['--quiet-period', '3'] });
  const cfg = path.join(d.dirs.mnt, 'app/cfg');
  const v1 = path.join(cfg, 'v1');
  const before = (await skopeoInspect(reg.host, 'app/cfg:v1'))!;
  t.is(await readFile(path.join(v1, 'b.txt'), 'utf8'), 'bravo\n');

  // cp over an existing file: O_TRUNC, then sequential writes.
  await writeFile(path.join(src, 'b2.txt'), 'bravo, rewritten\n');
  const over = await sh(`cp ${src}/b2.txt ${v1}/b.txt`);
  t.is(over.code, 0, over.stderr + d.logs());
  t.is(await readFile(path.join(v1, 'b.txt'), 'utf8'), 'bravo, rewritten\n');
  t.is(await readFile(path.join(v1, 'a.txt'), 'utf8'), 'alpha\n');
  t.deepEqual(await readdir(v1), ['a.txt', 'b.txt', 'big.bin']);
  const after = await waitFor(async () => {
    const m = await skopeoInspect(reg.host, 'app/cfg:v1');
    return m && m.Digest !== before.Digest ? m : undefined;
  }, 60_000, 'the new manifest of app/cfg:v1');
  const old = layersByTitle(before);
  t.deepEqual(layersByTitle(after), { 'a.txt': old['a.txt'], 'big.bin': old['big.bin'], 'b.txt': `sha256:${sha('bravo, rewritten\n')}` });

  // Unsupported operations fail at once, with their errno.
  const fh = await open(path.join(v1, 'a.txt'), 'r+');
  t.is(await errCode(fh.write('X', 0)), 'ENOTSUP', 'a write into the middle of a file');
  await fh.close();
  t.is(await errCode(link(path.join(v1, 'a.txt'), path.join(v1, 'a2.txt'))), 'EPERM');
  t.is(await errCode(symlink('a.txt', path.join(v1, 'a.lnk'))), 'EPERM');
  t.is(await errCode(chmod(path.join(v1, 'a.txt'), 0o600)), 'EPERM');
  t.is(await errCode(chown(path.join(v1, 'a.txt'), 0, 0)), 'EPERM');
  t.regex((await sh(`mkfifo ${v1}/fifo`)).stderr, /Operation not permitted/);
  t.regex((await sh(`setfattr -n user.note -v 1 ${v1}/a.txt`)).stderr, /Operation not supported/);
  // Without --allow-delete, nothing published can be removed (or renamed away).
  t.is(await errCode(unlink(path.join(v1, 'a.txt'))), 'EROFS');
  t.is(await errCode(rmdir(v1)), 'EROFS');
  t.is(await errCode(rename(path.join(v1, 'a.txt'), path.join(v1, 'a-moved.txt'))), 'EROFS');
  t.is(await errCode(writeFile(path.join(cfg, 'stray.txt'), 'x')), 'EPERM', 'a file directly in a repository folder');
  t.is(await errCode(writeFile(path.join(d.dirs.mnt, 'org/team/stray.txt'), 'x')), 'EPERM', 'a file directly in a namespace folder');
  t.is(await errCode(writeFile(path.join(cfg, after.Digest, 'x.txt'), 'x')), 'EROFS', 'a manifest by digest');
  t.is(await readFile(path.join(v1, 'a.txt'), 'utf8'), 'alpha\n');

  // A new tag folder below a repository, holding a folder; a file written in order and appended to; rename within the tag.
  const v2 = path.join(cfg, 'v2');
  await mkdir(v2);
  await mkdir(path.join(src, 'conf/sub'), { recursive: true });
  await writeFile(path.join(src, 'conf/app.ini'), 'a=1\n');
  await writeFile(path.join(src, 'conf/sub/more.ini'), 'b=2\n');
  t.is((await sh(`cp -r ${src}/conf ${v2}/`)).code, 0);
  t.is(await errCode(rename(path.join(v1, 'a.txt'), path.join(v2, 'a.txt'))), 'EXDEV', 'rename across tags');
  const seq = await open(path.join(v2, 'seq.txt'), 'w');
  await seq.write('abc', 0);
  t.is(await errCode(seq.write('Z', 1)), 'ENOTSUP', 'a write before the end');
  await seq.write('def', 3);
  await seq.close();
  await appendFile(path.join(v2, 'seq.txt'), 'ghi');
  t.is(await readFile(path.join(v2, 'seq.txt'), 'utf8'), 'abcdefghi');
  await rename(path.join(v2, 'seq.txt'), path.join(v2, 'sequence.txt'));
  t.deepEqual(await readdir(v2), ['conf', 'sequence.txt']);
  const v2info = await waitFor(async () => {
    const m = await skopeoInspect(reg.host, 'app/cfg:v2');
    return m && m.LayersData.length === 2 ? m : undefined;
  }, 60_000, 'app/cfg:v2');
  t.deepEqual(Object.keys(layersByTitle(v2info)).sort(), ['conf', 'sequence.txt']);
  t.is(layersByTitle(v2info)['sequence.txt'], `sha256:${sha('abcdefghi')}`);
  t.is(v2info.LayersData.find((l) => l.Annotations[TITLE] === 'conf')!.Annotations['io.deis.oras.content.unpack'], 'true');
  const m2 = await startMount(t, reg.host);
  t.is((await sh(`diff -r ${src}/conf ${m2.mnt}/app/cfg/v2/conf`)).code, 0);
  // v1 was not pushed again by the refused operations.
  t.is((await skopeoInspect(reg.host, 'app/cfg:v1'))!.Digest, after.Digest);
  t.is(await d.stop(), 0);
});

test('with --allow-delete, rm drops a file from the next manifest and rm -r deletes a tag; a tag sharing its manifest is not deleted', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const src = await tempDir(t);
  for (const f of ['a.txt', 'b.txt', 'c.txt', 'd.txt']) await writeFile(path.join(src, f), `${f}\n`);
  await push(t, `${reg.host}/app:v1`, src, ['a.txt', 'b.txt']);
  await push(t, `${reg.host}/app:v3`, src, ['c.txt']);
  await push(t, `${reg.host}/app:v2,latest`, src, ['d.txt']);
  const d = await startDaemon(t, { source: reg.host, args: ['--allow-delete'] });
  const app = path.join(d.dirs.mnt, 'app');
  const b = (await skopeoInspect(reg.host, 'app:v1'))!.LayersData.find((l) => l.Annotations[TITLE] === 'b.txt')!;

  await unlink(path.join(app, 'v1/a.txt'));
  t.deepEqual(await readdir(path.join(app, 'v1')), ['b.txt']);
  const v1 = await waitFor(async () => {
    const m = await skopeoInspect(reg.host, 'app:v1');
    return m && m.LayersData.length === 1 ? m : undefined;
  }, 60_000, 'app:v1 without a.txt');
  t.deepEqual(layersByTitle(v1), { 'b.txt': b.Digest });

  const rm = await sh(`rm -r ${app}/v3`);
  t.is(rm.code, 0, rm.stderr);
  t.deepEqual(await skopeoTags(reg.host, 'app'), ['latest', 'v1', 'v2']);
  t.false((await readdir(app)).includes('v3'));
  t.regex(d.logs(), /deleted app:v3 \(sha256:[0-9a-f]{64}\)/);

  // The registry API deletes manifests, not tags: v2 shares its manifest with latest, so rmdir refuses.
  const shared = await sh(`rm -r ${app}/v2`);
  t.not(shared.code, 0);
  t.regex(shared.stderr, /Operation not permitted/);
  t.deepEqual(await skopeoTags(reg.host, 'app'), ['latest', 'v1', 'v2']);
  t.truthy(await skopeoInspect(reg.host, 'app:latest'));
  t.is(await d.stop(), 0);
});

test('kill -9 of the daemon while a file copied into the mount is pushed: after a restart it is published exactly once', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const proxy = await startFaultProxy(t, reg.url);
  const { env } = await cliEnv(t);
  const base = await tempDir(t, 'regfs-daemon-');
  const dirs = { base, mnt: path.join(base, 'mnt'), staging: path.join(base, 'staging'), cache: path.join(base, 'cache'), state: path.join(base, 'state'), socket: path.join(base, 'run/control.sock') };
  // Hold blob uploads so the kill lands in the middle of the push (the rules are gone before the restart).
  proxy.rules.push({ method: 'PATCH', path: /\/blobs\/uploads\//, latencyMs: 20_000 });
  proxy.rules.push({ method: 'PUT', path: /\/blobs\/uploads\//, latencyMs: 20_000 });
  const d = await startDaemon(t, { source: proxy.host, dirs });
  const data = randomBytes(24 * 1024 * 1024);
  await writeFile(path.join(base, 'big.bin'), data);
  const tagDir = path.join(dirs.mnt, 'big/blob/v1');
  const cp = await sh(`mkdir -p ${tagDir} && cp ${base}/big.bin ${tagDir}/`);
  t.is(cp.code, 0, cp.stderr);
  t.is((await sh(`cmp ${base}/big.bin ${tagDir}/big.bin`)).code, 0);
  await waitFor(async () => proxy.requests.some((r) => /\/blobs\/uploads\//.test(r.path) && r.method !== 'POST'), 60_000, 'the upload to start');
  const q = await queue(dirs.socket, env);
  t.true(q.some((i) => i.repository === 'big/blob' && i.tag === 'v1' && (i.state === 'pending' || i.state === 'uploading')), JSON.stringify(q));
  await d.crash();
  t.is(proxy.count('PUT', /\/manifests\//), 0, 'killed before the manifest');
  proxy.rules.length = 0;
  const d2 = await startDaemon(t, { source: proxy.host, dirs });
  const info = await waitFor(() => skopeoInspect(proxy.host, 'big/blob:v1'), 120_000, 'the push after the restart');
  t.deepEqual(layersByTitle(info), { 'big.bin': `sha256:${sha(data)}` });
  await d2.waitLog(/pushed big\/blob:v1/, 30_000);
  t.is(proxy.count('PUT', /\/manifests\//), 1, 'exactly one manifest PUT');
  t.is((await sh(`cmp ${base}/big.bin ${tagDir}/big.bin`)).code, 0);
  t.is(await d2.stop(), 0);
});

test('allowDelete needs a staging folder: refused in a config mount and on the command line', (t) => {
  t.throws(() => validateConfig({ mounts: [{ source: 'localhost:5000', mountpoint: '/m', allowDelete: true }] }, 'config c.json', '/'), { message: /mounts\[0\]\.allowDelete: needs a staging folder/ });
  t.throws(() => validateConfig({ mounts: [{ source: 'localhost:5000', mountpoint: '/m', staging: '/s', allowDelete: 'yes' }] }, 'config c.json', '/'), { message: /allowDelete: must be true or false/ });
  t.throws(() => resolveConfig(undefined, { allowDelete: true }), { message: /--allow-delete needs --source, --mountpoint and --staging/ });
  const ok = validateConfig({ mounts: [{ source: 'localhost:5000', mountpoint: '/m', staging: '/s', allowDelete: true }] }, 'config c.json', '/');
  t.true(ok.mounts?.[0]?.allowDelete);
});

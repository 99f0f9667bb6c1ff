/**
 * Issue 16, push side: a staged push publishes exactly what the tag folder holds. A symlink swapped in
 * mid-upload is never followed, a file renamed over another (same size and mtime) is published with its new
 * bytes, and entries that cannot be published are skipped and named, at every depth, without retries.
 */
import test from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import { lstat, mkdir, readFile, rename, rm, stat, symlink, utimes, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { startRegistry } from '../lab/registry.js';
import { startFaultProxy, type FaultProxy } from '../lab/fault-proxy.js';
import { cliEnv, runCli, tempDir } from '../lab/cli.js';
import { startDaemon, waitFor } from '../lab/daemon.js';
import { sh } from '../lab/mount.js';
import { RemoteRegistry } from '../registry/remote.js';
import { scanTagDir } from '../staging/layout.js';
import { pushTag } from '../staging/push-tag.js';
import type { RegfsError } from '../util/errors.js';

const MiB = 1024 * 1024;
const sha = (b: Buffer | string): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;
const hourAgo = (): Date => new Date(Date.now() - 3600_000);

interface Layer {
  digest: string;
  annotations?: Record<string, string>;
}

/** manifestLayers reads repo:tag straight from the registry; undefined while there is none. */
async function manifestLayers(url: string, repo: string, tag: string): Promise<Layer[] | undefined> {
  const res = await fetch(`${url}/v2/${repo}/manifests/${tag}`, { headers: { accept: 'application/vnd.oci.image.manifest.v1+json' } });
  if (res.status !== 200) return undefined;
  return ((await res.json()) as { layers: Layer[] }).layers;
}

const titles = (ls: Layer[]): string[] => ls.map((l) => l.annotations?.['org.opencontainers.image.title'] ?? '').sort();

/** slowUploads delays every blob PATCH and PUT, so an upload lasts long enough to change the folder under it. */
function slowUploads(proxy: FaultProxy, ms: number): void {
  proxy.rules.push({ method: 'PATCH', path: /\/blobs\/uploads\//, latencyMs: ms });
  proxy.rules.push({ method: 'PUT', path: /\/blobs\/uploads\//, latencyMs: ms });
}

const uploadStarted = (proxy: FaultProxy) => async (): Promise<boolean> => proxy.requests.some((r) => /\/blobs\/uploads\//.test(r.path) && r.method !== 'POST');

test('a staged file swapped for a symlink to an outside secret mid-upload: the registry never receives the secret', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const proxy = await startFaultProxy(t, reg.url);
  slowUploads(proxy, 4000);
  const d = await startDaemon(t, { source: proxy.host });
  const outside = path.join(d.dirs.base, 'outside');
  await mkdir(outside);
  const secret = randomBytes(9 * MiB);
  const smallSecret = randomBytes(64 * 1024);
  await writeFile(path.join(outside, 'secret.bin'), secret);
  await writeFile(path.join(outside, 'small-secret.bin'), smallSecret);
  const src = path.join(d.dirs.base, 'src');
  await mkdir(src);
  const files: Record<string, Buffer> = {};
  // Eight big files (streamed while hashed) and two small ones (hashed first).
  for (let i = 1; i <= 8; i++) files[`f${i}.bin`] = randomBytes(9 * MiB);
  files['s1.bin'] = randomBytes(32 * 1024);
  files['s2.bin'] = randomBytes(32 * 1024);
  for (const [n, b] of Object.entries(files)) {
    await writeFile(path.join(src, n), b);
    await utimes(path.join(src, n), hourAgo(), hourAgo());
  }
  const tagDir = path.join(d.dirs.staging, 'sec/app/v1');
  await mkdir(path.dirname(tagDir), { recursive: true });
  await rename(src, tagDir);
  await waitFor(uploadStarted(proxy), 60_000, 'the upload to start', d.logs);
  // `ln -s SECRET f.new && mv -T f.new f5.bin`, done in-process so all land while f1-f3 are still uploading.
  const swap = async (name: string, target: string): Promise<void> => {
    await symlink(target, path.join(tagDir, `${name}.new`));
    await rename(path.join(tagDir, `${name}.new`), path.join(tagDir, name));
  };
  for (const f of ['f5.bin', 'f6.bin', 'f7.bin', 'f8.bin']) await swap(f, path.join(outside, 'secret.bin'));
  await swap('s2.bin', path.join(outside, 'small-secret.bin'));
  t.true((await lstat(path.join(tagDir, 'f5.bin'))).isSymbolicLink());
  t.is(proxy.count('PUT', /\/manifests\//), 0, 'swapped before the first attempt could finish');
  const layers = await waitFor(async () => {
    const ls = await manifestLayers(reg.url, 'sec/app', 'v1');
    return ls && titles(ls).join() === 'f1.bin,f2.bin,f3.bin,f4.bin,s1.bin' ? ls : undefined;
  }, 120_000, 'the tag without the swapped files', d.logs);
  for (const l of layers) t.is(l.digest, sha(files[l.annotations!['org.opencontainers.image.title']!]!));
  t.false(layers.some((l) => l.digest === sha(secret) || l.digest === sha(smallSecret)));
  for (const s of [secret, smallSecret]) {
    const res = await fetch(`${reg.url}/v2/sec/app/blobs/${sha(s)}`);
    await res.arrayBuffer();
    t.is(res.status, 404, 'the outside file was never uploaded');
  }
  t.regex(d.logs(), /not publishing "f5\.bin": symlink/);
  t.is(await d.stop(), 0);
});

test('a file renamed over a staged one (same size, same mtime) is published with its new bytes, during the upload and after it', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const proxy = await startFaultProxy(t, reg.url);
  slowUploads(proxy, 2000);
  const { env } = await cliEnv(t);
  const d = await startDaemon(t, { source: proxy.host });
  const when = hourAgo();
  const [big, alt, alt2] = [randomBytes(24 * MiB), randomBytes(24 * MiB), randomBytes(24 * MiB)];
  const src = path.join(d.dirs.base, 'src');
  await mkdir(src);
  for (const [p, b] of [[path.join(src, 'big.bin'), big], [path.join(d.dirs.base, 'alt.bin'), alt], [path.join(d.dirs.base, 'alt2.bin'), alt2]] as const) {
    await writeFile(p, b);
    await utimes(p, when, when);
  }
  const tagDir = path.join(d.dirs.staging, 'rep/app/v1');
  await mkdir(path.dirname(tagDir), { recursive: true });
  await rename(src, tagDir);
  await waitFor(uploadStarted(proxy), 60_000, 'the upload to start', d.logs);
  await rename(path.join(d.dirs.base, 'alt.bin'), path.join(tagDir, 'big.bin'));
  const st = await stat(path.join(tagDir, 'big.bin'));
  t.is(Math.round(st.mtimeMs), when.getTime(), 'same mtime');
  await waitFor(async () => (await manifestLayers(reg.url, 'rep/app', 'v1'))?.[0]?.digest === sha(alt), 120_000, 'the new bytes of big.bin', d.logs);

  // The same once the push has landed: a rescan queues it again.
  proxy.rules.length = 0;
  await waitFor(async () => {
    const s = JSON.parse((await runCli(['status', '--socket', d.dirs.socket, '--format', 'json'], { env })).stdout) as { queue: Array<{ tag: string; state: string }> };
    return s.queue.every((q) => q.state === 'done');
  }, 60_000, 'the queue to settle', d.logs);
  await rename(path.join(d.dirs.base, 'alt2.bin'), path.join(tagDir, 'big.bin'));
  await runCli(['rescan', '--socket', d.dirs.socket], { env });
  await waitFor(async () => (await manifestLayers(reg.url, 'rep/app', 'v1'))?.[0]?.digest === sha(alt2), 60_000, 'the bytes renamed in after the push', d.logs);
  t.true((await readFile(path.join(tagDir, 'big.bin'))).equals(alt2), 'staging untouched');
  t.is(await d.stop(), 0);
});

test('unpublishable entries at every depth (newline name, symlinks, FIFO, socket) are skipped and named once; the rest is published on the first try', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const { env } = await cliEnv(t);
  const d = await startDaemon(t, { source: reg.host });
  const src = path.join(d.dirs.base, 'src');
  await mkdir(path.join(src, 'sub'), { recursive: true });
  const unicode = 'ünïcødé-名前.txt';
  const long = 'l'.repeat(251) + '.txt';
  t.is(Buffer.byteLength(long), 255);
  const good: Record<string, string> = { 'good.txt': 'good', [unicode]: 'unicode', [long]: 'long', 'sub/ok.txt': 'ok' };
  for (const [n, b] of Object.entries(good)) await writeFile(path.join(src, n), b);
  await writeFile(path.join(src, 'bad\nname.txt'), 'newline');
  await writeFile(path.join(src, 'sub/bad\nname.txt'), 'newline');
  await sh(`cd '${src}' && ln -s /etc/passwd top-link && mkfifo fifo && ln -s /etc/shadow sub/sh && ln -s ../good.txt sub/rel && mkfifo sub/fifo`);
  await sh(`cd '${src}' && python3 -c "import socket; socket.socket(socket.AF_UNIX).bind('sock')"`);
  t.true((await lstat(path.join(src, 'sock'))).isSocket());
  await sh(`find '${src}' -exec touch -h -d '1 hour ago' {} +`);
  const tagDir = path.join(d.dirs.staging, 'odd/names/v1');
  await mkdir(path.dirname(tagDir), { recursive: true });
  await rename(src, tagDir);

  const layers = await waitFor(() => manifestLayers(reg.url, 'odd/names', 'v1'), 60_000, 'the tag', d.logs);
  t.deepEqual(titles(layers), ['good.txt', long, 'sub', unicode].sort());
  for (const [n, b] of Object.entries(good)) if (!n.startsWith('sub/')) t.is(layers.find((l) => l.annotations?.['org.opencontainers.image.title'] === n)?.digest, sha(b), n);
  // The folder's tar layer holds only what pull and the mount accept: no link, no FIFO, no bad name.
  const subLayer = layers.find((l) => l.annotations?.['org.opencontainers.image.title'] === 'sub')!;
  const tgz = path.join(d.dirs.base, 'sub.tgz');
  await writeFile(tgz, Buffer.from(await (await fetch(`${reg.url}/v2/odd/names/blobs/${subLayer.digest}`)).arrayBuffer()));
  const listing = (await sh(`tar tzvf '${tgz}'`)).stdout.trim().split('\n');
  t.deepEqual(listing.map((l) => l.split(/\s+/).slice(5).join(' ').replace(/\/$/, '')), ['sub', 'sub/ok.txt'], listing.join('\n'));
  t.deepEqual(listing.map((l) => l[0]), ['d', '-']);
  // What was published pulls back, the 255-byte name included (pull's temp name is shortened to fit).
  const pulled = path.join(d.dirs.base, 'pulled');
  const pull = await runCli(['pull', `${reg.host}/odd/names:v1`, '-o', pulled], { env });
  t.is(pull.code, 0, pull.stderr);
  t.is(await readFile(path.join(pulled, long), 'utf8'), 'long');
  t.is(await readFile(path.join(pulled, unicode), 'utf8'), 'unicode');
  const out = path.join(d.dirs.base, 'out');
  await mkdir(out);
  await sh(`tar xzf '${tgz}' -C '${out}'`);
  t.is(await readFile(path.join(out, 'sub/ok.txt'), 'utf8'), 'ok');
  const expected = ['bad\nname.txt', 'fifo', 'sock', 'sub/bad\nname.txt', 'sub/fifo', 'sub/rel', 'sub/sh', 'top-link'];
  const st = await runCli(['status', '--socket', d.dirs.socket, '--format', 'json'], { env });
  const item = (JSON.parse(st.stdout) as { queue: Array<{ tag: string; state: string; attempts: number; skipped?: Array<{ path: string; reason: string }> }> }).queue.find((q) => q.tag === 'v1')!;
  t.is(item.state, 'done');
  t.is(item.attempts, 0, `no failed attempt, no retry: ${JSON.stringify(item)}\n${d.logs()}`);
  t.deepEqual(item.skipped!.map((s) => s.path).sort(), expected);
  const text = (await runCli(['status', '--socket', d.dirs.socket], { env })).stdout;
  t.regex(text, /skipped "sub\/sh": symlink/);
  t.regex(text, /skipped "bad\\nname\.txt": name not accepted/);
  t.regex(text, /skipped "fifo": FIFO/);
  t.regex(text, /skipped "sock": socket/);
  // One warning per entry, however often the folder is scanned.
  await runCli(['rescan', '--socket', d.dirs.socket], { env });
  for (const p of expected) t.is(d.logs().split(`not publishing ${JSON.stringify(p)}:`).length - 1, 1, `one warning for ${JSON.stringify(p)}`);
  t.notRegex(d.logs(), /retrying/);
  t.is(await d.stop(), 0);
});

test('pushTag opens each file once without following links: a symlink or another file put under a scanned name is refused, nothing of it uploaded', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const base = await tempDir(t, 'regfs-exact-push-');
  const repo = new RemoteRegistry(reg.host).repository('swap/unit');
  const secret = randomBytes(4096);
  await writeFile(path.join(base, 'secret.bin'), secret);
  const dir = path.join(base, 'v1');
  await mkdir(dir);
  // A symlink to the secret, then another regular file (a new inode) with its bytes, renamed over the scanned file.
  for (const swapIn of [() => symlink(path.join(base, 'secret.bin'), path.join(dir, 'small.new')), () => writeFile(path.join(dir, 'small.new'), secret)]) {
    await rm(path.join(dir, 'small.bin'), { force: true });
    await writeFile(path.join(dir, 'small.bin'), randomBytes(4096));
    const entries = await scanTagDir(dir);
    t.is(entries.length, 1);
    await swapIn();
    await rename(path.join(dir, 'small.new'), path.join(dir, 'small.bin'));
    const err = await t.throwsAsync(pushTag({ repo, dir, entries, tag: 'v1' }));
    t.is((err as RegfsError).code, 'CONFLICT', err?.message);
    const res = await fetch(`${reg.url}/v2/swap/unit/blobs/${sha(secret)}`);
    await res.arrayBuffer();
    t.is(res.status, 404);
  }
});

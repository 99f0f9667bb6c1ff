import test from 'ava';
import { spawn } from 'node:child_process';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { REGFS_BIN, cliEnv, runCli, tempDir } from '../lab/cli.js';
import { startDaemon } from '../lab/daemon.js';
import { isMounted } from '../lab/mount.js';
import { checkFuseAvailable } from '../mount/mounter.js';
import { isRegfsError } from '../util/errors.js';

const lines = (s: string): string[] => s.split('\n').filter((l) => l.trim());

async function makeStore(t: Parameters<typeof tempDir>[0]): Promise<string> {
  const { env } = await cliEnv(t);
  const src = await tempDir(t, 'regfs-first-src-');
  await writeFile(path.join(src, 'a.txt'), 'a\n');
  const store = await tempDir(t, 'regfs-first-store-');
  const r = await runCli(['push', `oci:${store}/demo:1`, 'a.txt'], { cwd: src, env });
  if (r.code !== 0) throw new Error(`regfs push failed (${r.code}): ${r.stderr}`);
  return store;
}

test('push of an absolute or .. file path is bad local input: exit 2 with one line', async (t) => {
  const { env } = await cliEnv(t);
  const dir = await tempDir(t, 'regfs-first-push-');
  await mkdir(path.join(dir, 'sub'));
  await writeFile(path.join(dir, 'f.txt'), 'f\n');
  const store = path.join(dir, 'store');
  const abs = await runCli(['push', `oci:${store}/x:1`, path.join(dir, 'f.txt')], { cwd: dir, env });
  t.is(abs.code, 2, abs.stderr);
  t.deepEqual(lines(abs.stderr).length, 1, abs.stderr);
  t.regex(abs.stderr, /^Error: file ".*f\.txt" is absolute/);
  const up = await runCli(['push', `oci:${store}/x:1`, '../f.txt'], { cwd: path.join(dir, 'sub'), env });
  t.is(up.code, 2, up.stderr);
  t.regex(up.stderr, /^Error: unsafe path "\.\.\/f\.txt": contains a '\.\.' segment\n$/);
});

test('mount on a non-empty directory: exit 2, one line saying so, none of libfuse\'s lines, nothing mounted', async (t) => {
  const store = await makeStore(t);
  const dir = await tempDir(t, 'regfs-first-mnt-');
  const mnt = path.join(dir, 'full');
  await mkdir(mnt);
  await writeFile(path.join(mnt, 'keep.txt'), 'x');
  const r = await runCli(['mount', `oci:${store}`, mnt, '--cache-dir', path.join(dir, 'cache')]);
  t.is(r.code, 2, r.stderr);
  t.deepEqual(lines(r.stderr), [`Error: mountpoint ${mnt} is not empty (1 entry, e.g. "keep.txt"): mount on an empty directory`]);
  t.false(await isMounted(mnt));
  // The daemon refuses it the same way, and exits 2 (the units then do not restart it).
  const d = await runCli(['daemon', '--source', `oci:${store}`, '--mountpoint', mnt, '--cache-dir', path.join(dir, 'cache'), '--state-dir', path.join(dir, 'state'), '--socket', path.join(dir, 'run', 'ctl.sock')]);
  t.is(d.code, 2, d.stderr);
  t.regex(d.stderr, /is not empty/);
  t.notRegex(d.stderr, /^fuse:/m);
});

test('FUSE that cannot work says what to do in one line: no /dev/fuse, no fusermount for a user', async (t) => {
  const dir = await tempDir(t, 'regfs-first-dev-');
  const missing = await checkFuseAvailable({ device: path.join(dir, 'fuse') }).then(() => undefined, (e: unknown) => e);
  t.true(isRegfsError(missing, 'UNSUPPORTED'));
  t.regex((missing as Error).message, /^FUSE is not available: .*fuse does not exist; load the module \(modprobe fuse\), or in a container run with --device \/dev\/fuse/);
  const noHelper = await checkFuseAvailable({ uid: 1000, path: dir }).then(() => undefined, (e: unknown) => e);
  t.regex((noHelper as Error).message, /fusermount is not on PATH .*install the Debian packages fuse and libfuse2/);
  await t.notThrowsAsync(checkFuseAvailable());
  await t.notThrowsAsync(checkFuseAvailable({ uid: 1000 }));
});

test('status --watch --format json prints one JSON object per line (NDJSON)', async (t) => {
  const store = await makeStore(t);
  const d = await startDaemon(t, { source: `oci:${store}`, staging: false });
  const { env } = await cliEnv(t);
  const child = spawn(process.execPath, [REGFS_BIN, 'status', '--watch', '--format', 'json', '--socket', d.dirs.socket], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (b: Buffer) => (out += b.toString()));
  t.teardown(() => {
    if (child.exitCode === null) child.kill('SIGKILL');
  });
  const until = Date.now() + 20_000;
  while (lines(out).length < 2 && Date.now() < until) await new Promise((r) => setTimeout(r, 100));
  child.kill('SIGINT');
  const got = lines(out);
  t.true(got.length >= 2, out);
  for (const l of got) {
    const s = JSON.parse(l) as { pid: number; mounts: unknown[] };
    t.is(s.pid, d.child.pid!);
    t.is(s.mounts.length, 1);
  }
});

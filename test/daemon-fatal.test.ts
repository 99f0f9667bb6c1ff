import test from 'ava';
import { spawn } from 'node:child_process';
import { mkdir, readFile, readdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { REGFS_BIN, cliEnv, runCli, tempDir } from '../lab/cli.js';
import { startDaemon, waitFor } from '../lab/daemon.js';
import { fusermount, isMounted } from '../lab/mount.js';

const FAULT_INJECT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../lab/fault-inject.js');

/** makeStore pushes file.txt as oci:STORE/demo:1 and returns STORE. */
async function makeStore(t: Parameters<typeof tempDir>[0], content: string): Promise<string> {
  const { env } = await cliEnv(t);
  const src = await tempDir(t, 'regfs-fatal-src-');
  await writeFile(path.join(src, 'file.txt'), content);
  const store = await tempDir(t, 'regfs-fatal-store-');
  const r = await runCli(['push', `oci:${store}/demo:1`, 'file.txt'], { cwd: src, env });
  if (r.code !== 0) throw new Error(`regfs push failed (${r.code}): ${r.stderr}`);
  return store;
}

/** notStale checks the mountpoint is a plain directory again: readable, not ENOTCONN. */
async function listing(mnt: string): Promise<string> {
  return readdir(mnt).then((names) => `ok:${names.join(',')}`, (e: NodeJS.ErrnoException) => e.code ?? String(e));
}

test('the daemon outlives a dead log reader (EPIPE on stdout/stderr): it keeps pushing, and SIGINT still unmounts and exits 0', async (t) => {
  const store = await makeStore(t, 'one\n');
  const base = await tempDir(t, 'regfs-fatal-pipe-');
  const dirs = { mnt: path.join(base, 'mnt'), staging: path.join(base, 'staging'), socket: path.join(base, 'run', 'control.sock') };
  await mkdir(dirs.mnt);
  const logFile = path.join(base, 'reader.log');
  // The log reader, like `| tee` or `| grep`: a separate process holding the only read end of the pipe.
  const reader = spawn('sh', ['-c', `exec cat > '${logFile}'`], { stdio: ['pipe', 'ignore', 'ignore'] });
  const argv = [REGFS_BIN, 'daemon', '--source', `oci:${store}`, '--mountpoint', dirs.mnt, '--staging', dirs.staging, '--cache-dir', path.join(base, 'cache'), '--state-dir', path.join(base, 'state'), '--socket', dirs.socket, '--quiet-period', '0.3'];
  const daemon = spawn(process.execPath, argv, { stdio: ['ignore', reader.stdin!, reader.stdin!] });
  // Only the daemon keeps the write end now.
  reader.stdin!.destroy();
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => daemon.on('exit', (code, signal) => resolve({ code, signal })));
  t.teardown(async () => {
    if (daemon.exitCode === null && daemon.signalCode === null) daemon.kill('SIGKILL');
    if (reader.exitCode === null && reader.signalCode === null) reader.kill('SIGKILL');
    await fusermount(dirs.mnt);
  });
  const logs = async (): Promise<string> => readFile(logFile, 'utf8').catch(() => '');
  await waitFor(async () => /regfs daemon running/.test(await logs()) && (await isMounted(dirs.mnt)), 30_000, 'the daemon to start', () => `(log file only)`);
  t.is(await readFile(path.join(dirs.mnt, 'demo', '1', 'file.txt'), 'utf8'), 'one\n');

  // The reader dies; every later log line is an EPIPE.
  reader.kill('SIGKILL');
  await new Promise((r) => reader.on('exit', r));
  await mkdir(path.join(dirs.staging, 'demo', '2'), { recursive: true });
  await writeFile(path.join(dirs.staging, 'demo', '2', 'file.txt'), 'two\n');
  const { env } = await cliEnv(t);
  await waitFor(async () => {
    const r = await runCli(['status', '--socket', dirs.socket, '--format', 'json'], { env });
    if (r.code !== 0) return false;
    const s = JSON.parse(r.stdout) as { queue: Array<{ tag: string; state: string }> };
    return s.queue.some((q) => q.tag === '2' && q.state === 'done');
  }, 30_000, 'the push of demo:2 with the log pipe broken');
  t.is(daemon.exitCode, null, 'the daemon is still running');
  await waitFor(async () => (await readFile(path.join(dirs.mnt, 'demo', '2', 'file.txt'), 'utf8').catch(() => '')) === 'two\n', 30_000, 'demo:2 through the mount');

  // Ctrl-C: still a clean stop, logging into the dead pipe on the way.
  daemon.kill('SIGINT');
  const timer = setTimeout(() => daemon.kill('SIGKILL'), 30_000);
  const { code, signal } = await exited;
  clearTimeout(timer);
  t.is(signal, null);
  t.is(code, 0);
  t.false(await isMounted(dirs.mnt));
  t.is(await listing(dirs.mnt), 'ok:');
});

for (const kind of ['throw', 'reject'] as const) {
  test(`an ${kind === 'throw' ? 'uncaught exception' : 'unhandled rejection'} in the daemon is logged, every mount is unmounted, and the exit status is 1`, async (t) => {
    const store = await makeStore(t, 'fatal\n');
    const trigger = path.join(await tempDir(t, 'regfs-fatal-trigger-'), 'now');
    const d = await startDaemon(t, { source: `oci:${store}`, nodeArgs: ['--import', FAULT_INJECT], env: { REGFS_LAB_FAULT_FILE: trigger, REGFS_LAB_FAULT_KIND: kind } });
    await waitFor(async () => isMounted(d.dirs.mnt), 30_000, 'the mount', d.logs);
    t.is(await readFile(path.join(d.dirs.mnt, 'demo', '1', 'file.txt'), 'utf8'), 'fatal\n');
    await writeFile(trigger, '');
    const timer = setTimeout(() => d.child.kill('SIGKILL'), 40_000);
    const code = await new Promise<number | null>((resolve) => (d.child.exitCode !== null ? resolve(d.child.exitCode) : d.child.on('exit', (c) => resolve(c))));
    clearTimeout(timer);
    t.is(code, 1, d.logs());
    t.regex(d.logs(), kind === 'throw' ? /uncaught exception: injected exception/ : /unhandled rejection: injected rejection/);
    t.regex(d.logs(), /unmounted /);
    t.false(await isMounted(d.dirs.mnt), d.logs());
    t.is(await listing(d.dirs.mnt), 'ok:');
  });
}

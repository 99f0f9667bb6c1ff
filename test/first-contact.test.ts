import test from 'ava';
import { spawn, spawnSync } from 'node:child_process';
import { mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { REGFS_BIN, cliEnv, runCli, tempDir } from '../lab/cli.js';
import { startDaemon } from '../lab/daemon.js';
import { fusermount, isMounted, startMount } from '../lab/mount.js';
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

test('logout and unmount answer --format json; push/pull -q print only the result; --no-tty draws no bar on a terminal', async (t) => {
  const { env, configDir } = await cliEnv(t);
  const out = await runCli(['logout', 'localhost:5000', '--format', 'json', '--registry-config', path.join(configDir, 'config.json')], { env });
  t.is(out.code, 0, out.stderr);
  t.deepEqual(JSON.parse(out.stdout), { registry: 'localhost:5000', removed: false });

  const src = await tempDir(t, 'regfs-first-q-');
  await writeFile(path.join(src, 'big.bin'), Buffer.alloc(8 * 1024 * 1024, 7));
  const store = path.join(src, 'store');
  const quiet = await runCli(['push', `oci:${store}/q:1`, 'big.bin', '-q'], { cwd: src, env });
  t.is(quiet.code, 0, quiet.stderr);
  t.notRegex(quiet.stdout, /Uploading|Uploaded/);
  t.regex(quiet.stdout, /^Digest: sha256:/m);
  const pulled = await runCli(['pull', `oci:${store}/q:1`, '-o', path.join(src, 'out'), '--quiet'], { cwd: src, env });
  t.is(pulled.code, 0, pulled.stderr);
  t.notRegex(pulled.stdout, /Downloading|Downloaded/);

  // Under a terminal (script(1)): --no-tty keeps the per-blob lines but draws no bar.
  const q = (s: string): string => `'${s.replace(/'/g, `'\\''`)}'`;
  const run = (args: string[]): Promise<string> => new Promise((resolve) => {
    const child = spawn('script', ['-qfec', ['exec', process.execPath, REGFS_BIN, ...args].map(q).join(' '), '/dev/null'], { cwd: src, env: { ...process.env, ...env }, stdio: ['pipe', 'pipe', 'pipe'] });
    let text = '';
    child.stdout.on('data', (d: Buffer) => (text += d.toString()));
    child.on('close', () => resolve(text));
  });
  const noTty = await run(['push', `oci:${path.join(src, 'store2')}/q:2`, 'big.bin', '--no-tty']);
  t.regex(noTty, /Uploaded\s+[0-9a-f]{12} big\.bin/);
  t.false(noTty.includes('\x1b[K'), JSON.stringify(noTty));

  const mstore = await makeStore(t);
  const m = await startMount(t, `oci:${mstore}`);
  const un = await runCli(['unmount', m.mnt, '--format', 'json'], { env });
  t.is(un.code, 0, un.stderr);
  t.deepEqual(JSON.parse(un.stdout), { unmounted: m.mnt });
});

test('--log-file sends the log of mount (and daemon) to a file, created 0600', async (t) => {
  const store = await makeStore(t);
  const dir = await tempDir(t, 'regfs-first-log-');
  const log = path.join(dir, 'regfs.log');
  const m = await startLoggedMount(t, store, dir, log);
  t.is(await m.stop(), 0);
  const text = await readFile(log, 'utf8');
  t.regex(text, / mounted oci:\S+ at /);
  t.regex(text, / unmounted /);
  t.is((await stat(log)).mode & 0o777, 0o600);
  t.notRegex(m.stderr(), /mounted/);
});

/** startLoggedMount runs `regfs mount --log-file` and waits for the mount (the log is not on stderr to wait for). */
async function startLoggedMount(t: Parameters<typeof tempDir>[0], store: string, dir: string, log: string) {
  const mnt = path.join(dir, 'mnt');
  await mkdir(mnt);
  const child = spawn(process.execPath, [REGFS_BIN, 'mount', `oci:${store}`, mnt, '--cache-dir', path.join(dir, 'cache'), '--log-file', log], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (c) => resolve(c)));
  t.teardown(async () => {
    if (child.exitCode === null) child.kill('SIGKILL');
    await fusermount(mnt);
  });
  const until = Date.now() + 30_000;
  const logged = async (): Promise<boolean> => / mounted \S+ at /.test(await readFile(log, 'utf8').catch(() => ''));
  while (!((await isMounted(mnt)) && (await logged())) && Date.now() < until && child.exitCode === null) await new Promise((r) => setTimeout(r, 50));
  await new Promise((r) => setTimeout(r, 200));
  return {
    stderr: () => stderr,
    stop: async () => {
      child.kill('SIGTERM');
      return exited;
    },
  };
}

test('regfs completion bash completes commands, subcommands and each command\'s options; zsh loads it through bashcompinit', async (t) => {
  const bash = await runCli(['completion', 'bash']);
  t.is(bash.code, 0, bash.stderr);
  const dir = await tempDir(t, 'regfs-first-comp-');
  await writeFile(path.join(dir, 'regfs.bash'), bash.stdout);
  const probe = `source ${JSON.stringify(path.join(dir, 'regfs.bash'))}; t(){ COMP_WORDS=("$@"); COMP_CWORD=$(( \${#COMP_WORDS[@]} - 1 )); _regfs; echo "\${COMPREPLY[*]}"; }; t regfs mou; t regfs mounts a; t regfs push --con; t regfs status --socket /x --wa`;
  const r = spawnSync('bash', ['-c', probe], { encoding: 'utf8' });
  t.is(r.status, 0, r.stderr);
  t.deepEqual(r.stdout.trim().split('\n'), ['mount mounts', 'add', '--config --concurrency', '--watch']);
  const zsh = await runCli(['completion', 'zsh']);
  t.regex(zsh.stdout, /^#compdef regfs\n.*bashcompinit/s);
  const fish = await runCli(['completion', 'fish']);
  t.is(fish.code, 2);
});

test('login on a terminal asks for the username and the password (not echoed), then stores them', async (t) => {
  const { startRegistry } = await import('../lab/registry.js');
  const reg = await startRegistry(t, { flavour: 'basic' });
  const { env, configDir } = await cliEnv(t);
  const q = (s: string): string => `'${s.replace(/'/g, `'\\''`)}'`;
  const child = spawn('script', ['-qfec', ['exec', process.execPath, REGFS_BIN, 'login', reg.host].map(q).join(' '), '/dev/null'], { env: { ...process.env, ...env }, stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  const closed = new Promise<number | null>((resolve) => child.on('close', (c) => resolve(c)));
  t.teardown(() => {
    if (child.exitCode === null) child.kill('SIGKILL');
  });
  const waitOut = async (re: RegExp): Promise<void> => {
    const until = Date.now() + 20_000;
    while (!re.test(out)) {
      if (Date.now() > until) throw new Error(`timed out waiting for ${re}: ${JSON.stringify(out)}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  };
  await waitOut(/Username: $/);
  child.stdin.write(`${reg.username}\r`);
  await waitOut(/Password: $/);
  child.stdin.write(`${reg.password}\r`);
  await waitOut(/Login Succeeded/);
  t.is(await closed, 0, out);
  t.false(out.includes(reg.password!), 'the password is not echoed');
  const saved = JSON.parse(await readFile(path.join(configDir, 'config.json'), 'utf8')) as { auths: Record<string, { auth: string }> };
  t.is(Buffer.from(saved.auths[reg.host]!.auth, 'base64').toString(), `${reg.username}:${reg.password}`);
});

test('pull into a read-only file system says so (not ENOENT from mkdir), exit 1', async (t) => {
  const store = await makeStore(t);
  // A regfs mount without staging is a read-only file system.
  const m = await startMount(t, `oci:${store}`);
  const { env } = await cliEnv(t);
  const into = path.join(m.mnt, 'demo', '1', 'new', 'deeper');
  const r = await runCli(['pull', `oci:${store}/demo:1`, '-o', into], { env });
  t.is(r.code, 1, r.stderr);
  t.is(r.stderr, `Error: cannot pull into ${into}: ${path.join(m.mnt, 'demo', '1')} is not writable (read-only file system)\n`);
});

test('a foreground mount with --socket answers status, mounts ls, refresh and cache stats like the daemon', async (t) => {
  const store = await makeStore(t);
  const dir = await tempDir(t, 'regfs-first-sock-');
  const socket = path.join(dir, 'run', 'mount.sock');
  const m = await startMount(t, `oci:${store}`, { args: ['--socket', socket] });
  const { env } = await cliEnv(t);
  const sock = ['--socket', socket];
  const st = await runCli(['status', ...sock, '--format', 'json'], { env });
  t.is(st.code, 0, st.stderr);
  const s = JSON.parse(st.stdout) as { pid: number; kind: string; mounts: Array<{ source: string; mountpoint: string }>; queue: unknown[] };
  t.is(s.pid, m.child.pid!);
  t.is(s.kind, 'mount');
  t.deepEqual(s.mounts.map((x) => [x.source, x.mountpoint]), [[`oci:${store}`, m.mnt]]);
  const text = await runCli(['status', ...sock], { env });
  t.regex(text.stdout, new RegExp(`^  oci:${store.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} -> ${m.mnt.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`, 'm'));
  t.is((await runCli(['mounts', 'ls', ...sock], { env })).stdout.trim(), `oci:${store}\t${m.mnt}`);
  t.is((await readFile(path.join(m.mnt, 'demo', '1', 'a.txt'), 'utf8')), 'a\n');
  const refresh = await runCli(['refresh', path.join(m.mnt, 'demo'), ...sock], { env });
  t.is(refresh.code, 0, refresh.stderr);
  t.is((await runCli(['refresh', '/elsewhere', ...sock], { env })).code, 4);
  const cs = JSON.parse((await runCli(['cache', 'stats', ...sock, '--format', 'json'], { env })).stdout) as { misses: number };
  t.true(cs.misses >= 1);
  // What only the daemon does is refused with the route's error, not a hang.
  t.not((await runCli(['rescan', ...sock], { env })).code, 0);
  t.is(await m.stop(), 0);
  // The socket is gone with the mount.
  t.not((await runCli(['status', ...sock], { env })).code, 0);
});

import test from 'ava';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { chmod, copyFile, mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { cliEnv, runCli, tempDir } from '../lab/cli.js';

// The compiled file is dist/test/systemd.test.js: the repository root is three levels up.
const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const REGFS = path.resolve(fileURLToPath(import.meta.url), '../../../bin/regfs');
const SYSTEMD = path.join(REPO, 'systemd');
const SYSTEM_UNIT = path.join(SYSTEMD, 'regfs.service');
const USER_UNIT = path.join(SYSTEMD, 'regfs-user.service');
const UNMOUNT_ALL = path.join(SYSTEMD, 'regfs-unmount-all');

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/** run executes a program without a shell and collects its output and exit code. */
function run(file: string, args: string[], opts: { env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): Promise<Run> {
  return new Promise((resolve) => {
    execFile(file, args, { env: opts.env ?? process.env, timeout: opts.timeoutMs ?? 60_000 }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : -1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

/** regfsMounts lists the decoded mountpoints of every fuse.regfs mount in /proc/mounts. */
async function regfsMounts(): Promise<string[]> {
  const text = await readFile('/proc/mounts', 'utf8');
  return text
    .split('\n')
    .map((l) => l.split(' '))
    .filter((f) => f[2] === 'fuse.regfs')
    .map((f) => f[1]!.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8))));
}

async function waitUntil(what: string, ms: number, fn: () => Promise<boolean>, alive?: { child: ChildProcess; logs(): string }): Promise<void> {
  const until = Date.now() + ms;
  while (!(await fn().catch(() => false))) {
    if (alive && alive.child.exitCode !== null) throw new Error(`${what}: the process exited with ${alive.child.exitCode}: ${alive.logs()}`);
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}${alive ? `: ${alive.logs()}` : ''}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

function fusermountExact(mnt: string): Promise<void> {
  return new Promise((resolve) => execFile('fusermount', ['-uz', mnt], () => resolve()));
}

/** background spawns a process and, at teardown, SIGKILLs it by pid and lazily unmounts exactly `mnt`. */
function background(t: { teardown(fn: () => unknown): void }, argv: string[], mnt: string, env?: NodeJS.ProcessEnv) {
  const child = spawn(argv[0]!, argv.slice(1), { env: env ?? process.env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  t.teardown(async () => {
    if (child.exitCode === null && child.signalCode === null && child.pid) {
      try {
        process.kill(child.pid, 'SIGKILL');
      } catch {
        // already gone
      }
      await exited;
    }
    await fusermountExact(mnt);
  });
  return { child, exited, stdout: () => stdout, stderr: () => stderr, logs: () => `${stdout}${stderr}` };
}

/** unitValues returns every value of KEY= in a unit file (comments skipped). */
function unitValues(text: string, key: string): string[] {
  return text
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => !l.startsWith('#') && !l.startsWith(';') && l.startsWith(`${key}=`))
    .map((l) => l.slice(key.length + 1));
}

/** makeOciStore pushes file.txt as oci:STORE/demo:1 with the CLI and returns STORE. */
async function makeOciStore(t: Parameters<typeof tempDir>[0], content: string): Promise<string> {
  const { env } = await cliEnv(t);
  const src = await tempDir(t, 'regfs-systemd-src-');
  await writeFile(path.join(src, 'file.txt'), content);
  const store = await tempDir(t, 'regfs-systemd-store-');
  const r = await runCli(['push', `oci:${store}/demo:1`, 'file.txt'], { cwd: src, env });
  if (r.code !== 0) throw new Error(`regfs push failed (${r.code}): ${r.stderr}`);
  return store;
}

async function systemdAnalyze(t: { fail(msg: string): void }): Promise<string | undefined> {
  const which = await run('sh', ['-c', 'command -v systemd-analyze']);
  if (which.code !== 0) {
    t.fail('systemd-analyze not found: install the Debian package "systemd" (scripts/ensure.sh should)');
    return undefined;
  }
  return which.stdout.trim();
}

/**
 * complaintsAbout keeps the stderr lines of `systemd-analyze verify` that concern our unit: those
 * naming the temp dir or regfs. On a machine that boots with systemd, verify also loads the host's
 * units that ours depend on (network-online.target, multi-user.target, default.target) and may
 * print warnings about those files; they are logged, not failed on. None are printed here.
 */
function complaintsAbout(stderr: string, dir: string, t: { log(...v: unknown[]): void }): string[] {
  const lines = stderr.split('\n').filter((l) => l.trim());
  const ours = lines.filter((l) => l.includes(dir) || /regfs/i.test(l));
  for (const l of lines.filter((x) => !ours.includes(x))) t.log(`ignored (another unit): ${l}`);
  return ours.filter((l) => /unknown|failed|\bnot\b/i.test(l));
}

test('systemd/regfs.service passes systemd-analyze verify (ExecStart and ExecStopPost pointed at shims)', async (t) => {
  const analyze = await systemdAnalyze(t);
  if (!analyze) return;
  const dir = await tempDir(t, 'regfs-systemd-verify-');
  const bin = path.join(dir, 'bin');
  await mkdir(bin);
  await writeFile(path.join(bin, 'regfs'), '#!/bin/sh\nexit 0\n', { mode: 0o755 });
  await copyFile(UNMOUNT_ALL, path.join(bin, 'regfs-unmount-all'));
  await chmod(path.join(bin, 'regfs-unmount-all'), 0o755);
  const unit = await readFile(SYSTEM_UNIT, 'utf8');
  t.true(unit.includes('ExecStart=/usr/local/bin/regfs daemon '));
  t.true(unit.includes('ExecStopPost=-/usr/local/lib/regfs/regfs-unmount-all'));
  // Verify checks that ExecStart's program exists and is executable: point both at the shims.
  const copy = unit.replaceAll('/usr/local/bin/regfs', path.join(bin, 'regfs')).replaceAll('/usr/local/lib/regfs/regfs-unmount-all', path.join(bin, 'regfs-unmount-all'));
  const unitPath = path.join(dir, 'regfs.service');
  await writeFile(unitPath, copy);
  const r = await run(analyze, ['verify', unitPath]);
  t.is(r.code, 0, r.stderr);
  t.deepEqual(complaintsAbout(r.stderr, dir, t), [], r.stderr);

  // The check is real: the unmodified unit on a machine without regfs installed is refused.
  const broken = path.join(dir, 'broken', 'regfs.service');
  await mkdir(path.dirname(broken));
  await writeFile(broken, copy.replace('[Service]\n', '[Service]\nNoSuchSetting=1\n').replaceAll(`${path.join(bin, 'regfs')} daemon`, '/nonexistent/regfs daemon'));
  const bad = await run(analyze, ['verify', broken]);
  t.not(bad.code, 0);
  t.regex(bad.stderr, /Unknown key 'NoSuchSetting'/);
});

test('systemd/regfs-user.service passes systemd-analyze --user verify with %h set to a temp home', async (t) => {
  const analyze = await systemdAnalyze(t);
  if (!analyze) return;
  const dir = await tempDir(t, 'regfs-systemd-user-');
  const home = path.join(dir, 'home');
  const runtime = path.join(dir, 'run');
  await mkdir(path.join(home, '.local', 'bin'), { recursive: true });
  await mkdir(path.join(home, '.local', 'lib', 'regfs'), { recursive: true });
  await mkdir(path.join(home, '.config', 'systemd', 'user'), { recursive: true });
  await mkdir(runtime, { mode: 0o700 });
  // %h is the unit's user's home: with --user, systemd-analyze takes it from $HOME, so the
  // unit is verified unmodified, with a shim CLI and the real helper at the documented places.
  await writeFile(path.join(home, '.local', 'bin', 'regfs'), '#!/bin/sh\nexit 0\n', { mode: 0o755 });
  await copyFile(UNMOUNT_ALL, path.join(home, '.local', 'lib', 'regfs', 'regfs-unmount-all'));
  await chmod(path.join(home, '.local', 'lib', 'regfs', 'regfs-unmount-all'), 0o755);
  const unit = await readFile(USER_UNIT, 'utf8');
  t.true(unit.includes('ExecStart=%h/.local/bin/regfs daemon --config %h/.config/regfs/config.json --log-format json'));
  // Installed as ~/.config/systemd/user/regfs.service.
  const unitPath = path.join(home, '.config', 'systemd', 'user', 'regfs.service');
  await copyFile(USER_UNIT, unitPath);
  // The user manager needs $XDG_RUNTIME_DIR; $XDG_CONFIG_HOME keeps the real user's units out.
  const env = { ...process.env, HOME: home, XDG_RUNTIME_DIR: runtime, XDG_CONFIG_HOME: path.join(home, '.config') };
  const r = await run(analyze, ['--user', 'verify', unitPath], { env });
  t.is(r.code, 0, r.stderr);
  t.deepEqual(complaintsAbout(r.stderr, dir, t), [], r.stderr);
  for (const [key, value] of [['Type', 'notify'], ['NotifyAccess', 'all'], ['RestartPreventExitStatus', '2'], ['ExecReload', '/bin/kill -HUP $MAINPID']] as const) t.deepEqual(unitValues(unit, key), [value], key);
  // No capability or sandboxing lines: a user manager cannot apply them (see the unit's comments).
  for (const key of ['CapabilityBoundingSet', 'AmbientCapabilities', 'NoNewPrivileges', 'SystemCallArchitectures', 'PrivateTmp', 'ProtectSystem']) {
    t.deepEqual(unitValues(unit, key), [], key);
  }
});

test('the system unit keeps FUSE mounts visible: no setting that puts the service in its own mount namespace', async (t) => {
  const unit = await readFile(SYSTEM_UNIT, 'utf8');
  // Each of these makes systemd run the service in a mount namespace with propagation to the host
  // turned off (systemd.exec(5), PrivateMounts= and MountFlags=): the mounts would be invisible.
  for (const key of ['PrivateTmp', 'ProtectSystem', 'ProtectKernelTunables', 'ProtectKernelModules', 'ProtectControlGroups', 'ProtectKernelLogs', 'ProtectProc', 'PrivateMounts', 'PrivateDevices', 'ReadOnlyPaths', 'ReadWritePaths', 'InaccessiblePaths', 'TemporaryFileSystem', 'BindPaths', 'MountFlags']) {
    t.deepEqual(unitValues(unit, key), [], `${key}= would hide the mounts from the host`);
  }
  t.deepEqual(unitValues(unit, 'ProtectHome'), ['no']);
  t.deepEqual(unitValues(unit, 'Type'), ['notify']);
  t.deepEqual(unitValues(unit, 'NotifyAccess'), ['all']);
  t.deepEqual(unitValues(unit, 'RestartPreventExitStatus'), ['2']);
  t.deepEqual(unitValues(unit, 'ExecReload'), ['/bin/kill -HUP $MAINPID']);
  t.deepEqual(unitValues(unit, 'Restart'), ['on-failure']);
  t.deepEqual(unitValues(unit, 'KillSignal'), ['SIGTERM']);
  t.deepEqual(unitValues(unit, 'DeviceAllow'), ['/dev/fuse rw']);
  t.deepEqual(unitValues(unit, 'CapabilityBoundingSet'), ['CAP_SYS_ADMIN CAP_DAC_OVERRIDE CAP_CHOWN CAP_FOWNER']);
  for (const key of ['RuntimeDirectory', 'StateDirectory', 'CacheDirectory']) {
    t.deepEqual(unitValues(unit, key), ['regfs'], key);
    t.deepEqual(unitValues(unit, `${key}Mode`), ['0700'], `${key}Mode`);
  }
  const example = JSON.parse(await readFile(path.join(SYSTEMD, 'config.example.json'), 'utf8')) as { mounts: Array<Record<string, string>>; metadataTtlSeconds: number };
  t.deepEqual(example.mounts[0], { source: 'localhost:5000', mountpoint: '/srv/registry', staging: '/srv/staging' });
  t.is(example.metadataTtlSeconds, 30);
});

test('the unit\'s ExecStart line run by hand mounts, survives ExecReload (SIGHUP), logs JSON and exits 0 on SIGTERM with the mount gone', async (t) => {
  const content = 'served through the systemd command line\n';
  const store = await makeOciStore(t, content);
  const base = await tempDir(t, 'regfs-systemd-daemon-');
  const mnt = path.join(base, 'mnt');
  await mkdir(mnt);
  const config = path.join(base, 'config.json');
  const socket = path.join(base, 'ctl', 'control.sock');
  await writeFile(
    config,
    JSON.stringify({ mounts: [{ source: `oci:${store}`, mountpoint: mnt }], cacheDir: path.join(base, 'cache'), stateDir: path.join(base, 'state'), socket }),
  );

  const unit = await readFile(SYSTEM_UNIT, 'utf8');
  const [execStart] = unitValues(unit, 'ExecStart');
  t.is(execStart, '/usr/local/bin/regfs daemon --config /etc/regfs/config.json --log-format json --allow-other');
  const argv = execStart!.split(/\s+/).map((a) => (a === '/usr/local/bin/regfs' ? REGFS : a === '/etc/regfs/config.json' ? config : a));
  // The unit's Environment= lines, with /run, /var/cache and /var/lib moved into the temp dir.
  const env: NodeJS.ProcessEnv = { ...process.env };
  for (const assignment of unitValues(unit, 'Environment').flatMap((v) => v.split(/\s+/))) {
    const [k, v] = assignment.split('=') as [string, string];
    env[k] = path.join(base, 'sys', v);
  }
  t.is(env.XDG_RUNTIME_DIR, path.join(base, 'sys', 'run'));

  const d = background(t, argv, mnt, env);
  await waitUntil(`${mnt} in /proc/mounts`, 20_000, async () => (await regfsMounts()).includes(mnt), d);
  t.is(await readFile(path.join(mnt, 'demo', '1', 'file.txt'), 'utf8'), content);
  t.true((await stat(socket)).isSocket());
  // --allow-other: another user of the host reads the mount (the temp dir above it opened up first).
  await chmod(base, 0o755);
  const asNobody = await run('setpriv', ['--reuid=nobody', '--regid=nogroup', '--clear-groups', 'cat', path.join(mnt, 'demo', '1', 'file.txt')]);
  t.is(asNobody.stdout, content, asNobody.stderr);

  // ExecReload exactly as systemd runs it, with $MAINPID filled in.
  const [reload] = unitValues(unit, 'ExecReload');
  const [killBin, ...killArgs] = reload!.replace('$MAINPID', String(d.child.pid)).split(/\s+/);
  t.is((await run(killBin!, killArgs)).code, 0);
  await new Promise((r) => setTimeout(r, 1000));
  t.is(d.child.exitCode, null, d.logs());
  t.true((await regfsMounts()).includes(mnt));
  t.is(await readFile(path.join(mnt, 'demo', '1', 'file.txt'), 'utf8'), content);

  // KillSignal=SIGTERM, within TimeoutStopSec=60.
  process.kill(d.child.pid!, 'SIGTERM');
  const timer = setTimeout(() => d.child.kill('SIGKILL'), 60_000);
  const { code, signal } = await d.exited;
  clearTimeout(timer);
  t.is(signal, null, d.logs());
  t.is(code, 0, d.logs());
  t.false((await regfsMounts()).includes(mnt), d.logs());
  // --log-format json: every line on stderr is one JSON object (what journald pipelines read).
  const lines = d.stderr().split('\n').filter((l) => l.trim());
  t.true(lines.length > 0);
  for (const l of lines) t.notThrows(() => JSON.parse(l) as unknown, l);
});

test('regfs-unmount-all clears a stale regfs mount left by SIGKILL, and only that one', async (t) => {
  const content = 'stale mount test\n';
  const store = await makeOciStore(t, content);
  const base = await tempDir(t, 'regfs-systemd-unmount-');
  // The stale mount has a space in its path (written \040 in /proc/mounts); the live one is in a
  // sibling whose name merely starts with the scope's name.
  const scope = path.join(base, 'scope');
  const staleMnt = path.join(scope, 'stale mnt');
  const liveMnt = path.join(base, 'scope-sibling', 'mnt');
  await mkdir(staleMnt, { recursive: true });
  await mkdir(liveMnt, { recursive: true });
  const mount = (mnt: string, cache: string) => {
    const m = background(t, [process.execPath, REGFS, 'mount', `oci:${store}`, mnt, '--cache-dir', path.join(base, cache)], mnt);
    return m;
  };
  const stale = mount(staleMnt, 'cache1');
  const live = mount(liveMnt, 'cache2');
  for (const [m, mnt] of [[stale, staleMnt], [live, liveMnt]] as const) {
    await waitUntil(`${mnt} mounted`, 20_000, async () => (await regfsMounts()).includes(mnt) && (await readFile(path.join(mnt, 'demo', '1', 'file.txt'), 'utf8')) === content, m);
  }

  // SIGKILL by pid: the process cannot unmount, the kernel keeps a dead mount.
  process.kill(stale.child.pid!, 'SIGKILL');
  await stale.exited;
  t.true((await regfsMounts()).includes(staleMnt));
  const err = await readFile(path.join(staleMnt, 'demo', '1', 'file.txt')).then(() => undefined, (e: NodeJS.ErrnoException) => e.code);
  t.is(err, 'ENOTCONN');

  // Another user runs it with no arguments: root's mounts are not theirs, nothing is touched.
  const asNobody = await run('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', UNMOUNT_ALL]);
  t.is(asNobody.code, 0, asNobody.stderr);
  t.is(asNobody.stderr, '');
  t.true((await regfsMounts()).includes(staleMnt));

  // A relative DIR is a usage error, before anything is unmounted.
  t.is((await run(UNMOUNT_ALL, ['relative/dir'])).code, 2);
  t.true((await regfsMounts()).includes(staleMnt));

  // Scoped to this test's directory: other tests run concurrently with their own regfs mounts,
  // which the unit's argument-less call (every regfs mount of the user) would take down too.
  const r = await run(UNMOUNT_ALL, [`${scope}/`]);
  t.is(r.code, 0, r.stderr);
  t.is(r.stderr.trim(), `regfs-unmount-all: unmounted ${staleMnt}`);
  const after = await regfsMounts();
  t.false(after.includes(staleMnt));
  t.true(after.includes(liveMnt));
  t.is(await readFile(path.join(liveMnt, 'demo', '1', 'file.txt'), 'utf8'), content);
  t.is(live.child.exitCode, null, live.logs());
  // A second run finds nothing to do.
  const again = await run(UNMOUNT_ALL, [scope]);
  t.is(again.code, 0, again.stderr);
  t.is(again.stderr, '');
});

import test from 'ava';
import { execFile } from 'node:child_process';
import { chmod, mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { cliEnv, runCli, tempDir } from '../lab/cli.js';
import { startDaemon, waitFor } from '../lab/daemon.js';
import { startMount } from '../lab/mount.js';
import { checkAllowOther } from '../mount/mounter.js';
import { isRegfsError } from '../util/errors.js';

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/** asNobody runs a command as user nobody, group nogroup, no supplementary groups. */
function asNobody(argv: string[]): Promise<Run> {
  return new Promise((resolve) => {
    execFile('setpriv', ['--reuid=nobody', '--regid=nogroup', '--clear-groups', ...argv], { timeout: 30_000 }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : 1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

async function makeStore(t: Parameters<typeof tempDir>[0]): Promise<string> {
  const { env } = await cliEnv(t);
  const src = await tempDir(t, 'regfs-other-src-');
  await mkdir(path.join(src, 'docs'));
  await writeFile(path.join(src, 'file.txt'), 'for everyone\n');
  await writeFile(path.join(src, 'docs', 'a.md'), '# a\n');
  const store = await tempDir(t, 'regfs-other-store-');
  const r = await runCli(['push', `oci:${store}/demo:1`, 'file.txt', 'docs/'], { cwd: src, env });
  if (r.code !== 0) throw new Error(`regfs push failed (${r.code}): ${r.stderr}`);
  return store;
}

/** openBase makes the daemon's temp dir traversable by others (mkdtemp makes it 0700). */
async function daemonFor(t: Parameters<typeof tempDir>[0], store: string, args: string[]) {
  const base = await tempDir(t, 'regfs-other-');
  await chmod(base, 0o755);
  const d = await startDaemon(t, { source: `oci:${store}`, staging: false, dirs: { base }, args });
  await waitFor(async () => (await stat(path.join(d.dirs.mnt, 'demo', '1', 'file.txt')).catch(() => undefined))?.isFile(), 30_000, 'the mount', d.logs);
  return d;
}

test('a daemon mount with --allow-other is read by user nobody (0644/0755, owner root), and cp -r out of it leaves a tree nobody can rm -rf', async (t) => {
  const store = await makeStore(t);
  const d = await daemonFor(t, store, ['--allow-other']);
  const file = path.join(d.dirs.mnt, 'demo', '1', 'file.txt');
  const st = await stat(file);
  t.is(st.mode & 0o7777, 0o644);
  t.is((await stat(path.join(d.dirs.mnt, 'demo', '1', 'docs'))).mode & 0o7777, 0o755);
  const ls = await asNobody(['ls', path.join(d.dirs.mnt, 'demo', '1')]);
  t.is(ls.code, 0, ls.stderr);
  t.deepEqual(ls.stdout.trim().split('\n'), ['docs', 'file.txt']);
  const cat = await asNobody(['cat', file]);
  t.is(cat.code, 0, cat.stderr);
  t.is(cat.stdout, 'for everyone\n');
  // The modes mean something: writes stay refused (read-only mount), for root too.
  await t.throwsAsync(writeFile(file, 'x'), { code: 'EROFS' });

  const out = await tempDir(t, 'regfs-other-out-');
  await chmod(out, 0o777);
  const copy = await asNobody(['sh', '-c', `cp -r '${path.join(d.dirs.mnt, 'demo', '1')}' '${out}/copy' && rm -rf '${out}/copy' && echo removed`]);
  t.is(copy.code, 0, copy.stderr);
  t.is(copy.stdout.trim(), 'removed');

  const { env } = await cliEnv(t);
  const status = JSON.parse((await runCli(['status', '--socket', d.dirs.socket, '--format', 'json'], { env })).stdout) as { mounts: Array<{ allowOther: boolean }> };
  t.true(status.mounts[0]!.allowOther);
});

test('without --allow-other user nobody is refused (EACCES); --file-mode/--dir-mode/--umask/--uid/--gid are what stat shows and, with --allow-other, what the kernel enforces', async (t) => {
  const store = await makeStore(t);
  const closed = await daemonFor(t, store, []);
  const refused = await asNobody(['ls', closed.dirs.mnt]);
  t.not(refused.code, 0);
  t.regex(refused.stderr, /Permission denied/);
  const refusedCat = await asNobody(['cat', path.join(closed.dirs.mnt, 'demo', '1', 'file.txt')]);
  t.regex(refusedCat.stderr, /Permission denied/);

  const modes = await daemonFor(t, store, ['--allow-other', '--file-mode', '0660', '--dir-mode', '0775', '--umask', '002', '--uid', '1234', '--gid', '4321']);
  const file = path.join(modes.dirs.mnt, 'demo', '1', 'file.txt');
  const st = await stat(file);
  t.is(st.mode & 0o7777, 0o660);
  t.is(st.uid, 1234);
  t.is(st.gid, 4321);
  t.is((await stat(path.join(modes.dirs.mnt, 'demo'))).mode & 0o7777, 0o775);
  // Directories are open to others (r-x), files are not (---): the kernel says EACCES to nobody.
  const ls = await asNobody(['ls', path.join(modes.dirs.mnt, 'demo', '1')]);
  t.is(ls.code, 0, ls.stderr);
  const cat = await asNobody(['cat', file]);
  t.not(cat.code, 0);
  t.regex(cat.stderr, /Permission denied/);
  // Root still reads it (default_permissions grants root everything but the read-only refusals).
  t.is(await readFile(file, 'utf8'), 'for everyone\n');
});

test('regfs mount takes the same flags; bad values are exit 2', async (t) => {
  const store = await makeStore(t);
  const m = await startMount(t, `oci:${store}`, { args: ['--file-mode', '0600', '--dir-mode', '0700'] });
  t.is((await stat(path.join(m.mnt, 'demo', '1', 'file.txt'))).mode & 0o7777, 0o600);
  t.is((await stat(path.join(m.mnt, 'demo'))).mode & 0o7777, 0o700);
  for (const bad of [['--file-mode', '0999'], ['--umask', 'rw'], ['--uid', '-1']]) {
    const r = await runCli(['mount', `oci:${store}`, m.mnt, ...bad]);
    t.is(r.code, 2, `${bad.join(' ')}: ${r.stderr}`);
    t.regex(r.stderr, new RegExp(`invalid ${bad[0]}`));
  }
});

test('--allow-other for a user other than root needs user_allow_other in /etc/fuse.conf, and says so', async (t) => {
  const dir = await tempDir(t, 'regfs-fuseconf-');
  const conf = path.join(dir, 'fuse.conf');
  await writeFile(conf, '# mount_max = 1000\n#user_allow_other\n');
  const err = await checkAllowOther(1000, conf).then(() => undefined, (e: unknown) => e);
  t.true(isRegfsError(err, 'INVALID_ARGUMENT'));
  t.regex((err as Error).message, /--allow-other needs "user_allow_other" in .*fuse\.conf .*echo user_allow_other >>/);
  await t.throwsAsync(checkAllowOther(1000, path.join(dir, 'missing.conf')));
  await writeFile(conf, 'user_allow_other\n');
  await t.notThrowsAsync(checkAllowOther(1000, conf));
  await t.notThrowsAsync(checkAllowOther(0, path.join(dir, 'missing.conf')));
});

test('allowOther and the modes in a config file: top-level defaults, a mount\'s own keys win, bad values name the key', async (t) => {
  const { resolveConfig, validateConfig } = await import('../daemon/settings.js');
  const cfg = resolveConfig(validateConfig({ allowOther: true, fileMode: '0640', mounts: [{ source: 'oci:/x', mountpoint: '/m1' }, { source: 'oci:/y', mountpoint: '/m2', allowOther: false, dirMode: '0700', uid: 1000 }] }, 'config', '/'), {});
  t.deepEqual(cfg.mountDefaults, { allowOther: true, fileMode: 0o640 });
  t.deepEqual([cfg.mounts[0]!.allowOther, cfg.mounts[1]!.allowOther, cfg.mounts[1]!.dirMode, cfg.mounts[1]!.uid], [undefined, false, 0o700, 1000]);
  const flags = resolveConfig(undefined, { source: 'oci:/z', mountpoint: '/m3', allowOther: true, umask: 0o22 });
  t.deepEqual(flags.mountDefaults, { allowOther: true, umask: 0o22 });
  t.throws(() => validateConfig({ mounts: [{ source: 'oci:/x', mountpoint: '/m', fileMode: 644 }] }, 'config', '/'), { message: /mounts\[0\]\.fileMode/ });
  t.throws(() => validateConfig({ allowOther: 'yes' }, 'config', '/'), { message: /allowOther: must be true or false/ });
});

import test from 'ava';
import { mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { cliEnv, runCli, tempDir } from '../lab/cli.js';
import { startDaemon, waitFor } from '../lab/daemon.js';
import { isMounted } from '../lab/mount.js';

test('mounts add takes the transport and access flags and is saved into the config file (back after a restart); mounts rm removes it there too', async (t) => {
  const { env } = await cliEnv(t);
  const src = await tempDir(t, 'regfs-persist-src-');
  await writeFile(path.join(src, 'a.txt'), 'persisted\n');
  const store = await tempDir(t, 'regfs-persist-store-');
  t.is((await runCli(['push', `oci:${store}/demo:1`, 'a.txt'], { cwd: src, env })).code, 0);

  const base = await tempDir(t, 'regfs-persist-');
  const config = path.join(base, 'config.json');
  await writeFile(config, '{}\n', { mode: 0o640 });
  const extra = path.join(base, 'extra');
  await mkdir(extra);
  const start = () => startDaemon(t, { source: `oci:${store}`, staging: false, dirs: { base }, args: ['--config', config] });
  const d = await start();
  const sock = ['--socket', d.dirs.socket];
  const regCfg = path.join(base, 'auth.json');
  await writeFile(regCfg, '{"auths":{}}\n');
  const add = await runCli(['mounts', 'add', `oci:${store}`, extra, '--plain-http', '--registry-config', regCfg, '--file-mode', '0600', ...sock], { env });
  t.is(add.code, 0, add.stderr);
  t.is(add.stdout.trim(), `Mounted oci:${store} at ${extra} (saved to ${config})`);
  t.is((await stat(path.join(extra, 'demo', '1', 'a.txt'))).mode & 0o777, 0o600);
  const saved = JSON.parse(await readFile(config, 'utf8')) as { mounts: Array<Record<string, unknown>> };
  t.deepEqual(saved.mounts, [{ source: `oci:${store}`, mountpoint: extra, plainHttp: true, registryConfig: regCfg, fileMode: '0600' }]);
  t.is((await stat(config)).mode & 0o777, 0o640, 'the file keeps its mode');

  // A bad flag is exit 2 before anything is asked of the daemon.
  t.is((await runCli(['mounts', 'add', `oci:${store}`, extra, '--dir-mode', '9', ...sock], { env })).code, 2);

  // Restart: the added mount is back, from the file.
  t.is(await d.stop(), 0, d.logs());
  t.false(await isMounted(extra));
  const again = await start();
  await waitFor(async () => isMounted(extra), 30_000, 'the saved mount after a restart', again.logs);
  t.is(await readFile(path.join(extra, 'demo', '1', 'a.txt'), 'utf8'), 'persisted\n');
  t.is((await stat(path.join(extra, 'demo', '1', 'a.txt'))).mode & 0o777, 0o600);

  const rm = await runCli(['mounts', 'rm', extra, ...sock], { env });
  t.is(rm.code, 0, rm.stderr);
  t.false(await isMounted(extra));
  t.deepEqual((JSON.parse(await readFile(config, 'utf8')) as { mounts: unknown[] }).mounts, []);
  t.is(await again.stop(), 0);
});

import test from 'ava';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { defaultPaths, loadConfigFile, resolveConfig, validateConfig } from '../daemon/settings.js';
import { RegfsError } from '../registry/errors.js';

test('defaults follow XDG, with root and per-user fallbacks', (t) => {
  t.deepEqual(defaultPaths({}, 0), { cacheDir: '/var/cache/regfs', stateDir: '/var/lib/regfs', socket: '/run/regfs/control.sock' });
  const xdg = defaultPaths({ XDG_CACHE_HOME: '/c', XDG_STATE_HOME: '/s', XDG_RUNTIME_DIR: '/r' }, 1000);
  t.deepEqual(xdg, { cacheDir: '/c/regfs', stateDir: '/s/regfs', socket: '/r/regfs/control.sock' });
  const user = defaultPaths({}, 1000);
  t.true(user.cacheDir.endsWith('/.cache/regfs'));
  t.regex(user.socket, /regfs-1000\/control\.sock$/);
});

test('unknown keys and bad values are rejected with the key named', (t) => {
  const bad: Array<[unknown, RegExp]> = [
    [{ mounts: [{ source: 'localhost:5000', mountpont: '/m' }] }, /mounts\[0\]: unknown key "mountpont" \(did you mean "mountpoint"\?\)/],
    [{ cachedir: '/x' }, /unknown key "cachedir" \(did you mean "cacheDir"\?\)/],
    [{ metadataTtlSeconds: -1 }, /metadataTtlSeconds: must be a non-negative number/],
    [{ logFormat: 'xml' }, /logFormat: must be "text" or "json"/],
    [{ cacheMaxSize: 'lots' }, /cacheMaxSize: must be a size/],
    [{ mounts: {} }, /mounts: must be a list/],
    [{ mounts: [{ mountpoint: '/m' }] }, /mounts\[0\]\.source/],
    [{ mounts: [{ source: 'x', mountpoint: '/m', plainHttp: 'yes' }] }, /mounts\[0\]\.plainHttp: must be true or false/],
    [[], /must be a JSON object/],
  ];
  for (const [raw, re] of bad) {
    const err = t.throws(() => validateConfig(raw, 'config F', '/etc/regfs'), { instanceOf: RegfsError });
    t.regex(err!.message, re);
    t.is(err!.code, 'INVALID_ARGUMENT');
  }
  const ok = validateConfig({ cacheMaxSize: '10G', mounts: [{ source: 'oci:store', mountpoint: 'mnt', staging: 'st' }] }, 'config F', '/etc/regfs');
  t.is(ok.cacheMaxSize, 10 * 1024 ** 3);
  t.deepEqual(ok.mounts, [{ source: 'oci:/etc/regfs/store', mountpoint: '/etc/regfs/mnt', staging: '/etc/regfs/st' }]);
});

test('overlapping mountpoints and a staging, cache or socket path inside a mountpoint are refused', (t) => {
  const base = { cacheDir: '/var/c', stateDir: '/var/s', socket: '/run/x.sock' };
  t.regex(t.throws(() => resolveConfig({ ...base, mounts: [{ source: 'a', mountpoint: '/m' }, { source: 'b', mountpoint: '/m/sub' }] }, {}))!.message, /inside the mountpoint \/m/);
  t.regex(t.throws(() => resolveConfig({ ...base, mounts: [{ source: 'a', mountpoint: '/m' }, { source: 'b', mountpoint: '/m' }] }, {}))!.message, /used twice/);
  t.regex(t.throws(() => resolveConfig(base, { source: 'a', mountpoint: '/m', staging: '/m/st' }))!.message, /staging folder \/m\/st is inside the mountpoint \/m.*deadlock/);
  t.regex(t.throws(() => resolveConfig({ ...base, cacheDir: '/m/cache' }, { source: 'a', mountpoint: '/m' }))!.message, /cacheDir \/m\/cache is inside the mountpoint/);
  t.regex(t.throws(() => resolveConfig(base, { staging: '/st' }))!.message, /--staging needs --source/);
  const cfg = resolveConfig({ ...base, metadataTtlSeconds: 5 }, { source: 'localhost:5000', mountpoint: '/m', metadataTtlSeconds: 9 });
  t.is(cfg.metadataTtlSeconds, 9, 'flags win over the file');
  t.is(cfg.quietSeconds, 2);
  t.is(cfg.mounts.length, 1);
});

test('loadConfigFile names the file on unreadable or invalid JSON', async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'regfs-cfg-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const f = path.join(dir, 'c.json');
  await writeFile(f, '{ not json');
  t.regex((await t.throwsAsync(loadConfigFile(f)))!.message, new RegExp(`config ${f}: not valid JSON`));
  await t.throwsAsync(loadConfigFile(path.join(dir, 'missing.json')), { message: /cannot read it/ });
  await writeFile(f, JSON.stringify({ mounts: [{ source: 'oci:./s', mountpoint: './m' }] }));
  t.deepEqual((await loadConfigFile(f)).mounts, [{ source: `oci:${dir}/s`, mountpoint: `${dir}/m` }]);
});

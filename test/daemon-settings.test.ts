import test from 'ava';
import { chmod, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { defaultPaths } from '../util/paths.js';
import { loadConfigFile, resolveConfig, syncEndpoint, updateConfigSyncs, validateConfig, type SyncConfig } from '../daemon/settings.js';
import { RegfsError } from '../util/errors.js';

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
    [{ readStreams: 0 }, /readStreams: must be a whole number from 1 to 16/],
    [{ readStreams: 2.5 }, /readStreams: must be a whole number from 1 to 16/],
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

test('sync pairs: defaults, one-line errors naming the key, and folders overlapping a mount, staging or another pair are refused', (t) => {
  const ok = validateConfig(
    {
      syncs: [
        { local: 'models', repository: 'localhost:5000/team/models' },
        { local: '/abs/docs', repository: 'oci:store/team/docs', tags: 'v*,latest', direction: 'down', intervalSeconds: 5, propagateDeletes: true },
      ],
    },
    'config F',
    '/etc/regfs',
  );
  t.deepEqual(ok.syncs, [
    { local: '/etc/regfs/models', repository: 'localhost:5000/team/models', direction: 'both', intervalSeconds: 30, propagateDeletes: false },
    { local: '/abs/docs', repository: 'oci:/etc/regfs/store/team/docs', tags: 'v*,latest', direction: 'down', intervalSeconds: 5, propagateDeletes: true },
  ]);
  t.deepEqual(syncEndpoint('oci:/s/team/docs'), { source: 'oci:/s/team', repository: 'docs' });
  t.deepEqual(syncEndpoint('localhost:5000/team/models'), { source: 'localhost:5000', repository: 'team/models' });
  const repo = 'localhost:5000/x';
  const bad: Array<[unknown, RegExp]> = [
    [{ syncs: {} }, /syncs: must be a list/],
    [{ syncs: [{ repository: repo }] }, /syncs\[0\]\.local: must be a path/],
    [{ syncs: [{ local: 'l' }] }, /syncs\[0\]\.repository: must be host\[:port\]\/repository or oci:DIR\/NAME/],
    [{ syncs: [{ local: 'l', repository: 'localhost:5000/x:v1' }] }, /syncs\[0\]\.repository: .*without a tag/],
    [{ syncs: [{ local: 'l', repository: 'oci:/s/Bad' }] }, /syncs\[0\]\.repository: .*lowercase NAME/],
    [{ syncs: [{ local: 'l', repository: repo, direction: 'sideways' }] }, /syncs\[0\]\.direction: must be "both", "up" or "down"/],
    [{ syncs: [{ local: 'l', repository: repo, intervalSeconds: 0 }] }, /syncs\[0\]\.intervalSeconds: must be a number of seconds, at least 1/],
    [{ syncs: [{ local: 'l', repository: repo, tags: 'a/b' }] }, /syncs\[0\]\.tags: must be a glob/],
    [{ syncs: [{ local: 'l', repository: repo, propagateDeletes: 'yes' }] }, /syncs\[0\]\.propagateDeletes: must be true or false/],
    [{ syncs: [{ local: 'l', repository: repo, propagateDelete: true }] }, /syncs\[0\]: unknown key "propagateDelete" \(did you mean "propagateDeletes"\?\)/],
  ];
  for (const [raw, re] of bad) {
    const err = t.throws(() => validateConfig(raw, 'config F', '/etc/regfs'), { instanceOf: RegfsError });
    t.regex(err!.message, re);
    t.is(err!.message.split('\n').length, 1);
  }
  const base = { cacheDir: '/var/c', stateDir: '/var/s', socket: '/run/x.sock' };
  const pair = (local: string): SyncConfig => ({ local, repository: repo, direction: 'both', intervalSeconds: 30, propagateDeletes: false });
  t.regex(t.throws(() => resolveConfig({ ...base, syncs: [pair('/m/sub')] }, { source: 'a', mountpoint: '/m' }))!.message, /sync folder \/m\/sub overlaps the mountpoint \/m.*deadlock/);
  t.regex(t.throws(() => resolveConfig({ ...base, syncs: [pair('/')] }, { source: 'a', mountpoint: '/m' }))!.message, /overlaps the mountpoint/);
  t.regex(t.throws(() => resolveConfig({ ...base, syncs: [pair('/st/x')] }, { source: 'a', mountpoint: '/m', staging: '/st' }))!.message, /overlaps the staging folder \/st/);
  t.regex(t.throws(() => resolveConfig({ ...base, syncs: [pair('/a'), pair('/a/b')] }, {}))!.message, /sync folder \/a\/b overlaps the sync folder \/a/);
  t.regex(t.throws(() => resolveConfig({ ...base, syncs: [pair('/var/s/x')] }, {}))!.message, /overlaps stateDir/);
  t.deepEqual(resolveConfig({ ...base, syncs: [pair('/a'), pair('/b')] }, {}).syncs.map((s) => s.local), ['/a', '/b']);
});

test('updateConfigSyncs rewrites only the syncs of a config file, atomically, keeping its mode; an invalid result leaves it untouched', async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'regfs-cfg-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const f = path.join(dir, 'c.json');
  await writeFile(f, JSON.stringify({ mounts: [{ source: 'oci:./s', mountpoint: './m' }], metadataTtlSeconds: 7 }));
  await chmod(f, 0o640);
  await updateConfigSyncs(f, (list) => [...list, { local: '/data/models', repository: 'localhost:5000/team/models' }]);
  const saved = JSON.parse(await readFile(f, 'utf8')) as Record<string, unknown>;
  t.deepEqual(saved, { mounts: [{ source: 'oci:./s', mountpoint: './m' }], metadataTtlSeconds: 7, syncs: [{ local: '/data/models', repository: 'localhost:5000/team/models' }] });
  t.is((await stat(f)).mode & 0o777, 0o640);
  const before = await readFile(f, 'utf8');
  await t.throwsAsync(updateConfigSyncs(f, (list) => [...list, { local: '/x', repository: 'not a repo' }]), { message: /syncs\[1\]\.repository/ });
  t.is(await readFile(f, 'utf8'), before);
  await updateConfigSyncs(f, (list, baseDir) => list.filter((s) => path.resolve(baseDir, String(s.local)) !== '/data/models'));
  t.deepEqual((JSON.parse(await readFile(f, 'utf8')) as { syncs: unknown[] }).syncs, []);
});

test('mount sources in the config: namespace, repository and artifact sources, repositories, and staging only on a whole store', (t) => {
  const ok = validateConfig({ mounts: [
    { source: 'ghcr.io/myorg', mountpoint: 'a', repositories: ['myorg/app', 'myorg/team/web'] },
    { source: 'localhost:5000/samples/artifact:1.0', mountpoint: 'b' },
    { source: 'oci:store:1.0', mountpoint: 'c' },
    { source: 'localhost:5000', mountpoint: 'd', staging: 'st' },
  ] }, 'config F', '/etc/regfs');
  t.deepEqual(ok.mounts!.map((m) => m.source), ['ghcr.io/myorg', 'localhost:5000/samples/artifact:1.0', 'oci:/etc/regfs/store:1.0', 'localhost:5000']);
  t.deepEqual(ok.mounts![0]!.repositories, ['myorg/app', 'myorg/team/web']);
  const bad = (m: Record<string, unknown>): string => t.throws(() => validateConfig({ mounts: [{ mountpoint: 'x', ...m }] }, 'config F', '/etc/regfs'), { instanceOf: RegfsError })!.message;
  t.regex(bad({ source: 'localhost:5000/Team' }), /^config F: mounts\[0\]\.source: .*component "Team"/);
  t.regex(bad({ source: 'localhost:5000', repositories: ['ok', 'Not OK'] }), /mounts\[0\]\.repositories: "Not OK" is not a repository name/);
  t.regex(bad({ source: 'localhost:5000', repositories: 'team/app' }), /mounts\[0\]\.repositories: must be a list/);
  t.regex(bad({ source: 'localhost:5000/team', staging: 'st' }), /mounts\[0\]\.staging: a mount of localhost:5000\/team is read-only; staging needs a whole-registry source/);
});

/**
 * Docker Hub conventions as docker, skopeo and oras apply them (no internet here: pure functions and
 * files only): docker.io / index.docker.io talk to registry-1.docker.io, one-component names mean
 * library/NAME, credentials live under https://index.docker.io/v1/ (or any alias); and the
 * podman/skopeo auth files are read when docker's config has no entry for a host.
 */
import test from 'ava';
import { chmod, mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { tempDir } from '../lab/cli.js';
import { CredentialStore, DOCKER_HUB_SERVER, containersAuthPaths, hostKeys, serverAddress } from '../registry/credentials.js';
import { canonicalRegistry, isDockerHub, normaliseRepository, parseReference, referenceString, registryApiHost } from '../registry/reference.js';
import { RegfsError } from '../util/errors.js';

const b64 = (s: string): string => Buffer.from(s).toString('base64');

test('Docker Hub names: docker.io and index.docker.io talk to registry-1.docker.io; other hosts are unchanged', (t) => {
  for (const h of ['docker.io', 'index.docker.io', 'registry-1.docker.io', 'Docker.IO']) {
    t.true(isDockerHub(h), h);
    t.is(registryApiHost(h), 'registry-1.docker.io');
    t.is(canonicalRegistry(h), 'docker.io');
  }
  for (const h of ['ghcr.io', 'localhost:5000', 'docker.io:5000', 'mirror.docker.io', 'hub.docker.com', 'myreg.azurecr.io']) {
    t.false(isDockerHub(h), h);
    t.is(registryApiHost(h), h);
    t.is(canonicalRegistry(h), h);
  }
});

test('a one-component repository on Docker Hub means library/NAME; nowhere else', (t) => {
  t.is(normaliseRepository('docker.io', 'alpine'), 'library/alpine');
  t.is(normaliseRepository('docker.io', 'bitnami/redis'), 'bitnami/redis');
  t.is(normaliseRepository('docker.io', 'library/alpine'), 'library/alpine');
  t.is(normaliseRepository('ghcr.io', 'alpine'), 'alpine');
  t.is(normaliseRepository('localhost:5000', 'x'), 'x');

  t.deepEqual(parseReference('docker.io/alpine:3.20'), { kind: 'remote', registry: 'docker.io', repository: 'library/alpine', tag: '3.20', digest: undefined });
  t.deepEqual(parseReference('index.docker.io/bitnami/redis'), { kind: 'remote', registry: 'docker.io', repository: 'bitnami/redis', tag: undefined, digest: undefined });
  t.deepEqual(parseReference('registry-1.docker.io/busybox@sha256:' + 'b'.repeat(64)), {
    kind: 'remote',
    registry: 'docker.io',
    repository: 'library/busybox',
    tag: undefined,
    digest: `sha256:${'b'.repeat(64)}`,
  });
  t.is(referenceString(parseReference('docker.io/alpine:3')), 'docker.io/library/alpine:3');
  // Other hosts keep what was typed.
  t.deepEqual(parseReference('ghcr.io/alpine:1'), { kind: 'remote', registry: 'ghcr.io', repository: 'alpine', tag: '1', digest: undefined });
  t.deepEqual(parseReference('localhost:5000/x'), { kind: 'remote', registry: 'localhost:5000', repository: 'x', tag: undefined, digest: undefined });
});

test('credential keys: Docker Hub under https://index.docker.io/v1/ and every alias; other hosts as before', (t) => {
  for (const h of ['docker.io', 'index.docker.io', 'registry-1.docker.io']) {
    t.is(serverAddress(h), DOCKER_HUB_SERVER);
    const keys = hostKeys(h);
    t.is(keys[0], 'https://index.docker.io/v1/');
    for (const k of ['docker.io', 'index.docker.io', 'registry-1.docker.io', 'https://index.docker.io', 'https://registry-1.docker.io']) t.true(keys.includes(k), k);
  }
  t.is(serverAddress('ghcr.io'), 'ghcr.io');
  t.deepEqual(hostKeys('ghcr.io'), ['ghcr.io', 'https://ghcr.io', 'http://ghcr.io', 'https://ghcr.io/v1/', 'https://ghcr.io/v2/']);
});

test('a docker.io login written by docker (https://index.docker.io/v1/) is found for every Docker Hub alias, and put/remove use that key', async (t) => {
  const dir = await tempDir(t);
  const file = path.join(dir, 'config.json');
  await writeFile(file, JSON.stringify({ auths: { 'https://index.docker.io/v1/': { auth: b64('hubuser:hubpass') } } }));
  const store = new CredentialStore(file);
  for (const h of ['docker.io', 'index.docker.io', 'registry-1.docker.io']) t.deepEqual(await store.get(h), { username: 'hubuser', password: 'hubpass' }, h);
  t.is(await store.get('ghcr.io'), undefined);

  // podman writes "docker.io"; oras may have "registry-1.docker.io": both are accepted.
  for (const key of ['docker.io', 'registry-1.docker.io', 'index.docker.io']) {
    await writeFile(file, JSON.stringify({ auths: { [key]: { auth: b64(`u-${key}:p`) } } }));
    t.deepEqual(await store.get('registry-1.docker.io'), { username: `u-${key}`, password: 'p' }, key);
  }

  // put replaces every alias entry with docker's key; remove forgets it.
  await store.put('registry-1.docker.io', { username: 'new', password: 'pw' });
  const { readFile } = await import('node:fs/promises');
  const written = JSON.parse(await readFile(file, 'utf8')) as { auths: Record<string, { auth: string }> };
  t.deepEqual(Object.keys(written.auths), ['https://index.docker.io/v1/']);
  t.is(Buffer.from(written.auths['https://index.docker.io/v1/']!.auth, 'base64').toString(), 'new:pw');
  t.true(await store.remove('docker.io'));
  t.is(await store.get('docker.io'), undefined);
});

test('a credential helper for Docker Hub is found under any alias key and asked about https://index.docker.io/v1/', async (t) => {
  const dir = await tempDir(t);
  const bin = path.join(dir, 'bin');
  await mkdir(bin);
  const helper = path.join(bin, 'docker-credential-hubtest');
  // Answers only for docker's Docker Hub server address.
  await writeFile(
    helper,
    `#!/bin/sh\nread server\nif [ "$1" = get ] && [ "$server" = "https://index.docker.io/v1/" ]; then printf '{"Username":"hu","Secret":"hs"}'; exit 0; fi\necho "credentials not found in native keychain"; exit 1\n`,
  );
  await chmod(helper, 0o755);
  const file = path.join(dir, 'config.json');
  await writeFile(file, JSON.stringify({ credHelpers: { 'docker.io': 'hubtest' } }));
  const oldPath = process.env.PATH;
  process.env.PATH = `${bin}:${oldPath}`;
  t.teardown(() => {
    process.env.PATH = oldPath;
  });
  const store = new CredentialStore(file);
  t.deepEqual(await store.get('registry-1.docker.io'), { username: 'hu', password: 'hs' });
  t.deepEqual(await store.get('index.docker.io'), { username: 'hu', password: 'hs' });
});

test('containersAuthPaths: $XDG_RUNTIME_DIR/containers/auth.json, then $XDG_CONFIG_HOME (default ~/.config)/containers/auth.json', (t) => {
  t.deepEqual(containersAuthPaths({ XDG_RUNTIME_DIR: '/run/user/1000', XDG_CONFIG_HOME: '/home/u/.cfg', HOME: '/home/u' }), [
    '/run/user/1000/containers/auth.json',
    '/home/u/.cfg/containers/auth.json',
  ]);
  t.deepEqual(containersAuthPaths({ HOME: '/home/u' }), ['/home/u/.config/containers/auth.json']);
  t.deepEqual(containersAuthPaths({ HOME: '/home/u', XDG_RUNTIME_DIR: '' }), ['/home/u/.config/containers/auth.json']);
});

test('podman/skopeo auth files are read, in order, only when docker config has no entry for the host', async (t) => {
  const dir = await tempDir(t);
  const docker = path.join(dir, 'docker', 'config.json');
  const runtime = path.join(dir, 'run', 'containers', 'auth.json');
  const config = path.join(dir, 'config', 'containers', 'auth.json');
  await mkdir(path.dirname(docker), { recursive: true });
  await mkdir(path.dirname(runtime), { recursive: true });
  await mkdir(path.dirname(config), { recursive: true });
  await writeFile(docker, JSON.stringify({ auths: { 'a.example': { auth: b64('docker-a:1') } } }));
  await writeFile(runtime, JSON.stringify({ auths: { 'a.example': { auth: b64('runtime-a:2') }, 'b.example': { auth: b64('runtime-b:3') }, 'docker.io': { auth: b64('podman-hub:4') } } }));
  await writeFile(config, JSON.stringify({ auths: { 'b.example': { auth: b64('config-b:5') }, 'c.example:5000': { auth: b64('config-c:6') }, 'd.example': { identitytoken: 'idt' } } }));

  const store = new CredentialStore(docker, { fallbackPaths: [runtime, config] });
  t.deepEqual(await store.get('a.example'), { username: 'docker-a', password: '1' }, 'docker config first');
  t.deepEqual(await store.get('b.example'), { username: 'runtime-b', password: '3' }, '$XDG_RUNTIME_DIR before ~/.config');
  t.deepEqual(await store.get('c.example:5000'), { username: 'config-c', password: '6' });
  t.deepEqual(await store.get('d.example'), { username: undefined, refreshToken: 'idt' });
  t.deepEqual(await store.get('registry-1.docker.io'), { username: 'podman-hub', password: '4' }, 'podman writes docker.io');
  t.is(await store.get('e.example'), undefined);

  // Missing fallback files are fine; an explicit config file alone reads no fallback.
  t.is(await new CredentialStore(docker, { fallbackPaths: [path.join(dir, 'nope', 'auth.json')] }).get('b.example'), undefined);
  t.is(await new CredentialStore(docker).get('b.example'), undefined);

  // put writes only docker's file, never the podman files.
  await store.put('b.example', { username: 'written', password: 'w' });
  t.deepEqual(await store.get('b.example'), { username: 'written', password: 'w' });
  const { readFile } = await import('node:fs/promises');
  t.false((await readFile(runtime, 'utf8')).includes(b64('written:w')));

  // A broken fallback file is a clear error naming it (without its content).
  await writeFile(config, '{"auths": {"e.example": {"auth": "c2VjcmV0"}');
  const err = await t.throwsAsync(store.get('e.example'), { instanceOf: RegfsError });
  t.regex(err!.message, new RegExp(`registry config ${config.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')} is not valid JSON`));
  t.false(err!.message.includes('c2VjcmV0'));
});

test('the default store (no --registry-config) falls back to the files in $XDG_RUNTIME_DIR and $XDG_CONFIG_HOME', async (t) => {
  const dir = await tempDir(t);
  const saved = { DOCKER_CONFIG: process.env.DOCKER_CONFIG, XDG_RUNTIME_DIR: process.env.XDG_RUNTIME_DIR, XDG_CONFIG_HOME: process.env.XDG_CONFIG_HOME };
  t.teardown(() => {
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  });
  process.env.DOCKER_CONFIG = path.join(dir, 'docker');
  process.env.XDG_RUNTIME_DIR = path.join(dir, 'run');
  process.env.XDG_CONFIG_HOME = path.join(dir, 'config');
  await mkdir(path.join(dir, 'config', 'containers'), { recursive: true });
  await writeFile(path.join(dir, 'config', 'containers', 'auth.json'), JSON.stringify({ auths: { 'f.example': { auth: b64('fu:fp') } } }));
  const store = new CredentialStore();
  t.deepEqual(store.fallbackPaths, [path.join(dir, 'run', 'containers', 'auth.json'), path.join(dir, 'config', 'containers', 'auth.json')]);
  t.deepEqual(await store.get('f.example'), { username: 'fu', password: 'fp' });
});

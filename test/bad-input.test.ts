import test from 'ava';
import { createHash } from 'node:crypto';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { startRegistry } from '../lab/registry.js';
import { startFaultProxy } from '../lab/fault-proxy.js';
import { startHeaderRecorder } from '../lab/blob-server.js';
import { cliEnv, runCli, tempDir } from '../lab/cli.js';
import { RemoteRegistry } from '../registry/remote.js';
import { digestOf } from '../registry/digest.js';
import { EMPTY_CONFIG, MediaType } from '../registry/media-types.js';
import { Readable } from 'node:stream';

const sha = (b: Buffer | string): string => createHash('sha256').update(b).digest('hex');

/** pushRaw pushes blobs and a hand-made manifest with the library, bypassing push's own title checks. */
async function pushRaw(host: string, repo: string, tag: string, layers: Array<{ title: string; data: Buffer }>): Promise<void> {
  const r = new RemoteRegistry(host).repository(repo);
  try {
    await r.pushBlob({ mediaType: EMPTY_CONFIG.mediaType, digest: EMPTY_CONFIG.digest, size: 2 }, () => Readable.from([Buffer.from('{}')]));
    const descs = [];
    for (const l of layers) {
      const d = { mediaType: MediaType.ociLayerTar, digest: digestOf(l.data), size: l.data.length, annotations: { 'org.opencontainers.image.title': l.title } };
      await r.pushBlob(d, () => Readable.from([l.data]));
      descs.push(d);
    }
    const m = { schemaVersion: 2, mediaType: MediaType.ociManifest, artifactType: 'application/x.evil', config: { mediaType: EMPTY_CONFIG.mediaType, digest: EMPTY_CONFIG.digest, size: 2 }, layers: descs };
    await r.pushManifest(Buffer.from(JSON.stringify(m)), MediaType.ociManifest, [tag]);
  } finally {
    await r.registry.close();
  }
}

test('a registry serving a blob with the wrong bytes: nothing written, the error names both digests', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const { env } = await cliEnv(t);
  const src = await tempDir(t);
  const data = Buffer.from('the genuine content of this file');
  await writeFile(path.join(src, 'g.txt'), data);
  t.is((await runCli(['push', `${reg.host}/corrupt:v1`, 'g.txt'], { cwd: src, env })).code, 0);
  // Corrupt the blob inside the registry's own storage (same length, different bytes).
  const hex = sha(data);
  const file = path.join(reg.dir, 'data/docker/registry/v2/blobs/sha256', hex.slice(0, 2), hex, 'data');
  const bad = Buffer.from(data);
  bad[3] ^= 0xff;
  await writeFile(file, bad);
  const out = await tempDir(t);
  const pull = await runCli(['pull', `${reg.host}/corrupt:v1`, '-o', out], { env });
  t.is(pull.code, 1);
  t.true(pull.stderr.includes(`sha256:${hex}`) && pull.stderr.includes(`sha256:${sha(bad)}`), pull.stderr);
  t.deepEqual(await readdir(out), [], 'no file and no temp file written');
  const blobOut = path.join(out, 'blob');
  const bf = await runCli(['blob', 'fetch', `${reg.host}/corrupt@sha256:${hex}`, '-o', blobOut], { env });
  t.is(bf.code, 1);
  t.deepEqual(await readdir(out), []);
});

test('path-traversal titles are refused on pull and nothing is written outside (or inside) the output directory', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const { env } = await cliEnv(t);
  const parent = await tempDir(t);
  const out = path.join(parent, 'out');
  for (const [i, title] of ['../escape.txt', '/abs.txt', 'ok/../../escape2.txt', 'a\u0000b', '..', '.'].entries()) {
    await pushRaw(reg.host, 'evil', `t${i}`, [{ title: 'fine.txt', data: Buffer.from('fine') }, { title, data: Buffer.from('evil') }]);
    const r = await runCli(['pull', `${reg.host}/evil:t${i}`, '-o', out], { env });
    t.is(r.code, 1, title);
    t.regex(r.stderr, /unsafe|title/i, title);
  }
  t.deepEqual(await readdir(parent), [], 'titles are validated before anything, even the output directory, is written');
  await pushRaw(reg.host, 'evil', 'dup', [{ title: 'same.txt', data: Buffer.from('1') }, { title: './same.txt', data: Buffer.from('2') }]);
  const dup = await runCli(['pull', `${reg.host}/evil:dup`, '-o', out], { env });
  t.is(dup.code, 1);
  t.regex(dup.stderr, /two layers titled "same.txt"/);
});

test('5xx and 429 with Retry-After are retried; a redirect to another origin carries no credentials', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const proxy = await startFaultProxy(t, reg.url);
  const { env, configDir } = await cliEnv(t);
  const src = await tempDir(t);
  await writeFile(path.join(src, 'r.txt'), 'retry me');
  proxy.rules.push({ method: 'PUT', path: /\/manifests\//, status: 503, headers: { 'Retry-After': '1' }, times: 1 });
  proxy.rules.push({ method: 'HEAD', path: /\/blobs\//, status: 429, headers: { 'Retry-After': '0' }, times: 2 });
  const push = await runCli(['push', `${proxy.host}/retry:v1`, 'r.txt'], { cwd: src, env });
  t.is(push.code, 0, push.stderr);
  t.is(proxy.count('PUT', /\/manifests\//), 2, 'manifest PUT retried once after the 503');

  // Credentials stored for the proxy host must not reach the blob store it redirects to.
  await writeFile(path.join(configDir, 'config.json'), JSON.stringify({ auths: { [proxy.host]: { auth: Buffer.from('user:sekrit-pass').toString('base64') } } }));
  const store = await startHeaderRecorder(t, reg.url);
  proxy.rules.push({ method: 'GET', path: /\/blobs\/sha256:/, redirectTo: store.url });
  // Make the proxy demand Basic auth on the first manifest GET so the client holds an Authorization header.
  proxy.rules.push({ method: 'GET', path: /\/manifests\//, status: 401, headers: { 'WWW-Authenticate': 'Basic realm="test"' }, times: 1 });
  const out = await tempDir(t);
  const pull = await runCli(['pull', `${proxy.host}/retry:v1`, '-o', out], { env });
  t.is(pull.code, 0, pull.stderr);
  t.is(await readFile(path.join(out, 'r.txt'), 'utf8'), 'retry me');
  t.true(store.requests.length >= 1, 'the blob came from the other origin');
  for (const r of store.requests) {
    t.is(r.headers.authorization, undefined);
    t.is(r.headers.cookie, undefined);
  }
  const authed = proxy.requests.filter((r) => r.headers.authorization !== undefined);
  t.true(authed.length >= 1, 'the registry itself did get the credentials');
});

/**
 * CLI gaps: manifest digest checks, Docker schema 2 manifests and manifest lists, push's --config /
 * --artifact-type / --annotation-file, `--format json` results, 408 retries, registry error codes
 * in messages, `repo show` fields and the TTY progress bar. Every test runs against a real
 * Debian docker-registry (plain flavour), with the fault proxy in front where answers are altered.
 */
import test from 'ava';
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { readFile, readdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { gzipSync } from 'node:zlib';
import { startRegistry } from '../lab/registry.js';
import { startFaultProxy } from '../lab/fault-proxy.js';
import { cliEnv, REGFS_BIN, runCli, tempDir } from '../lab/cli.js';

const sha = (b: Buffer | string): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;

const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
const OCI_LAYER = 'application/vnd.oci.image.layer.v1.tar';
const DOCKER_MANIFEST = 'application/vnd.docker.distribution.manifest.v2+json';
const DOCKER_LIST = 'application/vnd.docker.distribution.manifest.list.v2+json';
const DOCKER_CONFIG = 'application/vnd.docker.container.image.v1+json';
const DOCKER_LAYER = 'application/vnd.docker.image.rootfs.diff.tar.gzip';

/** uploadBlob pushes a blob straight to the registry with plain HTTP (POST, then PUT ?digest=), not through regfs. */
async function uploadBlob(base: string, repo: string, body: Buffer): Promise<string> {
  const digest = sha(body);
  const post = await fetch(`${base}/v2/${repo}/blobs/uploads/`, { method: 'POST' });
  if (post.status !== 202) throw new Error(`POST upload: ${post.status} ${await post.text()}`);
  await post.arrayBuffer();
  const loc = new URL(post.headers.get('location')!, base);
  loc.searchParams.set('digest', digest);
  const put = await fetch(loc, { method: 'PUT', headers: { 'Content-Type': 'application/octet-stream' }, body: new Uint8Array(body) });
  if (put.status !== 201) throw new Error(`PUT blob: ${put.status} ${await put.text()}`);
  await put.arrayBuffer();
  return digest;
}

/** putManifest stores manifest bytes under a tag with plain HTTP; returns the digest the registry reports. */
async function putManifest(base: string, repo: string, tag: string, mediaType: string, body: Buffer): Promise<string> {
  const res = await fetch(`${base}/v2/${repo}/manifests/${tag}`, { method: 'PUT', headers: { 'Content-Type': mediaType }, body: new Uint8Array(body) });
  if (res.status !== 201) throw new Error(`PUT manifest: ${res.status} ${await res.text()}`);
  await res.arrayBuffer();
  return res.headers.get('docker-content-digest') ?? '';
}

/** pushDockerImage uploads config and layer, then PUTs a Docker schema 2 image manifest naming them under `tag`; storedDigest is the digest the registry answered. */
async function pushDockerImage(base: string, repo: string, tag: string, config: Buffer, layer: Buffer): Promise<{ configDigest: string; layerDigest: string; manifest: Buffer; digest: string; storedDigest: string }> {
  const configDigest = await uploadBlob(base, repo, config);
  const layerDigest = await uploadBlob(base, repo, layer);
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: DOCKER_MANIFEST,
      config: { mediaType: DOCKER_CONFIG, size: config.length, digest: configDigest },
      layers: [{ mediaType: DOCKER_LAYER, size: layer.length, digest: layerDigest }],
    }),
  );
  const storedDigest = await putManifest(base, repo, tag, DOCKER_MANIFEST, manifest);
  return { configDigest, layerDigest, manifest, digest: sha(manifest), storedDigest };
}

/** pushFile pushes one small file with regfs and returns the manifest bytes the registry stores. */
async function pushFile(t: Parameters<typeof tempDir>[0], env: Record<string, string>, ref: string, name: string, content: string, extra: string[] = []): Promise<Buffer> {
  const src = await tempDir(t);
  await writeFile(path.join(src, name), content);
  const push = await runCli(['push', ref, name, ...extra], { cwd: src, env });
  if (push.code !== 0) throw new Error(`push ${ref}: ${push.stderr}`);
  const mf = await runCli(['manifest', 'fetch', ref], { env });
  if (mf.code !== 0) throw new Error(`manifest fetch ${ref}: ${mf.stderr}`);
  return Buffer.from(mf.stdout, 'utf8');
}

/** runUnderPty runs bin/regfs ARGS under a pseudo-terminal with util-linux `script`; output is what the terminal got. */
function runUnderPty(args: string[], opts: { cwd: string; env: Record<string, string>; columns?: number }): Promise<{ code: number; output: string }> {
  const q = (s: string): string => `'${s.replace(/'/g, `'\\''`)}'`;
  const cmd = `${opts.columns ? `stty cols ${opts.columns} rows 24; ` : ''}${['exec', process.execPath, REGFS_BIN, ...args].map(q).join(' ')}`;
  return new Promise<{ code: number; output: string }>((resolve, reject) => {
    const child = spawn('script', ['-qfec', cmd, '/dev/null'], { cwd: opts.cwd, env: { ...process.env, ...opts.env }, stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    child.stdout.on('data', (d: Buffer) => out.push(d));
    child.stderr.on('data', (d: Buffer) => out.push(d));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`script ${cmd} timed out`));
    }, 120_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code: code ?? -1, output: Buffer.concat(out).toString('utf8') });
    });
    // script's stdin stays open (never ended) until the command is done: an early EOF would reach the terminal.
  });
}

// ---------------------------------------------------------------------------------------------
// 1. manifest digest checks

test('manifest fetch by digest fails (exit 1, both digests named) when the body does not hash to the digest', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const proxy = await startFaultProxy(t, reg.url);
  const { env } = await cliEnv(t);
  const good = await pushFile(t, env, `${reg.host}/dg:v1`, 'one.txt', 'first artifact');
  const other = await pushFile(t, env, `${reg.host}/dg:v2`, 'two.txt', 'second artifact');
  const goodDigest = sha(good);
  const otherDigest = sha(other);
  t.not(goodDigest, otherDigest);

  // Through the proxy but untouched, the fetch by digest works and gives the stored bytes.
  const ok = await runCli(['manifest', 'fetch', `${proxy.host}/dg@${goodDigest}`], { env });
  t.is(ok.code, 0, ok.stderr);
  t.is(ok.stdout, good.toString('utf8'));

  // The registry now answers the digest with another (valid) manifest's bytes.
  proxy.rules.push({ method: 'GET', path: `/v2/dg/manifests/${goodDigest}`, replaceBody: other });
  const bad = await runCli(['manifest', 'fetch', `${proxy.host}/dg@${goodDigest}`], { env });
  t.is(bad.code, 1);
  t.is(bad.stdout, '', 'nothing printed on stdout');
  t.is(bad.stderr.trim().split('\n').length, 1, bad.stderr);
  t.true(bad.stderr.startsWith('Error: '), bad.stderr);
  t.true(bad.stderr.includes(`expected ${goodDigest}`), bad.stderr);
  t.true(bad.stderr.includes(`got ${otherDigest}`), bad.stderr);
  t.true(proxy.requests.some((r) => r.rule === 0 && r.method === 'GET'), 'the altered answer was served');

  // pull by that digest fails the same way and writes nothing.
  const out = await tempDir(t);
  const pull = await runCli(['pull', `${proxy.host}/dg@${goodDigest}`, '-o', out], { env });
  t.is(pull.code, 1);
  t.true(pull.stderr.includes(goodDigest) && pull.stderr.includes(otherDigest), pull.stderr);
  t.deepEqual(await readdir(out), []);
});

test('manifest fetch by tag fails (exit 1, both digests named) when Docker-Content-Digest names another digest', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const proxy = await startFaultProxy(t, reg.url);
  const { env } = await cliEnv(t);
  const good = await pushFile(t, env, `${reg.host}/hd:v1`, 'one.txt', 'tagged artifact');
  const other = await pushFile(t, env, `${reg.host}/hd:v2`, 'two.txt', 'another artifact');
  const goodDigest = sha(good);
  const otherDigest = sha(other);

  const ok = await runCli(['manifest', 'fetch', `${proxy.host}/hd:v1`], { env });
  t.is(ok.code, 0, ok.stderr);
  t.is(sha(Buffer.from(ok.stdout)), goodDigest);

  proxy.rules.push({ method: 'GET', path: '/v2/hd/manifests/v1', setHeaders: { 'Docker-Content-Digest': otherDigest } });
  const bad = await runCli(['manifest', 'fetch', `${proxy.host}/hd:v1`], { env });
  t.is(bad.code, 1);
  t.is(bad.stdout, '');
  t.is(bad.stderr.trim().split('\n').length, 1, bad.stderr);
  t.true(bad.stderr.includes(`expected ${otherDigest}`), bad.stderr);
  t.true(bad.stderr.includes(`got ${goodDigest}`), bad.stderr);
  t.true(proxy.requests.some((r) => r.rule === 0), 'the altered header was served');
});

// ---------------------------------------------------------------------------------------------
// 2. Docker schema 2

test('a Docker schema 2 image manifest pushed with plain HTTP: manifest fetch, resolve, repo show, pull and blob fetch report and serve it', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const { env } = await cliEnv(t);
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [] }, config: {} }));
  const layer = gzipSync(randomBytes(50_000));
  const { configDigest, layerDigest, manifest, digest, storedDigest } = await pushDockerImage(reg.url, 'docker/img', 'v1', config, layer);
  t.is(storedDigest, digest);
  const ref = `${reg.host}/docker/img:v1`;

  const mf = await runCli(['manifest', 'fetch', ref], { env });
  t.is(mf.code, 0, mf.stderr);
  t.is(mf.stdout, manifest.toString('utf8'), 'the stored bytes, unchanged');
  const desc = JSON.parse((await runCli(['manifest', 'fetch', ref, '--descriptor'], { env })).stdout) as Record<string, unknown>;
  t.deepEqual(desc, { mediaType: DOCKER_MANIFEST, digest, size: manifest.length });

  const res = await runCli(['resolve', ref, '--format', 'json'], { env });
  t.is(res.code, 0, res.stderr);
  const rj = JSON.parse(res.stdout) as Record<string, unknown>;
  t.is(rj.mediaType, DOCKER_MANIFEST);
  t.is(rj.digest, digest);
  t.is(rj.size, manifest.length);
  t.is((await runCli(['resolve', ref], { env })).stdout.trim(), digest);

  const show = JSON.parse((await runCli(['repo', 'show', ref], { env })).stdout) as Record<string, unknown>;
  t.is(show.mediaType, DOCKER_MANIFEST);
  t.is(show.artifactType, DOCKER_CONFIG, 'a Docker image is what its config media type says');
  t.is(show.layers, 1);

  // A Docker image has no titled layers: pull writes nothing and says it skipped the layer.
  const out = await tempDir(t);
  const pull = await runCli(['pull', ref, '-o', out], { env });
  t.is(pull.code, 0, pull.stderr);
  t.regex(pull.stdout, /^Skipped pulling 1 layer\(s\) without file name/m);
  t.true(pull.stdout.includes(`Digest: ${digest}`), pull.stdout);
  t.deepEqual(await readdir(out), []);
  const pj = JSON.parse((await runCli(['pull', ref, '-o', out, '--format', 'json'], { env })).stdout) as Record<string, unknown>;
  // ORAS 1.2's pull JSON: the root as a digest reference (no root mediaType/digest fields), and the files.
  t.is(pj.reference, `${ref.replace(/:[^:/]+$/, '')}@${digest}`);
  t.deepEqual(pj.files, []);

  // Its blobs are fetched and verified by digest.
  const layerOut = path.join(out, 'layer.tgz');
  const bf = await runCli(['blob', 'fetch', `${reg.host}/docker/img@${layerDigest}`, '-o', layerOut], { env });
  t.is(bf.code, 0, bf.stderr);
  t.true((await readFile(layerOut)).equals(layer));
  const cf = await runCli(['blob', 'fetch', `${reg.host}/docker/img@${configDigest}`, '-o', '-'], { env });
  t.is(cf.stdout, config.toString('utf8'));
});

test('a Docker manifest list is fetched and resolved with its media type; pull refuses it and pulls its entry by digest', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const { env } = await cliEnv(t);
  const config = Buffer.from(JSON.stringify({ architecture: 'arm64', os: 'linux', rootfs: { type: 'layers', diff_ids: [] } }));
  const layer = gzipSync(Buffer.from('a layer of the arm64 image'));
  const { manifest: image, digest: imageDigest } = await pushDockerImage(reg.url, 'multi', 'arm64', config, layer);
  const list = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: DOCKER_LIST,
      manifests: [{ mediaType: DOCKER_MANIFEST, size: image.length, digest: imageDigest, platform: { architecture: 'arm64', os: 'linux' } }],
    }),
  );
  const listDigest = sha(list);
  t.is(await putManifest(reg.url, 'multi', 'v1', DOCKER_LIST, list), listDigest);
  const ref = `${reg.host}/multi:v1`;

  const mf = await runCli(['manifest', 'fetch', ref], { env });
  t.is(mf.code, 0, mf.stderr);
  t.is(mf.stdout, list.toString('utf8'));
  const byDigest = await runCli(['manifest', 'fetch', `${reg.host}/multi@${listDigest}`, '--descriptor'], { env });
  t.deepEqual(JSON.parse(byDigest.stdout), { mediaType: DOCKER_LIST, digest: listDigest, size: list.length });

  const res = await runCli(['resolve', ref, '--format', 'json'], { env });
  t.is(res.code, 0, res.stderr);
  const rj = JSON.parse(res.stdout) as Record<string, unknown>;
  t.is(rj.mediaType, DOCKER_LIST);
  t.is(rj.digest, listDigest);
  t.is(rj.size, list.length);

  const show = JSON.parse((await runCli(['repo', 'show', ref], { env })).stdout) as Record<string, unknown>;
  t.is(show.mediaType, DOCKER_LIST);
  t.is(show.manifests, 1);

  const out = await tempDir(t);
  const pull = await runCli(['pull', ref, '-o', out], { env });
  t.is(pull.code, 1);
  t.regex(pull.stderr, /is an index \(linux\/arm64\); give --platform os\/arch\[\/variant\] or pull one of its manifests by digest/);
  const entry = await runCli(['pull', `${reg.host}/multi@${imageDigest}`, '-o', out, '--format', 'json'], { env });
  t.is(entry.code, 0, entry.stderr);
  t.is((JSON.parse(entry.stdout) as { reference: string }).reference, `${reg.host}/multi@${imageDigest}`);
  const byPlatform = await runCli(['pull', ref, '-o', out, '--platform', 'linux/arm64', '--format', 'json'], { env });
  t.is(byPlatform.code, 0, byPlatform.stderr);
  t.is((JSON.parse(byPlatform.stdout) as { reference: string }).reference, `${reg.host}/multi@${imageDigest}`);
});

// ---------------------------------------------------------------------------------------------
// 3. push --config, --artifact-type, --annotation-file

test('push --config FILE:TYPE, --artifact-type and --annotation-file shape the pushed manifest', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const { env } = await cliEnv(t);
  const src = await tempDir(t);
  const cfg = Buffer.from('{"kind":"acme-config","version":3}\n');
  await writeFile(path.join(src, 'cfg.json'), cfg);
  await writeFile(path.join(src, 'a.txt'), 'file a');
  await writeFile(path.join(src, 'b.txt'), 'file b');
  await writeFile(
    path.join(src, 'ann.json'),
    JSON.stringify({
      $manifest: { 'com.example.team': 'storage', 'org.opencontainers.image.created': '2025-05-06T07:08:09Z' },
      $config: { 'com.example.config-note': 'cfg' },
      'a.txt': { 'com.example.layer': 'first' },
      'b.txt': { 'com.example.layer': 'second', 'com.example.extra': 'x' },
    }),
  );
  const ref = `${reg.host}/shaped:v1`;
  const push = await runCli(
    ['push', ref, 'a.txt', 'b.txt:application/vnd.example.b', '--config', 'cfg.json:application/vnd.example.config.v1+json', '--artifact-type', 'application/vnd.example.thing.v1', '--annotation-file', 'ann.json', '-a', 'com.example.cli=yes', '--format', 'json'],
    { cwd: src, env },
  );
  t.is(push.code, 0, push.stderr);
  const pj = JSON.parse(push.stdout) as { digest: string; artifactType: string };
  t.is(pj.artifactType, 'application/vnd.example.thing.v1');

  const mf = await runCli(['manifest', 'fetch', ref], { env });
  t.is(sha(Buffer.from(mf.stdout)), pj.digest);
  const m = JSON.parse(mf.stdout) as {
    mediaType: string;
    artifactType?: string;
    config: Record<string, unknown>;
    layers: Array<{ mediaType: string; digest: string; annotations: Record<string, string> }>;
    annotations: Record<string, string>;
  };
  t.is(m.mediaType, OCI_MANIFEST);
  t.is(m.artifactType, 'application/vnd.example.thing.v1');
  t.deepEqual(m.config, { mediaType: 'application/vnd.example.config.v1+json', digest: sha(cfg), size: cfg.length, annotations: { 'com.example.config-note': 'cfg' } });
  t.deepEqual(m.annotations, { 'com.example.team': 'storage', 'org.opencontainers.image.created': '2025-05-06T07:08:09Z', 'com.example.cli': 'yes' });
  t.deepEqual(
    m.layers.map((l) => [l.mediaType, l.digest, l.annotations]),
    [
      ['application/vnd.oci.image.layer.v1.tar', sha('file a'), { 'org.opencontainers.image.title': 'a.txt', 'com.example.layer': 'first' }],
      ['application/vnd.example.b', sha('file b'), { 'org.opencontainers.image.title': 'b.txt', 'com.example.layer': 'second', 'com.example.extra': 'x' }],
    ],
  );
  // The config blob itself was uploaded, byte for byte.
  const cb = await runCli(['blob', 'fetch', `${reg.host}/shaped@${sha(cfg)}`, '-o', '-'], { env });
  t.is(cb.code, 0, cb.stderr);
  t.is(cb.stdout, cfg.toString('utf8'));

  // With --config but no --artifact-type, the manifest has no artifactType (the config type says what it is).
  const noType = await runCli(['push', `${reg.host}/shaped:v2`, 'a.txt', '--config', 'cfg.json:application/vnd.example.config.v1+json'], { cwd: src, env });
  t.is(noType.code, 0, noType.stderr);
  const m2 = JSON.parse((await runCli(['manifest', 'fetch', `${reg.host}/shaped:v2`], { env })).stdout) as Record<string, unknown>;
  t.false('artifactType' in m2);
  t.is((m2.config as { mediaType: string }).mediaType, 'application/vnd.example.config.v1+json');

  // An annotation file naming a file that is not pushed is a usage error, and nothing is pushed.
  await writeFile(path.join(src, 'stray.json'), JSON.stringify({ 'c.txt': { k: 'v' } }));
  const stray = await runCli(['push', `${reg.host}/shaped:v3`, 'a.txt', '--annotation-file', 'stray.json'], { cwd: src, env });
  t.is(stray.code, 2);
  t.regex(stray.stderr, /"c\.txt", which is not among the files pushed/);
  t.is((await runCli(['resolve', `${reg.host}/shaped:v3`], { env })).code, 4);
});

// ---------------------------------------------------------------------------------------------
// 4. --format json

test('--format json on pull, repo ls, repo show (no tag), resolve, blob fetch, repo delete and login prints one parseable result object', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const { env, configDir } = await cliEnv(t);
  const src = await tempDir(t);
  await writeFile(path.join(src, 'x.txt'), 'ex');
  await writeFile(path.join(src, 'y.bin'), Buffer.alloc(70_000, 1));
  t.is((await runCli(['push', `${reg.host}/fmt/a:v1,v2`, 'x.txt', 'y.bin'], { cwd: src, env })).code, 0);
  t.is((await runCli(['push', `${reg.host}/fmt/b:v1`, 'x.txt'], { cwd: src, env })).code, 0);
  const manifest = Buffer.from((await runCli(['manifest', 'fetch', `${reg.host}/fmt/a:v1`], { env })).stdout);
  const digest = sha(manifest);

  const out = await tempDir(t);
  const pull = await runCli(['pull', `${reg.host}/fmt/a:v1`, '-o', out, '--format', 'json'], { env });
  t.is(pull.code, 0, pull.stderr);
  // ORAS 1.2's shape: digest reference, then per file its absolute path, digest reference and layer descriptor.
  const pj = JSON.parse(pull.stdout) as { reference: string; files: Array<{ path: string; reference: string; mediaType: string; digest: string; size: number; annotations: Record<string, string> }> };
  t.is(pj.reference, `${reg.host}/fmt/a@${digest}`);
  t.deepEqual(pj.files.map((f) => [f.path, f.mediaType, f.size, f.annotations['org.opencontainers.image.title'], f.reference === `${reg.host}/fmt/a@${f.digest}`]), [
    [path.join(out, 'x.txt'), OCI_LAYER, 2, 'x.txt', true],
    [path.join(out, 'y.bin'), OCI_LAYER, 70_000, 'y.bin', true],
  ]);
  t.is(await readFile(path.join(out, 'x.txt'), 'utf8'), 'ex');

  const ls = await runCli(['repo', 'ls', reg.host, '--format', 'json'], { env });
  t.is(ls.code, 0, ls.stderr);
  const lj = JSON.parse(ls.stdout) as { repositories: string[] };
  t.deepEqual([...lj.repositories].sort(), ['fmt/a', 'fmt/b']);

  const info = await runCli(['repo', 'show', `${reg.host}/fmt/a`, '--format', 'json'], { env });
  t.deepEqual(JSON.parse(info.stdout), { registry: reg.host, imageName: 'fmt/a', tagCount: 2 });

  const res = await runCli(['resolve', `${reg.host}/fmt/a:v2`, '--format', 'json'], { env });
  t.is(res.code, 0, res.stderr);
  t.deepEqual(JSON.parse(res.stdout), { reference: `${reg.host}/fmt/a:v2`, mediaType: OCI_MANIFEST, digest, size: manifest.length });

  const blobDigest = sha(Buffer.alloc(70_000, 1));
  const blobOut = path.join(src, 'fetched.bin');
  const bf = await runCli(['blob', 'fetch', `${reg.host}/fmt/a@${blobDigest}`, '-o', blobOut, '--format', 'json'], { env });
  t.is(bf.code, 0, bf.stderr);
  t.deepEqual(JSON.parse(bf.stdout), { digest: blobDigest, size: 70_000, output: blobOut });
  t.is(sha(await readFile(blobOut)), blobDigest);

  const del = await runCli(['repo', 'delete', `${reg.host}/fmt/b:v1`, '--format', 'json', '--force'], { env });
  t.is(del.code, 0, del.stderr);
  const dj = JSON.parse(del.stdout) as { deleted: string; digest: string };
  t.is(dj.deleted, `${reg.host}/fmt/b:v1`);
  t.regex(dj.digest, /^sha256:[0-9a-f]{64}$/);
  t.is((await runCli(['resolve', `${reg.host}/fmt/b:v1`], { env })).code, 4);

  const login = await runCli(['login', reg.host, '-u', 'someone', '--password-stdin', '--format', 'json'], { env, input: 's3cret\n' });
  t.is(login.code, 0, login.stderr);
  t.deepEqual(JSON.parse(login.stdout), { registry: reg.host, status: 'Login Succeeded' });
  const stored = JSON.parse(await readFile(path.join(configDir, 'config.json'), 'utf8')) as { auths: Record<string, { auth: string }> };
  t.is(Buffer.from(stored.auths[reg.host]!.auth, 'base64').toString('utf8'), 'someone:s3cret');
});

// ---------------------------------------------------------------------------------------------
// 5. HTTP 408

test('HTTP 408 on the first blob GET and on the first manifest GET is retried and the command succeeds', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const proxy = await startFaultProxy(t, reg.url);
  const { env } = await cliEnv(t);
  const manifest = await pushFile(t, env, `${reg.host}/slow:v1`, 'w.txt', 'wait for it');
  const blobDigest = sha('wait for it');

  proxy.rules.push({ method: 'GET', path: `/v2/slow/blobs/${blobDigest}`, status: 408, times: 1 });
  const out = await tempDir(t);
  const pull = await runCli(['pull', `${proxy.host}/slow:v1`, '-o', out], { env });
  t.is(pull.code, 0, pull.stderr);
  t.is(await readFile(path.join(out, 'w.txt'), 'utf8'), 'wait for it');
  const blobGets = proxy.requests.filter((r) => r.method === 'GET' && r.path === `/v2/slow/blobs/${blobDigest}`);
  t.deepEqual(blobGets.map((r) => r.status), [408, 200], 'the 408 was answered, then the repeated GET succeeded');

  proxy.reset();
  proxy.rules.push({ method: 'GET', path: '/v2/slow/manifests/v1', status: 408, times: 1 });
  const mf = await runCli(['manifest', 'fetch', `${proxy.host}/slow:v1`], { env });
  t.is(mf.code, 0, mf.stderr);
  t.is(mf.stdout, manifest.toString('utf8'));
  const manifestGets = proxy.requests.filter((r) => r.method === 'GET' && r.path === '/v2/slow/manifests/v1');
  t.deepEqual(manifestGets.map((r) => r.status), [408, 200]);
});

// ---------------------------------------------------------------------------------------------
// 6. registry error codes

test('unknown tag and unknown blob: exit 4 and the registry code (MANIFEST_UNKNOWN, BLOB_UNKNOWN) in the one-line error', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const { env } = await cliEnv(t);
  await pushFile(t, env, `${reg.host}/known:v1`, 'k.txt', 'known');

  // A GET carries the registry's error body: its code and message are in the error.
  const mf = await runCli(['manifest', 'fetch', `${reg.host}/known:nope`], { env });
  t.is(mf.code, 4);
  t.is(mf.stdout, '');
  t.is(mf.stderr, `Error: manifest ${reg.host}/known:nope not found (MANIFEST_UNKNOWN: manifest unknown)\n`);
  const pull = await runCli(['pull', `${reg.host}/known:nope`, '-o', await tempDir(t)], { env });
  t.is(pull.code, 4);
  t.true(pull.stderr.includes('(MANIFEST_UNKNOWN: manifest unknown)'), pull.stderr);

  // An unknown repository: distribution 2.8.2 answers MANIFEST_UNKNOWN there too.
  const repo = await runCli(['manifest', 'fetch', `${reg.host}/no/such/repo:v1`], { env });
  t.is(repo.code, 4);
  t.is(repo.stderr, `Error: manifest ${reg.host}/no/such/repo:v1 not found (MANIFEST_UNKNOWN: manifest unknown)\n`);

  // resolve asks with HEAD, whose answer has no body: only the status is known.
  const res = await runCli(['resolve', `${reg.host}/known:nope`], { env });
  t.is(res.code, 4);
  t.is(res.stderr, `Error: manifest ${reg.host}/known:nope not found (HTTP 404)\n`);

  const missing = sha('never pushed');
  const blob = await runCli(['blob', 'fetch', `${reg.host}/known@${missing}`, '--size', '12', '-o', '-'], { env });
  t.is(blob.code, 4);
  t.is(blob.stdout, '');
  t.is(blob.stderr, `Error: blob ${reg.host}/known@${missing} not found (BLOB_UNKNOWN: blob unknown to registry)\n`);
  // Without --size the size is asked with HEAD first: the status alone.
  const blobHead = await runCli(['blob', 'fetch', `${reg.host}/known@${missing}`, '-o', '-'], { env });
  t.is(blobHead.code, 4);
  t.is(blobHead.stderr, `Error: blob ${reg.host}/known@${missing} not found (HTTP 404)\n`);
});

// ---------------------------------------------------------------------------------------------
// 7. repo show

test('repo show: createdTime and lastUpdateTime are the created annotation (null without it) and size is the raw manifest length', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const { env } = await cliEnv(t);
  const created = '2023-11-12T13:14:15Z';
  const withAnn = await pushFile(t, env, `${reg.host}/shown:dated`, 'd.txt', 'dated', ['-a', `org.opencontainers.image.created=${created}`]);
  const without = await pushFile(t, env, `${reg.host}/shown:plain`, 'd.txt', 'dated');

  const json = await runCli(['repo', 'show', `${reg.host}/shown:dated`, '--format', 'json'], { env });
  t.is(json.code, 0, json.stderr);
  const s = JSON.parse(json.stdout) as Record<string, unknown>;
  t.like(s, {
    registry: reg.host,
    name: 'shown:dated',
    digest: sha(withAnn),
    mediaType: OCI_MANIFEST,
    size: withAnn.length,
    artifactType: 'application/vnd.unknown.artifact.v1',
    createdTime: created,
    lastUpdateTime: created,
    layers: 1,
  });
  // The default (text) output is the same JSON document.
  const text = await runCli(['repo', 'show', `${reg.host}/shown:dated`], { env });
  t.deepEqual(JSON.parse(text.stdout), s);

  const p = JSON.parse((await runCli(['repo', 'show', `${reg.host}/shown:plain`, '--format', 'json'], { env })).stdout) as Record<string, unknown>;
  t.not(sha(without), sha(withAnn));
  t.is(p.digest, sha(without));
  t.is(p.size, without.length);
  t.is(p.createdTime, null, 'no created annotation: no time (a registry API gives none)');
  t.is(p.lastUpdateTime, null);

  // By digest the name is the bare repository.
  const byDigest = JSON.parse((await runCli(['repo', 'show', `${reg.host}/shown@${sha(withAnn)}`], { env })).stdout) as Record<string, unknown>;
  t.is(byDigest.name, 'shown');
  t.is(byDigest.createdTime, created);
});

// ---------------------------------------------------------------------------------------------
// 8. progress bar

test('push draws a progress bar on a TTY (under script(1)) and none when stderr is not a TTY', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const { env } = await cliEnv(t);
  const src = await tempDir(t);
  const big = randomBytes(20 * 1024 * 1024);
  await writeFile(path.join(src, 'big.bin'), big);

  const tty = await runUnderPty(['push', `${reg.host}/bar:tty`, 'big.bin'], { cwd: src, env });
  t.is(tty.code, 0, tty.output);
  // cli/progress.ts redraws one line: "\r\x1b[K[####....] NN% X/Y RATE/s ETA m:ss (d/n blobs)", the bar as wide as
  // the terminal leaves room for (at most 30), the rate and ETA once they are known.
  const bars = [...tty.output.matchAll(/\r\x1b\[K\[([#.]{10,30})\] (\d{1,3})% ([\d.]+ (?:B|KiB|MiB))\/([\d.]+ (?:B|KiB|MiB))(?: ([\d.]+ (?:B|KiB|MiB|GiB))\/s)?(?: ETA (\d+:\d\d))? \((\d+)\/(\d+) blobs\)/g)];
  t.true(bars.length >= 1, JSON.stringify(tty.output.slice(0, 2000)));
  for (const b of bars) {
    const width = b[1]!.length;
    const fill = b[1]!.replace(/\./g, '').length;
    t.is(fill, Math.round((Number(b[2]) / 100) * width), 'the bar length follows the percentage');
    t.is(b[4], '20.0 MiB', 'total is the config plus the 20 MiB layer');
    t.is(b[8], '2');
  }
  const redraws = (out: string): string[] => out.split('\r\x1b[K').slice(1).map((seg) => seg.split(/[\r\n]/)[0]!).filter((l) => l.includes('%'));
  for (const l of redraws(tty.output)) t.true(l.length < 80, `fits 80 columns: ${JSON.stringify(l)}`);

  // A 50-column terminal: every redraw still fits on one line (no wrapped trail), the numbers kept first.
  const narrow = await runUnderPty(['push', `${reg.host}/bar-narrow:v1`, 'big.bin'], { cwd: src, env, columns: 50 });
  t.is(narrow.code, 0, narrow.output);
  const lines50 = redraws(narrow.output);
  t.true(lines50.length >= 1, JSON.stringify(narrow.output.slice(0, 2000)));
  for (const l of lines50) {
    t.true(l.length < 50, `fits 50 columns: ${JSON.stringify(l)}`);
    t.regex(l, /\d{1,3}% [\d.]+ (?:B|KiB|MiB)\/20\.0 MiB/);
  }
  t.regex(tty.output, /Uploaded\s+[0-9a-f]{12} big\.bin/);
  t.regex(tty.output, /Digest: sha256:[0-9a-f]{64}/);

  // The same push into another repository (so the blobs are uploaded again) without a TTY: the ORAS lines, no bar at all.
  const piped = await runCli(['push', `${reg.host}/bar-piped:v1`, 'big.bin'], { cwd: src, env });
  t.is(piped.code, 0, piped.stderr);
  t.is(piped.stderr, '', 'nothing drawn on a non-TTY stderr');
  t.false(piped.stdout.includes('\r'));
  t.false(piped.stdout.includes('%'));
  t.regex(piped.stdout, /^Uploaded\s+[0-9a-f]{12} big\.bin$/m);

  // On a TTY but with --format json: no bar either, just the JSON.
  const json = await runUnderPty(['push', `${reg.host}/bar-json:v1`, 'big.bin', '--format', 'json'], { cwd: src, env });
  t.is(json.code, 0, json.output);
  t.false(json.output.includes('\x1b[K'), 'no progress drawing with --format json');
  t.deepEqual((JSON.parse(json.output) as { referenceAsTags: string[] }).referenceAsTags, [`${reg.host}/bar-json:v1`]);
});

import test from 'ava';
import { execFile, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFile, readdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { startRegistry, type StartedRegistry } from '../lab/registry.js';
import { cliEnv, runCli, tempDir, REGFS_BIN, type CliResult } from '../lab/cli.js';
import { skopeoInspect, skopeoTags } from '../lab/skopeo.js';

const exec = promisify(execFile);
const sha = (b: Buffer | string): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;

let reg: StartedRegistry;
let env: Record<string, string>;
let work: string;

const cleanups: Array<() => unknown> = [];
const hooks = { teardown: (fn: () => unknown): void => void cleanups.push(fn) };

test.before(async () => {
  const t = hooks;
  reg = await startRegistry(undefined, { flavour: 'plain' });
  env = (await cliEnv(t)).env;
  work = await tempDir(t, 'regfs-oras-');
  await writeFile(path.join(work, 'a.txt'), 'alpha\n');
  await writeFile(path.join(work, 'b.txt'), 'beta\n');
});

test.after.always(async () => {
  await reg?.stop();
  for (const fn of cleanups.reverse()) await fn();
});

const run = (args: string[], input?: string | Buffer): Promise<CliResult> => runCli(args, { env, cwd: work, input });

async function push(ref: string, file = 'a.txt'): Promise<string> {
  const r = await run(['push', ref, file, '--format', 'json']);
  if (r.code !== 0) throw new Error(r.stderr);
  return (JSON.parse(r.stdout) as { digest: string }).digest;
}

async function httpStatus(url: string): Promise<string> {
  const { stdout } = await exec('curl', ['-s', '-o', '/dev/null', '-I', '-w', '%{http_code} %header{content-length}', url]);
  return stdout.trim();
}

/** underPty runs regfs on a pseudo-terminal (util-linux script), typing `answer` once the [y/N] prompt shows. */
function underPty(args: string[], answer: string): Promise<{ code: number; output: string }> {
  const q = (s: string): string => `'${s.replace(/'/g, `'\\''`)}'`;
  const cmd = ['exec', process.execPath, REGFS_BIN, ...args].map(q).join(' ');
  return new Promise((resolve, reject) => {
    const child = spawn('script', ['-qfec', cmd, '/dev/null'], { env: { ...process.env, ...env }, stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    let typed = false;
    const onData = (d: Buffer): void => {
      out += d.toString();
      if (!typed && out.includes('[y/N]')) {
        typed = true;
        child.stdin.write(answer);
      }
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`script ${cmd} timed out`));
    }, 30_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code: code ?? -1, output: out });
    });
  });
}

test.serial('tag pushes the same bytes under new tags (skopeo reads the same digest)', async (t) => {
  const digest = await push(`${reg.host}/tagme:v1`);
  const r = await run(['tag', `${reg.host}/tagme:v1`, 'stable', 'x,y']);
  t.is(r.code, 0, r.stderr);
  t.deepEqual(r.stdout.trim().split('\n'), ['Tagged stable', 'Tagged x', 'Tagged y']);
  const seen = await Promise.all(['stable', 'x', 'y'].map((tag) => skopeoInspect(reg.host, `tagme:${tag}`)));
  t.deepEqual(seen.map((m) => m?.Digest), [digest, digest, digest]);
  t.deepEqual(await skopeoTags(reg.host, 'tagme'), ['stable', 'v1', 'x', 'y']);
  const bad = await run(['tag', `${reg.host}/tagme:v1`, 'bad tag']);
  t.is(bad.code, 2);
  t.regex(bad.stderr, /^Error: invalid tag "bad tag"/);
});

test.serial('manifest fetch -o - writes stdout (no file named -), -o FILE writes the exact bytes, fetch-config', async (t) => {
  const digest = await push(`${reg.host}/fetch:v1`);
  const r = await runCli(['manifest', 'fetch', `${reg.host}/fetch:v1`, '-o', '-'], { env, cwd: work });
  t.is(r.code, 0, r.stderr);
  t.is(sha(r.stdout), digest);
  t.false((await readdir(work)).includes('-'));
  const f = path.join(work, 'm.json');
  t.is((await run(['manifest', 'fetch', `${reg.host}/fetch:v1`, '-o', f])).code, 0);
  t.is(sha(await readFile(f)), digest);
  const d = await run(['manifest', 'fetch', `${reg.host}/fetch:v1`, '--descriptor', '-o', '-']);
  t.is((JSON.parse(d.stdout) as { digest: string }).digest, digest);
  const cfg = await run(['manifest', 'fetch-config', `${reg.host}/fetch:v1`]);
  t.is(cfg.code, 0, cfg.stderr);
  t.is(cfg.stdout, '{}');
});

test.serial('manifest push validates JSON, takes the media type from the document, and skopeo reads it back', async (t) => {
  await push(`${reg.host}/mpush:src`);
  const src = JSON.parse((await run(['manifest', 'fetch', `${reg.host}/mpush:src`])).stdout) as Record<string, unknown>;
  const body = Buffer.from(JSON.stringify({ ...src, annotations: { 'x.note': 'copied' } }));
  const file = path.join(work, 'edited.json');
  await writeFile(file, body);
  const r = await run(['manifest', 'push', `${reg.host}/mpush:edited,also`, file]);
  t.is(r.code, 0, r.stderr);
  t.true(r.stdout.includes(`Digest: ${sha(body)}`));
  t.is((await skopeoInspect(reg.host, 'mpush:edited'))?.Digest, sha(body));
  t.is((await skopeoInspect(reg.host, 'mpush:also'))?.Digest, sha(body));
  // From standard input, with --descriptor.
  const viaStdin = await run(['manifest', 'push', `${reg.host}/mpush:stdin`, '-', '--descriptor'], body);
  t.is(viaStdin.code, 0, viaStdin.stderr);
  t.deepEqual(JSON.parse(viaStdin.stdout), { mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: sha(body), size: body.length, artifactType: src.artifactType });
  // Bad input: not JSON; no mediaType; a body that is not a manifest. Nothing is pushed.
  await writeFile(path.join(work, 'bad.json'), '{"schemaVersion": 2,');
  const notJson = await run(['manifest', 'push', `${reg.host}/mpush:bad`, 'bad.json']);
  t.is(notJson.code, 2);
  t.regex(notJson.stderr, /^Error: bad\.json is not valid JSON .*\n$/);
  const noType = await run(['manifest', 'push', `${reg.host}/mpush:bad`, '-'], '{"schemaVersion":2,"layers":[]}');
  t.is(noType.code, 2);
  t.regex(noType.stderr, /no mediaType field; give --media-type/);
  const notManifest = await run(['manifest', 'push', `${reg.host}/mpush:bad`, '-', '--media-type', 'application/vnd.oci.image.manifest.v1+json'], '{"schemaVersion":2}');
  t.is(notManifest.code, 2, notManifest.stderr);
  t.false((await skopeoTags(reg.host, 'mpush')).includes('bad'));
});

test.serial('blob push prints the digest (curl HEAD finds it), --descriptor, stdin with --size; blob delete asks for --force', async (t) => {
  const data = Buffer.from('some blob bytes\n');
  await writeFile(path.join(work, 'blob.bin'), data);
  const r = await run(['blob', 'push', `${reg.host}/blobs`, 'blob.bin']);
  t.is(r.code, 0, r.stderr);
  t.true(r.stdout.includes(`Pushed [registry] ${reg.host}/blobs@${sha(data)}`));
  t.is(await httpStatus(`${reg.url}/v2/blobs/blobs/${sha(data)}`), `200 ${data.length}`);
  const d = await run(['blob', 'push', `${reg.host}/blobs`, 'blob.bin', '--media-type', 'application/x.test', '--descriptor']);
  t.is(d.code, 0, d.stderr);
  t.deepEqual(JSON.parse(d.stdout), { mediaType: 'application/x.test', digest: sha(data), size: data.length });
  const other = Buffer.from('from stdin');
  const s = await run(['blob', 'push', `${reg.host}/blobs`, '-', '--size', String(other.length), '--descriptor'], other);
  t.is(s.code, 0, s.stderr);
  t.is((JSON.parse(s.stdout) as { digest: string }).digest, sha(other));
  const noSize = await run(['blob', 'push', `${reg.host}/blobs`, '-'], other);
  t.is(noSize.code, 2);
  const wrongDigest = await run(['blob', 'push', `${reg.host}/blobs@${sha('other')}`, 'blob.bin']);
  t.not(wrongDigest.code, 0);

  const refuse = await run(['blob', 'delete', `${reg.host}/blobs@${sha(data)}`]);
  t.is(refuse.code, 2);
  t.regex(refuse.stderr, /^Error: blob delete .*not a terminal.*add --force to delete\n$/);
  t.is(await httpStatus(`${reg.url}/v2/blobs/blobs/${sha(data)}`), `200 ${data.length}`);
  const del = await run(['blob', 'delete', `${reg.host}/blobs@${sha(data)}`, '--force']);
  t.is(del.code, 0, del.stderr);
  t.is(del.stdout.trim(), `Deleted ${reg.host}/blobs@${sha(data)}`);
  t.regex(await httpStatus(`${reg.url}/v2/blobs/blobs/${sha(data)}`), /^404/);
  t.is((await run(['blob', 'delete', `${reg.host}/blobs@${sha(data)}`, '--force'])).code, 4);
});

test.serial('deleting tag a names tag b that shares its manifest, refuses without --force, and deletes both with it', async (t) => {
  const digest = await push(`${reg.host}/shared:a`, 'b.txt');
  t.is(await push(`${reg.host}/shared:b`, 'b.txt'), digest);
  await push(`${reg.host}/shared:other`, 'a.txt');
  const cmds = [['manifest', 'delete'], ['repo', 'delete']];
  const refusals = await Promise.all(cmds.map((cmd) => run([...cmd, `${reg.host}/shared:a`])));
  for (const r of refusals) {
    t.is(r.code, 2, r.stderr);
    t.is(r.stderr.split('\n').length, 2, r.stderr);
    t.regex(r.stderr, /it also removes tags: b\).*--force/);
  }
  t.deepEqual(await skopeoTags(reg.host, 'shared'), ['a', 'b', 'other']);
  const del = await run(['manifest', 'delete', `${reg.host}/shared:a`, '--force']);
  t.is(del.code, 0, del.stderr);
  t.is(del.stdout.trim(), `Deleted ${reg.host}/shared:a (${digest}) (also removes tags: b)`);
  t.deepEqual(await skopeoTags(reg.host, 'shared'), ['other']);
  const json = await run(['repo', 'delete', `${reg.host}/shared:other`, '--force', '--format', 'json']);
  t.deepEqual((JSON.parse(json.stdout) as { alsoRemovesTags: string[] }).alsoRemovesTags, []);
});

test.serial('on a terminal, delete asks "Are you sure ...? [y/N]": n keeps the manifest, y deletes it', async (t) => {
  const digest = await push(`${reg.host}/asked:one`);
  await push(`${reg.host}/asked:two`);
  const no = await underPty(['manifest', 'delete', `${reg.host}/asked:one`], 'n\r');
  t.is(no.code, 0, no.output);
  t.true(no.output.includes(`Are you sure you want to delete the manifest "${digest}" and all tags associated with it? (it also removes tags: two) [y/N]`), no.output);
  t.true(no.output.includes('Operation cancelled.'));
  t.deepEqual(await skopeoTags(reg.host, 'asked'), ['one', 'two']);
  const yes = await underPty(['repo', 'delete', `${reg.host}/asked:one`], 'y\r');
  t.is(yes.code, 0, yes.output);
  t.true(yes.output.includes('(also removes tags: two)'));
  t.deepEqual(await skopeoTags(reg.host, 'asked'), []);
});

test.serial('repo tags --last, :TAG and @DIGEST filters, --exclude-digest-tags', async (t) => {
  const d1 = await push(`${reg.host}/lister:a1`);
  await run(['tag', `${reg.host}/lister:a1`, 'c3', 'sha256-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef']);
  await push(`${reg.host}/lister:b2`, 'b.txt');
  const L = `${reg.host}/lister`;
  const [all, afterA, afterB, onTag, onDigest] = await Promise.all([
    run(['repo', 'tags', L]),
    run(['repo', 'tags', L, '--last', 'a1', '--exclude-digest-tags']),
    run(['repo', 'tags', L, '--last', 'b2']),
    run(['repo', 'tags', `${L}:c3`, '--exclude-digest-tags']),
    run(['repo', 'tags', `${L}@${d1}`, '--format', 'json']),
  ]);
  t.deepEqual(all.stdout.trim().split('\n').sort(), ['a1', 'b2', 'c3', 'sha256-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef']);
  // --last keeps the registry's order (distribution's is not always sorted), so compare as sets.
  t.deepEqual(afterA.stdout.trim().split('\n').sort(), ['b2', 'c3']);
  t.deepEqual(afterB.stdout.trim().split('\n').sort(), ['c3', 'sha256-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef']);
  t.deepEqual(onTag.stdout.trim().split('\n').sort(), ['a1', 'c3']);
  t.regex(onTag.stderr, /querying tags associated to sha256:/);
  t.deepEqual((JSON.parse(onDigest.stdout) as { tags: string[] }).tags.sort(), ['a1', 'c3', 'sha256-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef']);
});

test.serial('manifest index create and update (--add, --remove, --annotation) push an index skopeo reads', async (t) => {
  const da = await push(`${reg.host}/idx:a`);
  const db = await push(`${reg.host}/idx:b`, 'b.txt');
  const c = await run(['manifest', 'index', 'create', `${reg.host}/idx:multi`, 'a', `@${db}`, '--annotation', 'k=v']);
  t.is(c.code, 0, c.stderr);
  const raw = async (tag: string): Promise<{ manifests: Array<{ digest: string }>; annotations?: Record<string, string>; mediaType: string }> =>
    JSON.parse((await exec('skopeo', ['--insecure-policy', 'inspect', '--raw', '--tls-verify=false', `docker://${reg.host}/idx:${tag}`])).stdout);
  const idx = await raw('multi');
  t.is(idx.mediaType, 'application/vnd.oci.image.index.v1+json');
  t.deepEqual(idx.manifests.map((m) => m.digest), [da, db]);
  t.deepEqual(idx.annotations, { k: 'v' });
  const u = await run(['manifest', 'index', 'update', `${reg.host}/idx:multi`, '--remove', 'a', '--tag', 'slim']);
  t.is(u.code, 0, u.stderr);
  t.deepEqual((await raw('multi')).manifests.map((m) => m.digest), [db]);
  t.deepEqual((await raw('slim')).manifests.map((m) => m.digest), [db]);
  const back = await run(['manifest', 'index', 'update', `${reg.host}/idx:slim`, '--add', da, '--annotation', 'k2=v2']);
  t.is(back.code, 0, back.stderr);
  const again = await raw('slim');
  t.deepEqual(again.manifests.map((m) => m.digest), [db, da]);
  t.deepEqual(again.annotations, { k: 'v', k2: 'v2' });
  // An image manifest gets its platform from its config; --platform picks it out of the index.
  const config = Buffer.from('{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}');
  await writeFile(path.join(work, 'config.json'), config);
  t.is((await run(['blob', 'push', `${reg.host}/idx`, 'config.json'])).code, 0);
  const img = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json', config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: sha(config), size: config.length }, layers: [] }));
  t.is((await run(['manifest', 'push', `${reg.host}/idx:img`, '-'], img)).code, 0);
  t.is((await run(['manifest', 'index', 'create', `${reg.host}/idx:plat`, 'img', 'a'])).code, 0);
  t.deepEqual((await raw('plat')).manifests.map((m) => (m as { platform?: unknown }).platform), [{ architecture: 'amd64', os: 'linux' }, undefined]);
  const [byPlatform, cfgByPlatform, noPlatform] = await Promise.all([
    run(['manifest', 'fetch', `${reg.host}/idx:plat`, '--platform', 'linux/amd64']),
    run(['manifest', 'fetch-config', `${reg.host}/idx:plat`, '--platform', 'linux/amd64']),
    run(['manifest', 'fetch', `${reg.host}/idx:plat`, '--platform', 'linux/arm64']),
  ]);
  t.is(sha(byPlatform.stdout), sha(img));
  t.is(cfgByPlatform.stdout, config.toString());
  t.is(noPlatform.code, 4);
  const nothing = await run(['manifest', 'index', 'update', `${reg.host}/idx:slim`]);
  t.is(nothing.code, 2);
  const notIndex = await run(['manifest', 'index', 'update', `${reg.host}/idx:a`, '--add', 'b']);
  t.is(notIndex.code, 2);
  t.regex(notIndex.stderr, /is not an image index/);
});

test.serial('unknown subcommand prints that group\'s help on stderr and exits 2; version prints Version/Node/Platform', async (t) => {
  const groups = [[['manifest'], 'regfs manifest'], [['blob'], 'regfs blob'], [['repo'], 'regfs repo'], [['manifest', 'index'], 'regfs manifest index']] as const;
  const results = await Promise.all(groups.map(([group]) => run([...group, 'bogus'])));
  groups.forEach(([group, usage], i) => {
    const r = results[i]!;
    t.is(r.code, 2, group.join(' '));
    t.regex(r.stderr, /unknown command 'bogus'/);
    t.true(r.stderr.includes(`Usage: ${usage} [options] [command]`), r.stderr);
    t.is(r.stdout, '');
  });
  const [v, vj] = await Promise.all([run(['version']), run(['version', '--format', 'json'])]);
  t.regex(v.stdout, /^Version: +0\.\d+\.\d+\nNode: +v\d+\.\d+\.\d+\nPlatform: +linux\/\w+\n$/);
  const j = JSON.parse(vj.stdout) as { version: string; node: string; platform: string };
  t.is(j.node, process.version);
  t.is(j.platform, `${process.platform}/${process.arch}`);
});

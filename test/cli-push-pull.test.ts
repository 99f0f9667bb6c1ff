import test from 'ava';
import { createHash } from 'node:crypto';
import { mkdir, readFile, writeFile, readdir, stat, symlink } from 'node:fs/promises';
import path from 'node:path';
import { startRegistry } from '../lab/registry.js';
import { cliEnv, runCli, tempDir } from '../lab/cli.js';

const sha = (b: Buffer | string): string => createHash('sha256').update(b).digest('hex');

test('push then pull round-trips files, nested titles and a directory, byte for byte', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const { env } = await cliEnv(t);
  const src = await tempDir(t);
  await writeFile(path.join(src, 'a.txt'), 'alpha\n');
  await mkdir(path.join(src, 'sub/deeper'), { recursive: true });
  await writeFile(path.join(src, 'sub/deeper/b.bin'), Buffer.alloc(300_000, 7));
  await mkdir(path.join(src, 'tree/x'), { recursive: true });
  await writeFile(path.join(src, 'tree/x/c.txt'), 'gamma');
  await writeFile(path.join(src, 'tree/d.txt'), 'delta');
  await symlink('d.txt', path.join(src, 'tree/link'));
  const ref = `${reg.host}/team/files:v1`;
  const push = await runCli(['push', ref, 'a.txt', 'sub/deeper/b.bin:application/x.bin', 'tree'], { cwd: src, env });
  t.is(push.code, 0, push.stderr);
  t.regex(push.stdout, /^Uploading\s+[0-9a-f]{12} a\.txt$/m);
  t.regex(push.stdout, new RegExp(`^Pushed \\[registry\\] ${reg.host}/team/files:v1$`, 'm'));
  const digest = /^Digest: (sha256:[0-9a-f]{64})$/m.exec(push.stdout)?.[1];
  t.truthy(digest);

  const out = await tempDir(t);
  const pull = await runCli(['pull', ref, '-o', out], { env });
  t.is(pull.code, 0, pull.stderr);
  t.true(pull.stdout.includes(`Digest: ${digest ?? "?"}`));
  t.is(await readFile(path.join(out, 'a.txt'), 'utf8'), 'alpha\n');
  t.is(sha(await readFile(path.join(out, 'sub/deeper/b.bin'))), sha(Buffer.alloc(300_000, 7)));
  t.is(await readFile(path.join(out, 'tree/x/c.txt'), 'utf8'), 'gamma');
  t.is(await readFile(path.join(out, 'tree/link'), 'utf8'), 'delta');
  // No temp files left behind.
  t.deepEqual((await readdir(out)).sort(), ['a.txt', 'sub', 'tree']);

  // The manifest follows the ORAS conventions.
  const mf = await runCli(['manifest', 'fetch', ref], { env });
  const m = JSON.parse(mf.stdout) as { artifactType: string; config: { mediaType: string; digest: string; size: number }; layers: Array<{ mediaType: string; annotations: Record<string, string> }> };
  t.is(`sha256:${sha(Buffer.from(mf.stdout))}`, digest ?? "");
  t.is(m.artifactType, 'application/vnd.unknown.artifact.v1');
  t.deepEqual(m.config, { mediaType: 'application/vnd.oci.empty.v1+json', digest: 'sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a', size: 2, data: 'e30=' } as never);
  t.deepEqual(m.layers.map((l) => [l.mediaType, l.annotations['org.opencontainers.image.title']]), [
    ['application/vnd.oci.image.layer.v1.tar', 'a.txt'],
    ['application/x.bin', 'sub/deeper/b.bin'],
    ['application/vnd.oci.image.layer.v1.tar+gzip', 'tree'],
  ]);
  t.is(m.layers[2]!.annotations['io.deis.oras.content.unpack'], 'true');
});

test('pushing unchanged content twice gives the same manifest digest; extra tags with a comma', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const { env } = await cliEnv(t);
  const src = await tempDir(t);
  await writeFile(path.join(src, 'f.txt'), 'same');
  await mkdir(path.join(src, 'd'));
  await writeFile(path.join(src, 'd/g.txt'), 'dir');
  const one = await runCli(['push', `${reg.host}/r:a,b,c`, 'f.txt', 'd', '--format', 'json'], { cwd: src, env });
  t.is(one.code, 0, one.stderr);
  const two = await runCli(['push', `${reg.host}/r:a`, 'f.txt', 'd', '--format', 'json'], { cwd: src, env });
  const j1 = JSON.parse(one.stdout) as { digest: string; referenceAsTags: string[] };
  const j2 = JSON.parse(two.stdout) as { digest: string };
  t.is(j1.digest, j2.digest);
  t.deepEqual(j1.referenceAsTags, ['a', 'b', 'c'].map((x) => `${reg.host}/r:${x}`));
  const tags = await runCli(['repo', 'tags', `${reg.host}/r`, '--format', 'json'], { env });
  t.deepEqual((JSON.parse(tags.stdout) as { tags: string[] }).tags.sort(), ['a', 'b', 'c']);
  // Second push found every blob present.
  const text = await runCli(['push', `${reg.host}/r:a`, 'f.txt', 'd'], { cwd: src, env });
  t.regex(text.stdout, /^Exists\s+[0-9a-f]{12} f\.txt$/m);
  for (const tag of ['a', 'b', 'c']) {
    const r = await runCli(['resolve', `${reg.host}/r:${tag}`], { env });
    t.is(r.stdout.trim(), j1.digest);
  }
});

test('repo ls, show, delete; manifest fetch --descriptor; resolve -l; blob fetch', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const { env } = await cliEnv(t);
  const src = await tempDir(t);
  await writeFile(path.join(src, 'x.txt'), 'xxx');
  t.is((await runCli(['push', `${reg.host}/one/two:t1`, 'x.txt', '-a', 'org.opencontainers.image.created=2024-01-02T03:04:05Z'], { cwd: src, env })).code, 0);
  t.is((await runCli(['push', `${reg.host}/three:t2`, 'x.txt'], { cwd: src, env })).code, 0);
  const ls = await runCli(['repo', 'ls', reg.host], { env });
  t.deepEqual(ls.stdout.trim().split('\n').sort(), ['one/two', 'three']);
  const show = JSON.parse((await runCli(['repo', 'show', `${reg.host}/one/two:t1`], { env })).stdout) as Record<string, unknown>;
  t.is(show.createdTime, '2024-01-02T03:04:05Z');
  t.is(show.mediaType, 'application/vnd.oci.image.manifest.v1+json');
  t.regex(String(show.digest), /^sha256:[0-9a-f]{64}$/);
  const desc = JSON.parse((await runCli(['manifest', 'fetch', `${reg.host}/one/two:t1`, '--descriptor'], { env })).stdout) as { digest: string; size: number };
  t.is(desc.digest, String(show.digest));
  const full = await runCli(['resolve', '-l', `${reg.host}/one/two:t1`], { env });
  t.is(full.stdout.trim(), `${reg.host}/one/two@${desc.digest}`);

  const blobDigest = 'sha256:' + sha('xxx');
  const outFile = path.join(src, 'fetched');
  const bf = await runCli(['blob', 'fetch', `${reg.host}/three@${blobDigest}`, '-o', outFile], { env });
  t.is(bf.code, 0, bf.stderr);
  t.is(await readFile(outFile, 'utf8'), 'xxx');
  const toStdout = await runCli(['blob', 'fetch', `${reg.host}/three@${blobDigest}`, '-o', '-'], { env });
  t.is(toStdout.stdout, 'xxx');

  const del = await runCli(['repo', 'delete', `${reg.host}/one/two:t1`, '--force'], { env });
  t.is(del.code, 0, del.stderr);
  const gone = await runCli(['resolve', `${reg.host}/one/two:t1`], { env });
  t.is(gone.code, 4);
  t.regex(gone.stderr, /not found/);
});

test('exit codes and one-line errors for bad input', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const { env } = await cliEnv(t);
  const badRef = await runCli(['pull', 'localhost:5000/UPPER:v1'], { env });
  t.is(badRef.code, 2);
  t.regex(badRef.stderr, /^Error: invalid reference "localhost:5000\/UPPER:v1": repository "UPPER"/);
  t.is(badRef.stderr.trim().split('\n').length, 1);
  const noHost = await runCli(['resolve', 'hello:v1'], { env });
  t.is(noHost.code, 2);
  const unknown = await runCli(['pull', `${reg.host}/does/not/exist:v1`, '-o', await tempDir(t)], { env });
  t.is(unknown.code, 4);
  t.regex(unknown.stderr, /not found/);
  const missingFile = await runCli(['push', `${reg.host}/r:v1`, 'nope.txt'], { env, cwd: await tempDir(t) });
  t.is(missingFile.code, 4);
  t.regex(missingFile.stderr, /nope\.txt/);
  const absTitle = await runCli(['push', `${reg.host}/r:v1`, '/etc/hostname'], { env });
  // Bad local input, as README's exit codes say (was 1).
  t.is(absTitle.code, 2);
  t.regex(absTitle.stderr, /absolute/);
  const badOpt = await runCli(['push', `${reg.host}/r:v1`, '--concurrency', 'x', 'a'], { env });
  t.is(badOpt.code, 2);
  const unknownCmd = await runCli(['frobnicate'], { env });
  t.is(unknownCmd.code, 2);
  const down = await runCli(['resolve', '127.0.0.1:1/x:y'], { env });
  t.is(down.code, 1);
  t.regex(down.stderr, /cannot reach 127\.0\.0\.1:1/);
});

test('--help describes every command and option', async (t) => {
  const top = await runCli(['--help']);
  t.is(top.code, 0);
  for (const c of ['login', 'logout', 'push', 'pull', 'repo', 'manifest', 'resolve', 'blob', 'mount', 'unmount', 'daemon', 'status', 'mounts', 'refresh', 'rescan', 'retry', 'cache']) t.regex(top.stdout, new RegExp(`^  ${c}\\b`, 'm'));
  for (const args of [['push'], ['pull'], ['login'], ['logout'], ['repo', 'ls'], ['repo', 'tags'], ['repo', 'show'], ['repo', 'delete'], ['manifest', 'fetch'], ['resolve'], ['blob', 'fetch'], ['mount'], ['unmount'], ['daemon'], ['status'], ['mounts', 'add'], ['mounts', 'ls'], ['mounts', 'rm'], ['refresh'], ['rescan'], ['retry'], ['cache', 'stats'], ['cache', 'prune']]) {
    const h = await runCli([...args, '--help']);
    t.is(h.code, 0, args.join(' '));
    t.regex(h.stdout, /Example/, args.join(' '));
    // Every option line has a description.
    for (const line of h.stdout.split('\n').filter((l) => /^  -/.test(l))) t.regex(line, /\S\s{2,}\S/, `${args.join(' ')}: ${line}`);
  }
});

test('pull refuses to replace existing files with --keep-old-files and never leaves temp files', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const { env } = await cliEnv(t);
  const src = await tempDir(t);
  await writeFile(path.join(src, 'k.txt'), 'new');
  t.is((await runCli(['push', `${reg.host}/k:v1`, 'k.txt'], { cwd: src, env })).code, 0);
  const out = await tempDir(t);
  await writeFile(path.join(out, 'k.txt'), 'old');
  const r = await runCli(['pull', `${reg.host}/k:v1`, '-o', out, '--keep-old-files'], { env });
  t.is(r.code, 1);
  t.regex(r.stderr, /k\.txt exists/);
  t.is(await readFile(path.join(out, 'k.txt'), 'utf8'), 'old');
  const r2 = await runCli(['pull', `${reg.host}/k:v1`, '-o', out], { env });
  t.is(r2.code, 0);
  t.is(await readFile(path.join(out, 'k.txt'), 'utf8'), 'new');
  t.deepEqual(await readdir(out), ['k.txt']);
  t.is((await stat(path.join(out, 'k.txt'))).size, 3);
});

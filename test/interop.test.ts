import test from 'ava';
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFile, readdir, writeFile, mkdir } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { startRegistry } from '../lab/registry.js';
import { startFaultProxy } from '../lab/fault-proxy.js';
import { cliEnv, runCli, tempDir } from '../lab/cli.js';

const exec = promisify(execFile);
const sha = (b: Buffer | string): string => createHash('sha256').update(b).digest('hex');

async function skopeo(args: string[]): Promise<string> {
  const { stdout } = await exec('skopeo', ['--insecure-policy', ...args], { maxBuffer: 64 * 1024 * 1024 });
  return stdout;
}

test('what regfs pushes, skopeo inspects and copies to an OCI layout with identical blobs', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const { env } = await cliEnv(t);
  const src = await tempDir(t);
  await writeFile(path.join(src, 'one.txt'), 'one\n');
  await writeFile(path.join(src, 'two.bin'), Buffer.alloc(1 << 20, 3));
  const push = await runCli(['push', `${reg.host}/interop/art:v1`, 'one.txt', 'two.bin', '--format', 'json'], { cwd: src, env });
  t.is(push.code, 0, push.stderr);
  const digest = (JSON.parse(push.stdout) as { digest: string }).digest;

  const raw = await skopeo(['inspect', '--raw', '--tls-verify=false', `docker://${reg.host}/interop/art:v1`]);
  t.is(`sha256:${sha(raw)}`, digest, 'skopeo sees the exact manifest bytes regfs pushed');

  const layout = path.join(await tempDir(t), 'layout');
  await skopeo(['copy', '--all', '--preserve-digests', '--src-tls-verify=false', `docker://${reg.host}/interop/art:v1`, `oci:${layout}:v1`]);
  const blobs = (await readdir(path.join(layout, 'blobs/sha256'))).sort();
  const expected = [sha('one\n'), sha(Buffer.alloc(1 << 20, 3)), digest.slice(7), '44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a'].sort();
  t.deepEqual(blobs, expected);
  for (const b of blobs) t.is(sha(await readFile(path.join(layout, 'blobs/sha256', b))), b);

  // regfs reads the layout skopeo wrote, too.
  const out = await tempDir(t);
  const pull = await runCli(['pull', `oci:${layout}:v1`, '-o', out], { env });
  t.is(pull.code, 0, pull.stderr);
  t.is(await readFile(path.join(out, 'one.txt'), 'utf8'), 'one\n');
});

test('what skopeo copies into the registry or an OCI layout, regfs lists and pulls', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const { env } = await cliEnv(t);
  const src = await tempDir(t);
  await writeFile(path.join(src, 'data.txt'), 'from skopeo');
  // Build an OCI layout with regfs, move it into the registry with skopeo, read it back with regfs.
  const layout = path.join(await tempDir(t), 'L');
  t.is((await runCli(['push', `oci:${layout}:s1`, 'data.txt'], { cwd: src, env })).code, 0);
  await skopeo(['copy', '--all', '--preserve-digests', '--dest-tls-verify=false', `oci:${layout}:s1`, `docker://${reg.host}/from/skopeo:s1`]);
  const ls = await runCli(['repo', 'ls', reg.host], { env });
  t.deepEqual(ls.stdout.trim().split('\n'), ['from/skopeo']);
  const out = await tempDir(t);
  const pull = await runCli(['pull', `${reg.host}/from/skopeo:s1`, '-o', out], { env });
  t.is(pull.code, 0, pull.stderr);
  t.is(await readFile(path.join(out, 'data.txt'), 'utf8'), 'from skopeo');

  // skopeo's own OCI layout of a container-image-shaped manifest: untitled layers are skipped, not invented.
  const img = path.join(await tempDir(t), 'img');
  await mkdir(img);
  await skopeo(['copy', '--dest-tls-verify=false', `oci:${layout}:s1`, `oci:${img}:copy`]);
  const tags = await runCli(['repo', 'tags', `oci:${img}`], { env });
  t.deepEqual(tags.stdout.trim().split('\n'), ['copy']);
});

test('tag and catalog listings follow Link pagination across pages', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const proxy = await startFaultProxy(t, reg.url);
  // distribution 2.8.2 paginates the catalog but ignores `n` on tag lists; the proxy paginates those.
  proxy.rules.push({ method: 'GET', path: /\/tags\/list/, paginateTags: 10 });
  const { env } = await cliEnv(t);
  const src = await tempDir(t);
  await writeFile(path.join(src, 'p.txt'), 'page');
  const tags = Array.from({ length: 25 }, (_, i) => `t${String(i).padStart(2, '0')}`);
  t.is((await runCli(['push', `${proxy.host}/paged:${tags.join(',')}`, 'p.txt'], { cwd: src, env })).code, 0);
  proxy.reset();
  const r = await runCli(['repo', 'tags', `${proxy.host}/paged`, '--page-size', '10', '--format', 'json'], { env });
  t.is(r.code, 0, r.stderr);
  t.deepEqual((JSON.parse(r.stdout) as { tags: string[] }).tags.sort(), tags);
  t.is(proxy.count('GET', /\/tags\/list/), 3, 'three pages of 10');
  t.is((await runCli(['push', `${proxy.host}/paged2:x`, 'p.txt'], { cwd: src, env })).code, 0);
  t.is((await runCli(['push', `${proxy.host}/paged3:x`, 'p.txt'], { cwd: src, env })).code, 0);
  proxy.reset();
  const cat = await runCli(['repo', 'ls', proxy.host, '--page-size', '1'], { env });
  t.deepEqual(cat.stdout.trim().split('\n'), ['paged', 'paged2', 'paged3']);
  t.true(proxy.count('GET', /_catalog/) >= 3, 'one request per catalog page');
});

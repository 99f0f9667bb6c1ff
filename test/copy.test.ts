import test from 'ava';
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { startRegistry } from '../lab/registry.js';
import { cliEnv, runCli, tempDir } from '../lab/cli.js';
import { OciLayoutRepository } from '../registry/oci-layout.js';
import { packArtifact } from '../registry/pack.js';
import { pushArtifact } from '../registry/transfer.js';

const exec = promisify(execFile);
const SIG = 'application/vnd.example.sig';
const sha = (s: string): string => `sha256:${createHash('sha256').update(s).digest('hex')}`;

/** rawDigest is what skopeo (an independent client) reads: sha256 of the exact manifest bytes. */
async function rawDigest(image: string): Promise<string> {
  const { stdout } = await exec('skopeo', ['--insecure-policy', 'inspect', '--raw', '--tls-verify=false', image]);
  return sha(stdout);
}

const digestOf = (stdout: string): string => /^Digest: (sha256:[0-9a-f]{64})$/m.exec(stdout)?.[1] ?? 'none';

test('cp between registries and a layout keeps digests; -r brings referrers; same-registry mounts; overwrite needs --force; --platform', async (t) => {
  const [a, b] = await Promise.all([startRegistry(t, { flavour: 'plain' }), startRegistry(t, { flavour: 'plain' })]);
  const { env } = await cliEnv(t);
  const dir = await tempDir(t);
  await writeFile(path.join(dir, 'a.txt'), 'alpha\n');
  await writeFile(path.join(dir, 'b.txt'), 'beta\n');
  await writeFile(path.join(dir, 'sig.json'), '{"sig":true}');
  const push = await runCli(['push', `${a.host}/team/app:v1`, 'a.txt'], { cwd: dir, env });
  t.is(push.code, 0, push.stderr);
  const v1 = digestOf(push.stdout);
  const att = await runCli(['attach', '--artifact-type', SIG, `${a.host}/team/app:v1`, 'sig.json', '--format', 'json'], { cwd: dir, env });
  t.is(att.code, 0, att.stderr);
  const sigDigest = (JSON.parse(att.stdout) as { digest: string }).digest;

  // registry -> registry, without -r: same digest, no referrers.
  const cp1 = await runCli(['cp', `${a.host}/team/app:v1`, `${b.host}/team/app:v1`], { env });
  t.is(cp1.code, 0, cp1.stderr);
  t.is(digestOf(cp1.stdout), v1);
  t.is(await rawDigest(`docker://${b.host}/team/app:v1`), v1);
  const none = await runCli(['discover', `${b.host}/team/app:v1`, '--format', 'json'], { env });
  t.deepEqual((JSON.parse(none.stdout) as { manifests: unknown[] }).manifests, []);

  // -r: the signature comes along, with the same digest, and the tag schema index is rebuilt.
  const cp2 = await runCli(['copy', '-r', `${a.host}/team/app:v1`, `${b.host}/team/signed:v1`, '--format', 'json'], { env });
  t.is(cp2.code, 0, cp2.stderr);
  t.is((JSON.parse(cp2.stdout) as { referrers: number }).referrers, 1);
  t.is(await rawDigest(`docker://${b.host}/team/signed@${sigDigest}`), sigDigest);
  const disc = await runCli(['discover', `${b.host}/team/signed:v1`, '--format', 'json'], { env });
  t.deepEqual((JSON.parse(disc.stdout) as { manifests: Array<{ digest: string }> }).manifests.map((m) => m.digest), [sigDigest]);

  // registry -> OCI layout (-r) and back: skopeo reads the layout with the same digest.
  const layout = path.join(dir, 'layout');
  const cp3 = await runCli(['cp', '-r', `${a.host}/team/app:v1`, `oci:${layout}:v1`], { env });
  t.is(cp3.code, 0, cp3.stderr);
  t.is(await rawDigest(`oci:${layout}:v1`), v1);
  const ldisc = await runCli(['discover', `oci:${layout}:v1`, '--format', 'json'], { env });
  t.deepEqual((JSON.parse(ldisc.stdout) as { manifests: Array<{ digest: string }> }).manifests.map((m) => m.digest), [sigDigest]);
  const back = await runCli(['cp', '-r', `oci:${layout}:v1`, `${b.host}/fromlayout/app:v1`], { env });
  t.is(back.code, 0, back.stderr);
  t.is(await rawDigest(`docker://${b.host}/fromlayout/app:v1`), v1);
  t.is(await rawDigest(`docker://${b.host}/fromlayout/app@${sigDigest}`), sigDigest);

  // Same registry, other repository: blobs are mounted, not uploaded.
  const same = await runCli(['cp', `${a.host}/team/app:v1`, `${a.host}/other/app:v1`, '--format', 'json'], { env });
  t.is(same.code, 0, same.stderr);
  const s = JSON.parse(same.stdout) as { blobsMounted: number; blobsPushed: number; digest: string };
  t.is(s.digest, v1);
  t.true(s.blobsMounted >= 1, same.stdout);
  t.is(s.blobsPushed, 0);

  // A different digest at the destination tag is refused (exit 5) until --force.
  const other = await runCli(['push', `${b.host}/team/app:v2`, 'b.txt'], { cwd: dir, env });
  t.is(other.code, 0, other.stderr);
  const v2 = digestOf(other.stdout);
  const refused = await runCli(['cp', `${a.host}/team/app:v1`, `${b.host}/team/app:v2`], { env });
  t.is(refused.code, 5, refused.stderr);
  t.regex(refused.stderr, /already points at sha256:[0-9a-f]{64}.*--force/);
  t.is(await rawDigest(`docker://${b.host}/team/app:v2`), v2, 'the tag was not moved');
  const forced = await runCli(['cp', '--force', `${a.host}/team/app:v1`, `${b.host}/team/app:v2`], { env });
  t.is(forced.code, 0, forced.stderr);
  t.is(await rawDigest(`docker://${b.host}/team/app:v2`), v1);
  // Copying the same digest again is fine without --force.
  t.is((await runCli(['cp', `${a.host}/team/app:v1`, `${b.host}/team/app:v2`], { env })).code, 0);

  // --platform picks one manifest out of an index; without it the whole index (and children) is copied.
  const multi = path.join(dir, 'multi');
  const lrepo = new OciLayoutRepository(multi, 'multi', { create: true });
  const children = [];
  for (const [arch, file] of [['amd64', 'a.txt'], ['arm64', 'b.txt']] as const) {
    const desc = await pushArtifact(lrepo, await packArtifact({ files: [{ path: file }], cwd: dir }), []);
    children.push({ mediaType: desc.mediaType, digest: desc.digest, size: desc.size, platform: { os: 'linux', architecture: arch } });
  }
  const index = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.index.v1+json', manifests: children }));
  const idx = await lrepo.pushManifest(index, 'application/vnd.oci.image.index.v1+json', ['multi']);
  const arm = await runCli(['cp', '--platform', 'linux/arm64', `oci:${multi}:multi`, `${b.host}/team/multi:arm`], { env });
  t.is(arm.code, 0, arm.stderr);
  t.is(await rawDigest(`docker://${b.host}/team/multi:arm`), children[1]!.digest);
  const all = await runCli(['cp', `oci:${multi}:multi`, `${b.host}/team/multi:all`], { env });
  t.is(all.code, 0, all.stderr);
  t.is(await rawDigest(`docker://${b.host}/team/multi:all`), idx.digest);
  t.is(await rawDigest(`docker://${b.host}/team/multi@${children[0]!.digest}`), children[0]!.digest);
  const bad = await runCli(['cp', '--platform', 'linux/s390x', `oci:${multi}:multi`, `${b.host}/team/multi:x`], { env });
  t.is(bad.code, 4, bad.stderr);
  t.regex(bad.stderr, /no manifest for linux\/s390x \(it has: linux\/amd64, linux\/arm64\)/);
  t.is((await runCli(['cp', '--platform', 'linux', `oci:${multi}:multi`, `${b.host}/team/multi:x`], { env })).code, 2);
});

test('backup to a .tar and a folder, restore into a fresh registry: same digests, referrers too; a different digest needs --force', async (t) => {
  const [a, c] = await Promise.all([startRegistry(t, { flavour: 'plain' }), startRegistry(t, { flavour: 'plain' })]);
  const { env } = await cliEnv(t);
  const dir = await tempDir(t);
  await writeFile(path.join(dir, 'a.txt'), 'alpha\n');
  await writeFile(path.join(dir, 'b.txt'), 'beta\n');
  const p1 = await runCli(['push', `${a.host}/team/app:v1`, 'a.txt'], { cwd: dir, env });
  const p2 = await runCli(['push', `${a.host}/team/app:v2`, 'b.txt'], { cwd: dir, env });
  t.is(p1.code + p2.code, 0, p1.stderr + p2.stderr);
  const [v1, v2] = [digestOf(p1.stdout), digestOf(p2.stdout)];
  const att = await runCli(['attach', '--artifact-type', SIG, `${a.host}/team/app:v1`, '--format', 'json'], { cwd: dir, env });
  const sigDigest = (JSON.parse(att.stdout) as { digest: string }).digest;

  const tar = path.join(dir, 'app.tar');
  const bk = await runCli(['backup', `${a.host}/team/app`, '--output', tar, '--include-referrers'], { env });
  t.is(bk.code, 0, bk.stderr);
  t.regex(bk.stdout, /2 tag\(s\)/);
  t.true((await stat(tar)).size > 0);
  const { stdout: listing } = await exec('tar', ['tf', tar]);
  t.true(listing.split('\n').includes('app/index.json'), listing);

  const rs = await runCli(['restore', tar, `${c.host}/restored/app`], { env });
  t.is(rs.code, 0, rs.stderr);
  t.is(await rawDigest(`docker://${c.host}/restored/app:v1`), v1);
  t.is(await rawDigest(`docker://${c.host}/restored/app:v2`), v2);
  t.is(await rawDigest(`docker://${c.host}/restored/app@${sigDigest}`), sigDigest);
  const disc = await runCli(['discover', `${c.host}/restored/app:v1`, '--format', 'json'], { env });
  t.deepEqual((JSON.parse(disc.stdout) as { manifests: Array<{ digest: string }> }).manifests.map((m) => m.digest), [sigDigest]);

  // A folder backup of one tag, restored with --input under another tag set: v1 over v2 refuses, then --force.
  const folder = path.join(dir, 'bk');
  t.is((await runCli(['backup', `${a.host}/team/app:v1`, '-o', folder], { env })).code, 0);
  t.true((await stat(path.join(folder, 'oci-layout'))).isFile());
  const clash = await runCli(['restore', '--input', folder, `${c.host}/restored/app:v1`], { env });
  t.is(clash.code, 0, 'same digest: no conflict');
  t.is((await runCli(['cp', `${a.host}/team/app:v2`, `oci:${folder}:v1`, '--force'], { env })).code, 0);
  const refused = await runCli(['restore', '--input', folder, `${c.host}/restored/app`], { env });
  t.is(refused.code, 5, refused.stderr);
  t.is(await rawDigest(`docker://${c.host}/restored/app:v1`), v1);
  const forced = await runCli(['restore', '--input', folder, `${c.host}/restored/app`, '--force'], { env });
  t.is(forced.code, 0, forced.stderr);
  t.is(await rawDigest(`docker://${c.host}/restored/app:v1`), v2);
  // Bad input: not a tarball.
  await writeFile(path.join(dir, 'junk.tar'), 'not a tar');
  const junk = await runCli(['restore', path.join(dir, 'junk.tar'), `${c.host}/x/y`], { env });
  t.is(junk.code, 2, junk.stderr);
});

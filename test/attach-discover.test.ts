import test from 'ava';
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { readdir, readFile } from 'node:fs/promises';
import { startMount } from '../lab/mount.js';
import { startRegistry } from '../lab/registry.js';
import { cliEnv, runCli, tempDir } from '../lab/cli.js';
import { referrerDirName, referrersTagIndex, referrersWriteFor } from '../registry/referrers.js';

const exec = promisify(execFile);
const SIG = 'application/vnd.example.sig';
const SBOM = 'application/vnd.example.sbom+json';

test('the referrers write decision: OCI-Subject header means the registry indexed it, else the tag schema; no subject, nothing', (t) => {
  t.is(referrersWriteFor(true, 'sha256:' + 'a'.repeat(64)), 'api');
  t.is(referrersWriteFor(true, undefined), 'tag-schema');
  t.is(referrersWriteFor(false, undefined), undefined);
  const d = { mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: `sha256:${'b'.repeat(64)}` as const, size: 10, artifactType: SIG };
  const idx = JSON.parse(referrersTagIndex([], d)!.toString()) as { mediaType: string; manifests: unknown[] };
  t.is(idx.mediaType, 'application/vnd.oci.image.index.v1+json');
  t.deepEqual(idx.manifests, [d]);
  t.is(referrersTagIndex([d], d), undefined, 'an entry already listed is not added twice');
  t.is(referrerDirName(d), `application-vnd.example.sig-${'b'.repeat(12)}`);
  t.is(referrerDirName({ ...d, artifactType: SBOM }), `application-vnd.example.sbom-json-${'b'.repeat(12)}`);
});

test('attach a signature and an SBOM, read back by skopeo and raw HTTP (tag schema), discover as tree, json and table', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const { env } = await cliEnv(t);
  const dir = await tempDir(t);
  await writeFile(path.join(dir, 'a.txt'), 'subject\n');
  await writeFile(path.join(dir, 'sig.json'), '{"sig":1}');
  await writeFile(path.join(dir, 'sbom.json'), '{"sbom":1}');
  const ref = `${reg.host}/team/app:v1`;
  const push = await runCli(['push', ref, 'a.txt'], { cwd: dir, env });
  t.is(push.code, 0, push.stderr);
  const subject = /^Digest: (sha256:[0-9a-f]{64})$/m.exec(push.stdout)![1]!;

  const sig = await runCli(['attach', '--artifact-type', SIG, ref, 'sig.json:application/json', '-a', 'k=v', '--format', 'json'], { cwd: dir, env });
  t.is(sig.code, 0, sig.stderr);
  const sigOut = JSON.parse(sig.stdout) as { digest: string; artifactType: string; subject: { digest: string } };
  t.is(sigOut.subject.digest, subject);
  t.is(sigOut.artifactType, SIG);

  // The referrer manifest itself: subject, artifactType, empty config, our annotation and a created one.
  const { stdout: raw } = await exec('skopeo', ['--insecure-policy', 'inspect', '--raw', '--tls-verify=false', `docker://${reg.host}/team/app@${sigOut.digest}`]);
  t.is(`sha256:${createHash('sha256').update(raw).digest('hex')}`, sigOut.digest);
  const m = JSON.parse(raw) as { artifactType: string; subject: { digest: string }; config: { mediaType: string }; layers: Array<{ mediaType: string }>; annotations: Record<string, string> };
  t.is(m.artifactType, SIG);
  t.is(m.subject.digest, subject);
  t.is(m.config.mediaType, 'application/vnd.oci.empty.v1+json');
  t.is(m.layers[0]!.mediaType, 'application/json');
  t.is(m.annotations.k, 'v');
  t.regex(m.annotations['org.opencontainers.image.created']!, /^\d{4}-\d\d-\d\dT/);

  const sbom = await runCli(['attach', '--artifact-type', SBOM, `${reg.host}/team/app@${subject}`, 'sbom.json', '--format', 'json'], { cwd: dir, env });
  t.is(sbom.code, 0, sbom.stderr);
  const sbomDigest = (JSON.parse(sbom.stdout) as { digest: string }).digest;
  // A signature of the SBOM: a second level.
  const sig2 = await runCli(['attach', '--artifact-type', SIG, `${reg.host}/team/app@${sbomDigest}`, '--format', 'json'], { cwd: dir, env });
  t.is(sig2.code, 0, sig2.stderr);
  const sig2Digest = (JSON.parse(sig2.stdout) as { digest: string }).digest;

  // distribution 2.8 has no referrers API: the tag schema index `sha256-<hex>` lists both referrers.
  const tag = subject.replace(':', '-');
  const { stdout: idxRaw } = await exec('skopeo', ['--insecure-policy', 'inspect', '--raw', '--tls-verify=false', `docker://${reg.host}/team/app:${tag}`]);
  const viaSkopeo = JSON.parse(idxRaw) as { mediaType: string; manifests: Array<{ digest: string; artifactType: string }> };
  t.is(viaSkopeo.mediaType, 'application/vnd.oci.image.index.v1+json');
  t.deepEqual(viaSkopeo.manifests.map((d) => [d.digest, d.artifactType]), [[sigOut.digest, SIG], [sbomDigest, SBOM]]);
  const res = await fetch(`${reg.url}/v2/team/app/manifests/${tag}`, { headers: { accept: 'application/vnd.oci.image.index.v1+json' } });
  t.is(res.status, 200);
  t.is(res.headers.get('content-type'), 'application/vnd.oci.image.index.v1+json');
  const viaHttp = (await res.json()) as { manifests: Array<{ digest: string; artifactType: string }> };
  t.true(viaHttp.manifests.some((d) => d.digest === sigOut.digest && d.artifactType === SIG));

  // discover: tree (ORAS layout), json (nested), table, artifact type filter, depth.
  const tree = await runCli(['discover', ref], { env });
  t.is(tree.code, 0, tree.stderr);
  t.is(
    tree.stdout,
    [
      `${reg.host}/team/app@${subject}`,
      `├── ${SIG}`,
      `│   └── ${sigOut.digest}`,
      `└── ${SBOM}`,
      `    └── ${sbomDigest}`,
      `        └── ${SIG}`,
      `            └── ${sig2Digest}`,
      '',
    ].join('\n'),
  );
  const json = await runCli(['discover', ref, '--format', 'json'], { env });
  t.is(json.code, 0, json.stderr);
  const j = JSON.parse(json.stdout) as { reference: string; digest: string; manifests: Array<{ reference: string; digest: string; artifactType: string; mediaType: string; size: number; annotations?: Record<string, string>; manifests: Array<{ digest: string }> }> };
  t.is(j.digest, subject);
  t.is(j.manifests.length, 2);
  t.is(j.manifests[0]!.reference, `${reg.host}/team/app@${sigOut.digest}`);
  t.is(j.manifests[0]!.mediaType, 'application/vnd.oci.image.manifest.v1+json');
  t.is(j.manifests[0]!.annotations?.k, 'v');
  t.deepEqual(j.manifests[1]!.manifests.map((x) => x.digest), [sig2Digest]);
  const filtered = await runCli(['discover', ref, '--format', 'json', '--artifact-type', SBOM, '--depth', '1'], { env });
  const f = JSON.parse(filtered.stdout) as { manifests: Array<{ digest: string; manifests: unknown[] }> };
  t.deepEqual(f.manifests.map((x) => x.digest), [sbomDigest]);
  t.deepEqual(f.manifests[0]!.manifests, [], '--depth 1 stops at the first level');
  const table = await runCli(['discover', ref, '--format', 'table'], { env });
  t.is(table.code, 0, table.stderr);
  t.regex(table.stdout, new RegExp(`^${sbomDigest}\\s+${SBOM.replace(/[.+]/g, '\\$&')}$`, 'm'));

  // The mount: `.referrers` is hidden from plain ls, lists each referrer by type and digest, nested ones too.
  const mnt = await startMount(t, reg.host);
  const tagDir = path.join(mnt.mnt, 'team/app/v1');
  t.deepEqual((await readdir(tagDir)).filter((n) => !n.startsWith('.')), ['a.txt']);
  t.true((await readdir(tagDir)).includes('.referrers'), 'readdir (ls -a) shows .referrers');
  const ls = await exec('ls', [tagDir]);
  t.is(ls.stdout.trim(), 'a.txt');
  const sigName = `application-vnd.example.sig-${sigOut.digest.slice(7, 19)}`;
  const sbomName = `application-vnd.example.sbom-json-${sbomDigest.slice(7, 19)}`;
  t.deepEqual((await readdir(path.join(tagDir, '.referrers'))).sort(), [sbomName, sigName].sort());
  t.is(await readFile(path.join(tagDir, '.referrers', sigName, 'sig.json'), 'utf8'), '{"sig":1}');
  t.deepEqual(await readdir(path.join(tagDir, '.referrers', sbomName, '.referrers')), [`application-vnd.example.sig-${sig2Digest.slice(7, 19)}`]);
  // A manifest without referrers has no `.referrers`.
  const sigDir = path.join(tagDir, '.referrers', sigName);
  t.false((await readdir(sigDir)).includes('.referrers'));
  await t.throwsAsync(readdir(path.join(sigDir, '.referrers')), { code: 'ENOENT' });

  // Bad input: no --artifact-type is a usage error; a missing subject is not found.
  t.is((await runCli(['attach', ref, 'sig.json'], { cwd: dir, env })).code, 2);
  const missing = await runCli(['attach', '--artifact-type', SIG, `${reg.host}/team/app:nope`, 'sig.json'], { cwd: dir, env });
  t.is(missing.code, 4, missing.stderr);
});

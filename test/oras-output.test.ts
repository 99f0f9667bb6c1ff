import test from 'ava';
import { mkdir, readdir, readFile, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';
import { startRegistry } from '../lab/registry.js';
import { cliEnv, runCli, tempDir } from '../lab/cli.js';
import { tarGz } from '../lab/tar-layer.js';
import { sh, startMount } from '../lab/mount.js';
import { RemoteRegistry } from '../registry/remote.js';
import { digestOf } from '../registry/digest.js';
import { EMPTY_CONFIG, MediaType } from '../registry/media-types.js';

const EMPTY = { mediaType: EMPTY_CONFIG.mediaType, digest: EMPTY_CONFIG.digest, size: 2 };

/** pushRaw pushes blobs and a hand-made manifest (or index) with the library, bypassing push's checks. */
async function pushRaw(host: string, repo: string, tag: string, blobs: Buffer[], manifest: object, mediaType: string = MediaType.ociManifest): Promise<string> {
  const r = new RemoteRegistry(host).repository(repo);
  try {
    await r.pushBlob(EMPTY, () => Readable.from([Buffer.from('{}')]));
    for (const b of blobs) await r.pushBlob({ mediaType: 'application/octet-stream', digest: digestOf(b), size: b.length }, () => Readable.from([b]));
    const bytes = Buffer.from(JSON.stringify(manifest));
    await r.pushManifest(bytes, mediaType, [tag]);
    return digestOf(bytes);
  } finally {
    await r.registry.close();
  }
}

test('push and pull print ORAS 1.2 text lines, JSON shapes and go-templates', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const { env } = await cliEnv(t);
  const src = await tempDir(t);
  await writeFile(path.join(src, 'hi:txt'), 'hello');
  await writeFile(path.join(src, 'cfg.json'), '{"a":1}');
  const ref = `${reg.host}/odd/r`;

  // Text: no line for the empty config, ORAS's column widths, Tagged for the extra tag.
  const push = await runCli(['push', `${ref}:a,b`, 'hi:txt:'], { cwd: src, env });
  t.is(push.code, 0, push.stderr);
  const digest = /^Digest: (sha256:[0-9a-f]{64})$/m.exec(push.stdout)?.[1] ?? '';
  const short = digestOf(Buffer.from('hello')).slice(7, 19);
  t.deepEqual(push.stdout.trim().split('\n'), [
    `Uploading ${short} hi:txt`,
    `Uploaded  ${short} hi:txt`,
    `Pushed [registry] ${ref}:a`,
    'Tagged b',
    'ArtifactType: application/vnd.unknown.artifact.v1',
    `Digest: ${digest}`,
  ]);
  // --verbose shows the untitled config by its media type; a second push says Exists.
  const again = await runCli(['push', `${ref}:c`, 'hi:txt:', '-v'], { cwd: src, env });
  t.regex(again.stdout, new RegExp(`^Exists    ${short} hi:txt$`, 'm'));
  t.regex(again.stdout, /^Exists    44136fa355b3 application\/vnd\.oci\.empty\.v1\+json$/m);

  // --config FILE:TYPE: the ArtifactType line is the config type; JSON has ORAS's fields.
  const js = await runCli(['push', `${ref}:j,k`, 'hi:txt:', '--config', 'cfg.json:application/x.cfg', '-a', 'x=y', '--format', 'json', '--export-manifest', 'm.json'], { cwd: src, env });
  t.is(js.code, 0, js.stderr);
  const pj = JSON.parse(js.stdout) as Record<string, unknown>;
  t.deepEqual(Object.keys(pj), ['reference', 'mediaType', 'digest', 'size', 'annotations', 'artifactType', 'referenceAsTags']);
  t.is(pj.reference, `${ref}@${pj.digest as string}`);
  t.is(pj.mediaType, MediaType.ociManifest);
  t.deepEqual(pj.annotations, { x: 'y' });
  t.is(pj.artifactType, 'application/x.cfg');
  t.deepEqual(pj.referenceAsTags, [`${ref}:j`, `${ref}:k`]);
  const exported = await readFile(path.join(src, 'm.json'));
  t.is(digestOf(exported) as string, pj.digest as string);
  t.is(exported.length, pj.size as number);

  // Pull JSON: absolute paths, per-file digest references and descriptors.
  const out = await tempDir(t);
  const pull = await runCli(['pull', `${ref}:a`, '-o', out, '--format', 'json'], { env });
  t.is(pull.code, 0, pull.stderr);
  const pl = JSON.parse(pull.stdout) as { reference: string; files: Array<Record<string, unknown>> };
  t.deepEqual(Object.keys(pl), ['reference', 'files']);
  t.is(pl.reference, `${ref}@${digest}`);
  const ld = digestOf(Buffer.from('hello'));
  t.deepEqual(pl.files, [{ path: path.join(out, 'hi:txt'), reference: `${ref}@${ld}`, mediaType: MediaType.ociLayerTar, digest: ld, size: 5, annotations: { 'org.opencontainers.image.title': 'hi:txt' } }]);
  t.is(await readFile(path.join(out, 'hi:txt'), 'utf8'), 'hello');

  const textPull = await runCli(['pull', `${ref}:a`, '-o', out], { env });
  t.deepEqual(textPull.stdout.trim().split('\n'), [`Downloading ${short} hi:txt`, `Downloaded  ${short} hi:txt`, `Pulled [registry] ${ref}:a`, `Digest: ${digest}`]);

  // go-template over the same model.
  const tpl = await runCli(['pull', `${ref}:a`, '-o', out, '--format', 'go-template={{range .files}}{{.path}} {{index .annotations "org.opencontainers.image.title"}}{{end}};{{json .reference}}'], { env });
  t.is(tpl.code, 0, tpl.stderr);
  t.is(tpl.stdout, `${path.join(out, 'hi:txt')} hi:txt;"${ref}@${digest}"`);
  const tp = await runCli(['push', `${ref}:t`, 'hi:txt:', '--format', 'go-template={{.digest}} {{len .referenceAsTags}}'], { cwd: src, env });
  t.is(tp.stdout, `${digest} 1`);
  const t2 = await runCli(['push', `${ref}:t`, 'hi:txt:', '--format', 'go-template', '--template', '{{with .annotations}}has{{else}}none{{end}} {{.mediaType | upper}}'], { cwd: src, env });
  t.is(t2.stdout, 'none APPLICATION/VND.OCI.IMAGE.MANIFEST.V1+JSON', t2.stderr);
  const noFmt = await runCli(['push', `${ref}:t`, 'hi:txt:', '--template', '{{.digest}}'], { cwd: src, env });
  t.is(noFmt.code, 2);
  t.regex(noFmt.stderr, /--template must be used with --format go-template/);
  const badTpl = await runCli(['push', `${ref}:t`, 'hi:txt:', '--format', 'go-template={{range .files}}'], { cwd: src, env });
  t.is(badTpl.code, 2);
  t.regex(badTpl.stderr, /invalid go-template: \{\{range\}\} is not closed/);
  const badFn = await runCli(['pull', `${ref}:a`, '--format', 'go-template={{printf "%s" .x}}'], { env });
  t.is(badFn.code, 2);

  // A --media-type filter that matches nothing is an error and says what is there.
  const none = await runCli(['pull', `${ref}:a`, '-o', out, '--media-type', 'application/x.none'], { env });
  t.is(none.code, 4, none.stderr);
  t.notRegex(none.stdout, /Pulled/);
  t.regex(none.stderr, /no layer .* has media type application\/x\.none \(it has: application\/vnd\.oci\.image\.layer\.v1\.tar\)/);
});

test('push refuses a directory with an escaping symlink; pull writes nothing when one layer entry is unsafe', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const { env } = await cliEnv(t);
  const src = await tempDir(t);
  await writeFile(path.join(src, 'nine.bin'), '999999999');
  await mkdir(path.join(src, 'd2'));
  await symlink('/etc/passwd', path.join(src, 'd2/abs'));
  const push = await runCli(['push', `${reg.host}/odd/r:1`, 'nine.bin', 'd2/'], { cwd: src, env });
  t.is(push.code, 2);
  t.regex(push.stderr, /d2\/abs is a symlink to "\/etc\/passwd", outside the pushed directory/);
  await mkdir(path.join(src, 'd3/sub'), { recursive: true });
  await symlink('../../x', path.join(src, 'd3/sub/up'));
  t.regex((await runCli(['push', `${reg.host}/odd/r:1`, 'd3'], { cwd: src, env })).stderr, /d3\/sub\/up is a symlink to "\.\.\/\.\.\/x"/);

  // Absolute paths: refused (exit 2) unless --disable-path-validation, which keeps the absolute title (ORAS).
  const absFile = path.join(src, 'nine.bin');
  t.is((await runCli(['push', `${reg.host}/odd/abs:1`, absFile], { env })).code, 2);
  const abs = await runCli(['push', `${reg.host}/odd/abs:1`, absFile, '--disable-path-validation'], { env });
  t.is(abs.code, 0, abs.stderr);
  t.regex(abs.stdout, new RegExp(`^Uploaded  [0-9a-f]{12} ${absFile}$`, 'm'));

  // A hand-made artifact: a good file first, then a directory layer with one entry escaping it.
  const good = Buffer.from('good');
  const layer = await tarGz([{ name: 'dir', type: 'directory' }, { name: 'dir/ok.txt', content: 'ok' }, { name: 'dir/../../evil.txt', content: 'x' }]);
  await pushRaw(reg.host, 'odd/evil', '1', [good, layer], {
    schemaVersion: 2,
    mediaType: MediaType.ociManifest,
    artifactType: 'application/x.t',
    config: EMPTY,
    layers: [
      { mediaType: 'application/octet-stream', digest: digestOf(good), size: good.length, annotations: { 'org.opencontainers.image.title': 'a-good.txt' } },
      { mediaType: MediaType.ociLayerTarGzip, digest: digestOf(layer), size: layer.length, annotations: { 'org.opencontainers.image.title': 'dir', 'io.deis.oras.content.unpack': 'true' } },
    ],
  });
  const out = await tempDir(t);
  const pull = await runCli(['pull', `${reg.host}/odd/evil:1`, '-o', out, '--concurrency', '1'], { env });
  t.not(pull.code, 0);
  t.regex(pull.stderr, /layer "dir"/);
  t.deepEqual(await readdir(out), [], 'nothing written, no staging left');
  t.deepEqual(await readdir(path.dirname(out)).then((l) => l.includes('evil.txt')), false);

  // The mount hides the unsafe entry (ls -lR succeeds), and an artifact without files shows no `{}` file.
  t.is((await runCli(['push', `${reg.host}/odd/empty:1`], { cwd: src, env })).code, 0);
  const m = await startMount(t, reg.host);
  const ls = await sh(`ls -lR ${m.mnt}/odd/evil/1`);
  t.is(ls.code, 0, ls.stderr);
  t.regex(ls.stdout, /a-good\.txt/);
  t.regex(ls.stdout, /ok\.txt/);
  t.notRegex(ls.stdout, /evil\.txt/);
  t.is(await readFile(path.join(m.mnt, 'odd/evil/1/dir/ok.txt'), 'utf8'), 'ok');
  t.deepEqual(await readdir(path.join(m.mnt, 'odd/empty/1')), []);
});

test('pull --platform picks a manifest of an index; a miss lists the platforms with their variants', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const { env } = await cliEnv(t);
  const mk = async (tag: string, body: string): Promise<{ digest: string; size: number }> => {
    const b = Buffer.from(body);
    const m = { schemaVersion: 2, mediaType: MediaType.ociManifest, artifactType: 'application/x.t', config: EMPTY, layers: [{ mediaType: 'application/octet-stream', digest: digestOf(b), size: b.length, annotations: { 'org.opencontainers.image.title': 'arch.txt' } }] };
    const digest = await pushRaw(reg.host, 'multi', tag, [b], m);
    return { digest, size: Buffer.byteLength(JSON.stringify(m)) };
  };
  const amd = await mk('amd', 'amd64');
  const arm = await mk('arm', 'arm64v8');
  await pushRaw(reg.host, 'multi', 'idx', [], {
    schemaVersion: 2,
    mediaType: MediaType.ociIndex,
    manifests: [
      { mediaType: MediaType.ociManifest, ...amd, platform: { os: 'linux', architecture: 'amd64' } },
      { mediaType: MediaType.ociManifest, ...arm, platform: { os: 'linux', architecture: 'arm64', variant: 'v8' } },
    ],
  }, MediaType.ociIndex);
  const out = await tempDir(t);
  const noPlat = await runCli(['pull', `${reg.host}/multi:idx`, '-o', out], { env });
  t.not(noPlat.code, 0);
  t.regex(noPlat.stderr, /linux\/amd64, linux\/arm64\/v8.*--platform/);
  const pull = await runCli(['pull', `${reg.host}/multi:idx`, '-o', out, '--platform', 'linux/arm64/v8'], { env });
  t.is(pull.code, 0, pull.stderr);
  t.is(await readFile(path.join(out, 'arch.txt'), 'utf8'), 'arm64v8');
  t.regex(pull.stdout, new RegExp(`Digest: ${arm.digest}`));
  const miss = await runCli(['pull', `${reg.host}/multi:idx`, '-o', out, '--platform', 'linux/arm/v7'], { env });
  t.is(miss.code, 4);
  t.regex(miss.stderr, /no manifest for linux\/arm\/v7; it has: linux\/amd64, linux\/arm64\/v8/);

  // --include-subject: a signature-like artifact whose subject is the amd64 manifest pulls both.
  const sig = Buffer.from('signature');
  await pushRaw(reg.host, 'multi', 'sig', [sig], {
    schemaVersion: 2,
    mediaType: MediaType.ociManifest,
    artifactType: 'application/x.sig',
    config: EMPTY,
    layers: [{ mediaType: 'application/octet-stream', digest: digestOf(sig), size: sig.length, annotations: { 'org.opencontainers.image.title': 'sig.txt' } }],
    subject: { mediaType: MediaType.ociManifest, ...amd },
  });
  const out2 = await tempDir(t);
  const only = await runCli(['pull', `${reg.host}/multi:sig`, '-o', out2], { env });
  t.is(only.code, 0, only.stderr);
  t.deepEqual(await readdir(out2), ['sig.txt']);
  const both = await runCli(['pull', `${reg.host}/multi:sig`, '-o', out2, '--include-subject', '--format', 'json'], { env });
  t.is(both.code, 0, both.stderr);
  t.deepEqual((await readdir(out2)).sort(), ['arch.txt', 'sig.txt']);
  t.is(await readFile(path.join(out2, 'arch.txt'), 'utf8'), 'amd64');
  t.deepEqual((JSON.parse(both.stdout) as { files: Array<{ path: string }> }).files.map((f) => path.basename(f.path)), ['sig.txt', 'arch.txt']);
});

import test, { type ExecutionContext } from 'ava';
import { execFile } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { gunzipSync } from 'node:zlib';
import { promisify } from 'node:util';
import type { Descriptor } from '../registry/descriptor.js';
import { digestHex, digestOf } from '../registry/digest.js';
import { RegfsError } from '../util/errors.js';
import { MediaType } from '../registry/media-types.js';
import { OciLayoutRepository } from '../registry/oci-layout.js';
import { REF_NAME_ANNOTATION } from '../registry/oci-layout-index.js';
import { OciLayoutStore, sanitizeRepositoryName } from '../registry/oci-layout-store.js';

const execFileP = promisify(execFile);
const here = path.dirname(fileURLToPath(import.meta.url));

// skopeo is a required test peer: scripts/ensure.sh installs it before the suite runs.
const skopeoTest = test;

async function tempDir(t: ExecutionContext): Promise<string> {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'regfs-oci-layout-'));
  t.teardown(() => fsp.rm(dir, { recursive: true, force: true }));
  return dir;
}

async function readAll(s: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of s) chunks.push(Buffer.from(c as Uint8Array));
  return Buffer.concat(chunks);
}

function blobDesc(data: Buffer, mediaType: string = MediaType.ociLayerTar, title?: string): Descriptor {
  const d: Descriptor = { mediaType, digest: digestOf(data), size: data.length };
  if (title) d.annotations = { 'org.opencontainers.image.title': title };
  return d;
}

interface Artifact {
  config: Buffer;
  layer: Buffer;
  configDesc: Descriptor;
  layerDesc: Descriptor;
  manifest: Buffer;
}

/** An image-like artifact: real image config (so any tool treats it as an image), one layer. */
function imageArtifact(layerText: string): Artifact {
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [] } }));
  const layer = Buffer.from(layerText);
  const configDesc = blobDesc(config, 'application/vnd.oci.image.config.v1+json');
  const layerDesc = blobDesc(layer, MediaType.ociLayerTar, 'hello.txt');
  const manifest = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MediaType.ociManifest, config: configDesc, layers: [layerDesc] }));
  return { config, layer, configDesc, layerDesc, manifest };
}

/** An OCI 1.1 artifact: empty config, artifactType, one layer, optionally a subject. */
function ociArtifact(layerText: string, artifactType = 'application/vnd.example.test', subject?: Descriptor): Artifact {
  const config = Buffer.from('{}');
  const layer = Buffer.from(layerText);
  const configDesc = blobDesc(config, MediaType.empty);
  const layerDesc = blobDesc(layer, 'text/plain', 'file.txt');
  const m: Record<string, unknown> = { schemaVersion: 2, mediaType: MediaType.ociManifest, artifactType, config: configDesc, layers: [layerDesc] };
  if (subject) m.subject = { mediaType: subject.mediaType, digest: subject.digest, size: subject.size };
  m.annotations = { 'org.example.note': layerText };
  return { config, layer, configDesc, layerDesc, manifest: Buffer.from(JSON.stringify(m)) };
}

async function pushArtifact(repo: OciLayoutRepository, a: Artifact, tags: string[]): Promise<Descriptor> {
  await repo.pushBlob(a.configDesc, () => Readable.from([a.config]));
  await repo.pushBlob(a.layerDesc, () => Readable.from([a.layer]));
  return repo.pushManifest(a.manifest, MediaType.ociManifest, tags);
}

async function listFilesRec(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await fsp.readdir(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...(await listFilesRec(p)));
    else out.push(p);
  }
  return out;
}

async function readIndexJson(dir: string): Promise<{ manifests: Array<{ digest: string; annotations?: Record<string, string> }> }> {
  return JSON.parse(await fsp.readFile(path.join(dir, 'index.json'), 'utf8')) as { manifests: Array<{ digest: string; annotations?: Record<string, string> }> };
}

test('push blobs and a manifest with tags, read everything back verified', async (t) => {
  const dir = path.join(await tempDir(t), 'layout');
  const repo = new OciLayoutRepository(dir, 'layout', { create: true });
  t.is(repo.display, `oci:${dir}`);
  const a = imageArtifact('hello world\n');
  t.is(await repo.pushBlob(a.configDesc, () => Readable.from([a.config])), 'pushed');
  t.is(await repo.pushBlob(a.layerDesc, () => Readable.from([a.layer])), 'pushed');
  t.is(await repo.pushBlob(a.layerDesc, () => Readable.from([a.layer])), 'exists');
  t.false(await repo.mountBlob(a.layerDesc, 'other'));
  const desc = await repo.pushManifest(a.manifest, MediaType.ociManifest, ['v1', 'latest']);
  t.deepEqual(desc, { mediaType: MediaType.ociManifest, digest: digestOf(a.manifest), size: a.manifest.length });

  // On-disk format is a real OCI layout.
  t.deepEqual(JSON.parse(await fsp.readFile(path.join(dir, 'oci-layout'), 'utf8')), { imageLayoutVersion: '1.0.0' });
  const idx = (await readIndexJson(dir)) as unknown as Record<string, unknown>;
  t.is(idx.schemaVersion, 2);
  t.is(idx.mediaType, MediaType.ociIndex);
  t.deepEqual(await fsp.readFile(path.join(dir, 'blobs', 'sha256', digestHex(desc.digest))), a.manifest);

  for (const tag of ['v1', 'latest']) {
    const fetched = await repo.fetchManifest(tag);
    t.deepEqual(fetched.bytes, a.manifest);
    t.is(fetched.descriptor.digest, desc.digest);
    t.is(fetched.manifest.kind, 'manifest');
  }
  const byDigest = await repo.resolve(desc.digest);
  t.deepEqual(byDigest, desc);
  t.deepEqual((await repo.fetchManifest(byDigest)).bytes, a.manifest);
  t.deepEqual(await readAll(await repo.fetchBlob(a.layerDesc)), a.layer);
  t.deepEqual(await readAll(await repo.fetchBlob(a.configDesc)), a.config);
  t.deepEqual(await repo.listTags(), ['latest', 'v1']);
  t.true(await repo.blobExists(a.layerDesc));
  t.false(await repo.blobExists(blobDesc(Buffer.from('nope'))));

  // A second instance (fresh state) sees the same thing without `create`.
  const again = new OciLayoutRepository(dir, 'layout');
  t.deepEqual(await again.listTags(), ['latest', 'v1']);
});

test('range reads return the requested half-open slice', async (t) => {
  const dir = await tempDir(t);
  const repo = new OciLayoutRepository(dir, 'x', { create: true });
  const data = Buffer.from('0123456789abcdefghij');
  const d = blobDesc(data);
  await repo.pushBlob(d, () => Readable.from([data]));
  t.is((await readAll(await repo.fetchBlob(d, { start: 3, end: 7 }))).toString(), '3456');
  t.is((await readAll(await repo.fetchBlob(d, { start: 15 }))).toString(), 'fghij');
  t.is((await readAll(await repo.fetchBlob(d, { start: 5, end: 5 }))).length, 0);
  t.is((await readAll(await repo.fetchBlob(d, { start: 0, end: 100 }))).toString(), data.toString());
  await t.throwsAsync(repo.fetchBlob(d, { start: 5, end: 2 }), { instanceOf: RegfsError, message: /invalid byte range/ });
  const missing = blobDesc(Buffer.from('missing'));
  const err = await t.throwsAsync(repo.fetchBlob(missing));
  t.is((err as RegfsError).code, 'NOT_FOUND');
});

test('a blob tampered on disk fails a whole-blob fetch with DIGEST_MISMATCH', async (t) => {
  const dir = await tempDir(t);
  const repo = new OciLayoutRepository(dir, 'x', { create: true });
  const data = Buffer.from('original content');
  const d = blobDesc(data);
  await repo.pushBlob(d, () => Readable.from([data]));
  await fsp.writeFile(path.join(dir, 'blobs', 'sha256', digestHex(d.digest)), 'ORIGINAL CONTENT');
  const err = await t.throwsAsync(async () => readAll(await repo.fetchBlob(d)));
  t.is((err as RegfsError).code, 'DIGEST_MISMATCH');
  // A range read is not verified.
  t.is((await readAll(await repo.fetchBlob(d, { start: 0, end: 8 }))).toString(), 'ORIGINAL');
  // A tampered manifest fails fetchManifest too.
  const a = imageArtifact('x');
  const m = await pushArtifact(repo, a, ['t']);
  const mf = path.join(dir, 'blobs', 'sha256', digestHex(m.digest));
  const orig = await fsp.readFile(mf);
  await fsp.writeFile(mf, Buffer.from(orig.toString().replace('hello.txt', 'HELLO.txt')));
  const merr = await t.throwsAsync(repo.fetchManifest('t'));
  t.is((merr as RegfsError).code, 'DIGEST_MISMATCH');
});

test('a pushed stream that does not match its descriptor leaves nothing in blobs/', async (t) => {
  const dir = await tempDir(t);
  const repo = new OciLayoutRepository(dir, 'x', { create: true });
  const good = Buffer.from('the right bytes');
  const d = blobDesc(good);
  const wrongSameSize = Buffer.from('the wrong bytes');
  t.is(wrongSameSize.length, good.length);
  const e1 = await t.throwsAsync(repo.pushBlob(d, () => Readable.from([wrongSameSize])));
  t.is((e1 as RegfsError).code, 'DIGEST_MISMATCH');
  const e2 = await t.throwsAsync(repo.pushBlob(d, () => Readable.from([Buffer.from('the right bytes, and more')])));
  t.is((e2 as RegfsError).code, 'SIZE_MISMATCH');
  const e3 = await t.throwsAsync(repo.pushBlob(d, () => Readable.from([Buffer.from('short')])));
  t.is((e3 as RegfsError).code, 'SIZE_MISMATCH');
  const failing = new Readable({
    read() {
      this.destroy(new Error('source broke'));
    },
  });
  await t.throwsAsync(repo.pushBlob(d, () => failing));
  t.deepEqual(await listFilesRec(path.join(dir, 'blobs')), []);
  t.false(await repo.blobExists(d));
  t.is(await repo.pushBlob(d, () => Readable.from([good])), 'pushed');
  t.deepEqual(await listFilesRec(path.join(dir, 'blobs')), [path.join(dir, 'blobs', 'sha256', digestHex(d.digest))]);
});

test('deleteManifest removes its tags; deleteBlob removes a blob; both NOT_FOUND when absent', async (t) => {
  const dir = await tempDir(t);
  const repo = new OciLayoutRepository(dir, 'x', { create: true });
  const keep = await pushArtifact(repo, ociArtifact('keep'), ['keep']);
  const gone = await pushArtifact(repo, ociArtifact('gone'), ['gone1', 'gone2']);
  t.deepEqual(await repo.listTags(), ['gone1', 'gone2', 'keep']);
  await repo.deleteManifest(gone);
  t.deepEqual(await repo.listTags(), ['keep']);
  await t.throwsAsync(repo.resolve('gone1'), { instanceOf: RegfsError, message: `tag "gone1" not found in oci:${dir}` });
  t.false(await repo.blobExists(gone));
  t.is(((await t.throwsAsync(repo.deleteManifest(gone))) as RegfsError).code, 'NOT_FOUND');
  t.is(((await t.throwsAsync(repo.resolve(gone.digest))) as RegfsError).code, 'NOT_FOUND');
  t.is((await repo.resolve('keep')).digest, keep.digest);

  const a = ociArtifact('gone');
  t.true(await repo.blobExists(a.layerDesc));
  await repo.deleteBlob(a.layerDesc);
  t.false(await repo.blobExists(a.layerDesc));
  t.is(((await t.throwsAsync(repo.deleteBlob(a.layerDesc))) as RegfsError).code, 'NOT_FOUND');
});

test('tag, retag and untagged pushes keep index.json consistent', async (t) => {
  const dir = await tempDir(t);
  const repo = new OciLayoutRepository(dir, 'x', { create: true });
  const one = await pushArtifact(repo, ociArtifact('one'), ['v']);
  const two = await pushArtifact(repo, ociArtifact('two'), []);
  // Untagged push is recorded without a ref.name.
  let idx = await readIndexJson(dir);
  t.is(idx.manifests.length, 2);
  t.deepEqual(idx.manifests.find((m) => m.digest === two.digest)?.annotations, undefined);
  t.deepEqual(await repo.listTags(), ['v']);
  // Moving tag v to `two` replaces the entry; the untagged entry for `two` becomes redundant.
  await repo.tag(two, 'v');
  await repo.tag(two, 'w');
  idx = await readIndexJson(dir);
  t.deepEqual(
    idx.manifests.map((m) => [m.annotations?.[REF_NAME_ANNOTATION], m.digest]).sort(),
    [['v', two.digest], ['w', two.digest]],
  );
  t.is((await repo.resolve('v')).digest, two.digest);
  t.is((await repo.resolve('v')).artifactType, 'application/vnd.example.test');
  t.is(((await t.throwsAsync(repo.tag(two, 'bad tag'))) as RegfsError).code, 'INVALID_ARGUMENT');
  t.is(((await t.throwsAsync(repo.pushManifest(ociArtifact('z').manifest, MediaType.ociManifest, ['../x']))) as RegfsError).code, 'INVALID_ARGUMENT');
  t.is(((await t.throwsAsync(repo.pushManifest(Buffer.from('{"nope":1}'), MediaType.ociManifest, ['ok']))) as RegfsError).code, 'INVALID_MANIFEST');
  // `one` is still readable by digest though no longer in the index.
  t.is((await repo.resolve(one.digest)).mediaType, MediaType.ociManifest);
});

test('referrers finds manifests whose subject is the given manifest, filtered by artifactType', async (t) => {
  const dir = await tempDir(t);
  const repo = new OciLayoutRepository(dir, 'x', { create: true });
  const subject = await pushArtifact(repo, ociArtifact('subject'), ['v1']);
  const sig = await pushArtifact(repo, ociArtifact('sig', 'application/vnd.example.signature', subject), []);
  const sbom = await pushArtifact(repo, ociArtifact('sbom', 'application/vnd.example.sbom', subject), []);
  await pushArtifact(repo, ociArtifact('unrelated', 'application/vnd.example.sbom'), []);
  const all = await repo.referrers(subject);
  t.deepEqual(all.map((d) => d.digest).sort(), [sig.digest, sbom.digest].sort());
  const only = await repo.referrers(subject, 'application/vnd.example.sbom');
  t.is(only.length, 1);
  t.is(only[0]!.digest, sbom.digest);
  t.is(only[0]!.artifactType, 'application/vnd.example.sbom');
  t.deepEqual(only[0]!.annotations, { 'org.example.note': 'sbom' });
  t.deepEqual(await repo.listTags(), ['v1']);
});

test('a directory that is not a layout is NOT_FOUND without create; reads never create it', async (t) => {
  const root = await tempDir(t);
  const dir = path.join(root, 'nope');
  const repo = new OciLayoutRepository(dir, 'nope');
  const err = await t.throwsAsync(repo.listTags());
  t.is((err as RegfsError).code, 'NOT_FOUND');
  t.is((err as RegfsError).message, `oci:${dir} is not an OCI image layout (no oci-layout file)`);
  t.is(((await t.throwsAsync(repo.pushManifest(ociArtifact('a').manifest, MediaType.ociManifest, ['a']))) as RegfsError).code, 'NOT_FOUND');
  const lazy = new OciLayoutRepository(dir, 'nope', { create: true });
  t.deepEqual(await lazy.listTags(), []);
  t.is(((await t.throwsAsync(lazy.resolve('v1'))) as RegfsError).message, `tag "v1" not found in oci:${dir}`);
  await t.throwsAsync(fsp.stat(dir));
  await fsp.mkdir(dir);
  await fsp.writeFile(path.join(dir, 'oci-layout'), 'not json');
  t.regex(((await t.throwsAsync(new OciLayoutRepository(dir, 'nope').listTags())) as RegfsError).message, /not an OCI image layout/);
});

test('20 concurrent pushManifest calls with distinct tags all land in index.json', async (t) => {
  const dir = await tempDir(t);
  const repo = new OciLayoutRepository(dir, 'x', { create: true });
  const tags = Array.from({ length: 20 }, (_, i) => `t${i}`);
  // Separate instances too, to exercise the module-level per-directory queue.
  const descs = await Promise.all(
    tags.map((tag, i) => pushArtifact(i % 2 ? repo : new OciLayoutRepository(dir, 'x', { create: true }), ociArtifact(`content ${tag}`), [tag])),
  );
  t.deepEqual(await repo.listTags(), [...tags].sort());
  for (const [i, tag] of tags.entries()) t.is((await repo.resolve(tag)).digest, descs[i]!.digest);
  t.is((await readIndexJson(dir)).manifests.length, 20);
  const leftovers = (await fsp.readdir(dir)).filter((n) => n.startsWith('.') || n.endsWith('.lock'));
  t.deepEqual(leftovers, []);
});

test('writers in separate processes serialize through index.json.lock; a stale lock is broken', async (t) => {
  const dir = await tempDir(t);
  const repo = new OciLayoutRepository(dir, 'x', { create: true });
  await pushArtifact(repo, ociArtifact('seed'), ['seed']);
  // A lock left by a crashed writer long ago is taken over.
  const lock = path.join(dir, 'index.json.lock');
  await fsp.writeFile(lock, '999999\n');
  const old = new Date(Date.now() - 60_000);
  await fsp.utimes(lock, old, old);
  await pushArtifact(repo, ociArtifact('after-stale'), ['after-stale']);

  const mod = path.join(here, '..', 'registry', 'oci-layout.js');
  const script = `
    import { OciLayoutRepository } from ${JSON.stringify(mod)};
    const [dir, prefix] = process.argv.slice(1);
    const repo = new OciLayoutRepository(dir, 'x');
    const m = (i) => Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: { mediaType: 'application/vnd.oci.empty.v1+json', digest: 'sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a', size: 2 },
      layers: [], annotations: { n: prefix + i } }));
    await Promise.all(Array.from({ length: 10 }, (_, i) => repo.pushManifest(m(i), 'application/vnd.oci.image.manifest.v1+json', [prefix + i])));
  `;
  await Promise.all(['p', 'q', 'r'].map((prefix) => execFileP(process.execPath, ['--input-type=module', '-e', script, dir, prefix])));
  const tags = await repo.listTags();
  t.is(tags.length, 32);
  for (const p of ['p', 'q', 'r']) for (let i = 0; i < 10; i++) t.true(tags.includes(`${p}${i}`));
});

test('store: nested repositories, name validation, create on push only', async (t) => {
  const root = await tempDir(t);
  const store = new OciLayoutStore(root);
  t.is(store.display, `oci:${root}`);
  t.deepEqual(await store.listRepositories(), []);
  for (const bad of ['../x', 'a/../../x', '/abs', 'UPPER', 'a//b', '.', '']) {
    t.is(((t.throws(() => store.repository(bad))) as RegfsError).code, 'INVALID_ARGUMENT', bad);
  }
  const absent = store.repository('samples/absent');
  t.deepEqual(await absent.listTags(), []);
  await t.throwsAsync(fsp.stat(path.join(root, 'samples')));

  await pushArtifact(store.repository('samples/artifact'), ociArtifact('a'), ['v1']);
  await pushArtifact(store.repository('samples/artifact/nested'), ociArtifact('b'), ['v1']);
  await pushArtifact(store.repository('top'), ociArtifact('c'), ['v1']);
  // Noise the walk must ignore: a symlink to a layout, a non-repository-named dir, a blobs dir.
  await fsp.symlink(path.join(root, 'top'), path.join(root, 'link'));
  await fsp.mkdir(path.join(root, 'Not-Valid'), { recursive: true });
  await fsp.writeFile(path.join(root, 'Not-Valid', 'oci-layout'), '{"imageLayoutVersion":"1.0.0"}');
  await fsp.mkdir(path.join(root, 'top', 'blobs', 'inner'), { recursive: true });
  await fsp.writeFile(path.join(root, 'top', 'blobs', 'inner', 'oci-layout'), '{"imageLayoutVersion":"1.0.0"}');
  t.deepEqual(await store.listRepositories(), ['samples/artifact', 'samples/artifact/nested', 'top']);
  const r = store.repository('samples/artifact');
  t.is(r.display, `oci:${path.join(root, 'samples', 'artifact')}`);
  t.deepEqual(await r.listTags(), ['v1']);
  await store.close();

  const missing = new OciLayoutStore(path.join(root, 'does-not-exist'));
  t.is(((await t.throwsAsync(missing.listRepositories())) as RegfsError).code, 'NOT_FOUND');
  t.deepEqual(await new OciLayoutStore(path.join(root, 'does-not-exist'), { create: true }).listRepositories(), []);
});

test('store: a root that is itself a layout is one repository named after its basename', async (t) => {
  const parent = await tempDir(t);
  const root = path.join(parent, 'My Layout_v2');
  await pushArtifact(new OciLayoutRepository(root, 'x', { create: true }), ociArtifact('single'), ['v1']);
  const store = new OciLayoutStore(root);
  t.deepEqual(await store.listRepositories(), ['my-layout_v2']);
  t.deepEqual(await store.repository('my-layout_v2').listTags(), ['v1']);
  t.is(((t.throws(() => store.repository('other'))) as RegfsError).code, 'NOT_FOUND');
  t.is(sanitizeRepositoryName('Foo..Bar--baz__'), 'foo-bar--baz');
  t.is(sanitizeRepositoryName('...'), 'layout');
});

skopeoTest('interop: skopeo copies a regfs-written layout and regfs reads the copy byte for byte', async (t) => {
  const root = await tempDir(t);
  const a = path.join(root, 'A');
  const b = path.join(root, 'B');
  const repo = new OciLayoutRepository(a, 'a', { create: true });
  // An OCI 1.1 artifact (empty config + artifactType) — skopeo 1.9 copies it as-is.
  const art = ociArtifact('artifact payload\n');
  const desc = await pushArtifact(repo, art, ['v1']);
  await execFileP('skopeo', ['--insecure-policy', 'copy', '--all', `oci:${a}:v1`, `oci:${b}:v1`]);
  const copy = new OciLayoutRepository(b, 'b');
  t.deepEqual(await copy.listTags(), ['v1']);
  const fetched = await copy.fetchManifest('v1');
  t.is(fetched.descriptor.digest, desc.digest);
  t.deepEqual(fetched.bytes, art.manifest);
  t.is(fetched.manifest.artifactType, 'application/vnd.example.test');
  t.deepEqual(await readAll(await copy.fetchBlob(art.layerDesc)), art.layer);
  t.deepEqual(await readAll(await copy.fetchBlob(art.configDesc)), art.config);

  // An image-like manifest too, into the same skopeo-written layout under a second tag.
  const img = imageArtifact('image layer\n');
  const imgDesc = await pushArtifact(repo, img, ['img']);
  // Without these flags skopeo gzips the uncompressed image layer and rewrites the manifest (new digest).
  await execFileP('skopeo', ['--insecure-policy', 'copy', '--all', '--preserve-digests', '--dest-oci-accept-uncompressed-layers', `oci:${a}:img`, `oci:${b}:img`]);
  t.deepEqual(await copy.listTags(), ['img', 'v1']);
  t.deepEqual((await copy.fetchManifest('img')).bytes, img.manifest);
  t.is((await copy.resolve('img')).digest, imgDesc.digest);

  // regfs writes into the skopeo-written layout; skopeo reads it back.
  const writer = new OciLayoutRepository(b, 'b');
  await writer.tag(imgDesc, 'retagged');
  const { stdout } = await execFileP('skopeo', ['--insecure-policy', 'inspect', '--raw', `oci:${b}:retagged`]);
  t.deepEqual(Buffer.from(stdout), img.manifest);
});

skopeoTest('interop: read a layout skopeo wrote from its dir: transport', async (t) => {
  const root = await tempDir(t);
  const src = path.join(root, 'src');
  const dst = path.join(root, 'dst');
  const img = imageArtifact('made for skopeo\n');
  await fsp.mkdir(src);
  await fsp.writeFile(path.join(src, 'version'), 'Directory Transport Version: 1.1\n');
  await fsp.writeFile(path.join(src, 'manifest.json'), img.manifest);
  await fsp.writeFile(path.join(src, digestHex(img.configDesc.digest)), img.config);
  await fsp.writeFile(path.join(src, digestHex(img.layerDesc.digest)), img.layer);
  await execFileP('skopeo', ['--insecure-policy', 'copy', `dir:${src}`, `oci:${dst}:from-skopeo`]);
  const repo = new OciLayoutRepository(dst, 'dst');
  t.deepEqual(await repo.listTags(), ['from-skopeo']);
  const fetched = await repo.fetchManifest('from-skopeo');
  t.is(fetched.manifest.kind, 'manifest');
  if (fetched.manifest.kind !== 'manifest') return;
  t.is(fetched.manifest.layers.length, 1);
  // skopeo gzips an uncompressed layer on its way into an oci: destination.
  const layer = fetched.manifest.layers[0]!;
  t.is(layer.mediaType, MediaType.ociLayerTarGzip);
  t.deepEqual(gunzipSync(await readAll(await repo.fetchBlob(layer))), img.layer);
  t.deepEqual((await readAll(await repo.fetchBlob(layer, { start: 0, end: 2 }))).toString('hex'), '1f8b');
  t.deepEqual(await readAll(await repo.fetchBlob(fetched.manifest.config)), img.config);
  t.deepEqual((await repo.resolve(fetched.descriptor.digest)).digest, fetched.descriptor.digest);
  const store = new OciLayoutStore(root);
  t.deepEqual(await store.listRepositories(), ['dst']);
});

test('pushStream hashes while it writes: the blob lands under its digest; a source of the wrong length leaves nothing', async (t) => {
  const dir = await tempDir(t);
  const repo = new OciLayoutRepository(dir, 'x', { create: true });
  const data = Buffer.alloc(3 * 1024 * 1024 + 7, 9);
  const e = await t.throwsAsync(repo.pushStream(Readable.from([data]), data.length - 1));
  t.is((e as RegfsError).code, 'SIZE_MISMATCH');
  const short = await t.throwsAsync(repo.pushStream(Readable.from([data]), data.length + 1));
  t.is((short as RegfsError).code, 'SIZE_MISMATCH');
  t.deepEqual(await listFilesRec(path.join(dir, 'blobs')), [], 'no temp file or blob left behind');
  const r = await repo.pushStream(Readable.from([data.subarray(0, 1000), data.subarray(1000)]), data.length);
  t.deepEqual(r, { digest: digestOf(data), size: data.length });
  t.true((await readAll(await repo.fetchBlob(blobDesc(data)))).equals(data));
  t.deepEqual(await listFilesRec(path.join(dir, 'blobs')), [path.join(dir, 'blobs', 'sha256', digestHex(r.digest))]);
});

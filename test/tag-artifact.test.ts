/** Unit tests of staging/tag-artifact.ts: the manifest a tag folder is pushed as, and which manifests round-trip. */
import test from 'ava';
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { digestOf } from '../registry/digest.js';
import { parseManifest } from '../registry/manifest.js';
import { Annotation, MediaType } from '../registry/media-types.js';
import { packArtifact } from '../registry/pack.js';
import { scanTagDir, TAG_MARKER } from '../staging/layout.js';
import { fileLayer, prepareEntry, rebuildable, tagManifest, tagManifestDigest, titledLayers } from '../staging/tag-artifact.js';

test('a tag folder is pushed as the ORAS artifact of its entries: same digest as `regfs push` of the same names', async (t) => {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'regfs-tag-artifact-'));
  t.teardown(() => fsp.rm(dir, { recursive: true, force: true }));
  await fsp.writeFile(path.join(dir, 'a.txt'), 'a\n');
  await fsp.mkdir(path.join(dir, 'sub'));
  await fsp.writeFile(path.join(dir, 'sub/b.txt'), 'b\n');
  const entries = await scanTagDir(dir);
  const packed = await packArtifact({ files: entries.map((e) => ({ path: e.name })), cwd: dir });
  t.is(await tagManifestDigest(dir, entries), digestOf(packed.manifest));

  const layers = await Promise.all(entries.map(async (e) => (await prepareEntry(dir, e)).desc));
  t.deepEqual(layers[0], fileLayer('a.txt', layers[0]!.digest, 2));
  const m = parseManifest(tagManifest(layers), MediaType.ociManifest);
  t.is(m.kind, 'manifest');
  if (m.kind !== 'manifest') return;
  t.is(m.artifactType, MediaType.unknownArtifact);
  t.is(layers[1]!.mediaType, MediaType.ociLayerTarGzip);
  t.is(layers[1]!.annotations?.[Annotation.unpack], 'true');
  t.deepEqual(titledLayers(m)!.map((l) => [l.title, l.dir]), [['a.txt', false], ['sub', true]]);

  const verdict = rebuildable(m, () => undefined);
  t.deepEqual(verdict.ok ? [verdict.lossy, verdict.layers.map((l) => l.title)] : verdict.why, [false, ['a.txt', 'sub']]);
  const hidden = rebuildable(m, () => 'hiding layer x: collides');
  t.deepEqual(hidden, { ok: false, why: 'hiding layer x: collides' });
  const typed = parseManifest(Buffer.from(JSON.stringify({ ...JSON.parse(tagManifest(layers).toString()), artifactType: 'application/x-other' })), MediaType.ociManifest);
  const lossy = rebuildable(typed, () => undefined);
  t.true(lossy.ok && lossy.lossy);
});

test('staging\'s tag marker below the tag level is never published; other hidden files inside a folder are', async (t) => {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'regfs-tag-artifact-'));
  t.teardown(() => fsp.rm(dir, { recursive: true, force: true }));
  await fsp.writeFile(path.join(dir, 'a.txt'), 'a\n');
  await fsp.mkdir(path.join(dir, 'sub/img'), { recursive: true });
  await fsp.writeFile(path.join(dir, 'sub/img/b.txt'), 'b\n');
  const entries = await scanTagDir(dir);
  const clean = await tagManifestDigest(dir, entries);
  // A new entry changes its folder's mtime, which the tar records: put the folders' mtimes back, so only
  // the entries themselves can change the digest.
  const folders = [path.join(dir, 'sub'), path.join(dir, 'sub/img')];
  const times = await Promise.all(folders.map((f) => fsp.stat(f)));
  const restore = () => Promise.all(folders.map((f, i) => fsp.utimes(f, times[i]!.atime, times[i]!.mtime)));
  await fsp.writeFile(path.join(dir, 'sub/img', TAG_MARKER), '');
  await fsp.writeFile(path.join(dir, 'sub', TAG_MARKER), '');
  await restore();
  t.is(await tagManifestDigest(dir, entries), clean, 'the markers change nothing');
  await fsp.writeFile(path.join(dir, 'sub/img/.keep'), '');
  await restore();
  t.not(await tagManifestDigest(dir, entries), clean, 'a hidden file of the user inside a folder is published (as oras push does)');
});

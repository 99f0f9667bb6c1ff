import test from 'ava';
import { parseManifest } from '../registry/manifest.js';
import { RegfsError } from '../util/errors.js';
import { MediaType, EMPTY_CONFIG } from '../registry/media-types.js';
import { digestOf, Verifier } from '../registry/digest.js';

const layer = { mediaType: MediaType.ociLayerTar, digest: digestOf('x'), size: 1 };
const cfg = { mediaType: EMPTY_CONFIG.mediaType, digest: EMPTY_CONFIG.digest, size: 2 };
const enc = (o: unknown): Buffer => Buffer.from(JSON.stringify(o));

test('parses an OCI artifact manifest and an index', (t) => {
  const m = parseManifest(enc({ schemaVersion: 2, mediaType: MediaType.ociManifest, artifactType: 'application/x.t', config: cfg, layers: [layer] }), MediaType.ociManifest);
  t.is(m.kind, 'manifest');
  t.is(m.artifactType, 'application/x.t');
  const i = parseManifest(enc({ schemaVersion: 2, mediaType: MediaType.ociIndex, manifests: [{ ...layer, mediaType: MediaType.ociManifest }] }));
  t.is(i.kind, 'index');
});

test('rejects ambiguous and contradictory manifests (CVE-2021-41190 class)', (t) => {
  const both = enc({ schemaVersion: 2, config: cfg, layers: [layer], manifests: [] });
  t.regex(t.throws(() => parseManifest(both), { instanceOf: RegfsError })!.message, /both "layers" and "manifests"/);
  const m = enc({ schemaVersion: 2, mediaType: MediaType.ociManifest, config: cfg, layers: [] });
  t.regex(t.throws(() => parseManifest(m, MediaType.ociIndex))!.message, /contradicts Content-Type/);
  const idx = enc({ schemaVersion: 2, mediaType: MediaType.ociManifest, manifests: [] });
  t.throws(() => parseManifest(idx));
});

test('rejects bad descriptors: sizes, digests, media types', (t) => {
  for (const l of [
    { ...layer, size: -1 },
    { ...layer, size: 1.5 },
    { ...layer, size: 2 ** 60 },
    { ...layer, size: '1' },
    { ...layer, digest: 'sha256:../../x' },
    { ...layer, digest: 'sha256:' + 'A'.repeat(64) },
    { ...layer, digest: 'foo:' + 'a'.repeat(64) },
    { ...layer, mediaType: 'nope' },
    { ...layer, annotations: { a: 1 } },
  ]) {
    const err = t.throws(() => parseManifest(enc({ schemaVersion: 2, mediaType: MediaType.ociManifest, config: cfg, layers: [l] })), { instanceOf: RegfsError });
    t.true(err!.code === 'INVALID_MANIFEST' || err!.code === 'INVALID_DIGEST', err!.message);
  }
  t.throws(() => parseManifest(Buffer.from('not json')));
  t.throws(() => parseManifest(enc({ schemaVersion: 1 })));
});

test('Verifier names both digests on mismatch and catches long bodies early', (t) => {
  const v = new Verifier(digestOf('hello'), 5);
  v.update(Buffer.from('hellx'));
  const err = t.throws(() => v.verify(), { instanceOf: RegfsError });
  t.is(err!.code, 'DIGEST_MISMATCH');
  t.true(err!.message.includes(digestOf('hello')) && err!.message.includes(digestOf('hellx')));
  const long = new Verifier(digestOf('hi'), 2);
  t.throws(() => long.update(Buffer.from('hi!')), { message: /longer than/ });
});

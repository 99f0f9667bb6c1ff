import test from 'ava';
import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { startRegistry } from '../lab/registry.js';
import { startFaultProxy } from '../lab/fault-proxy.js';
import { RemoteRegistry } from '../registry/remote.js';
import { digestOf } from '../registry/digest.js';
import { EMPTY_CONFIG, MediaType } from '../registry/media-types.js';
import type { Descriptor } from '../registry/descriptor.js';
import { RegfsError } from '../util/errors.js';

async function readAll(s: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of s) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

function blob(data: Buffer, mediaType: string = MediaType.ociLayerTar): Descriptor {
  return { mediaType, digest: digestOf(data), size: data.length };
}

const config = { mediaType: EMPTY_CONFIG.mediaType, digest: EMPTY_CONFIG.digest, size: 2 } as Descriptor;
const manifestFor = (layers: Descriptor[], extra: Record<string, unknown> = {}): Buffer =>
  Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MediaType.ociManifest, artifactType: 'application/x.test', config, layers, ...extra }));

test('chunked upload above the threshold: PATCHes in order, then PUT; the blob reads back verified', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const proxy = await startFaultProxy(t, reg.url);
  const client = new RemoteRegistry(proxy.host, { chunkThreshold: 1024 * 1024, chunkSize: 256 * 1024 });
  t.teardown(() => client.close());
  const repo = client.repository('chunky');
  const data = randomBytes(1024 * 1024 + 12345);
  t.is(await repo.pushBlob(blob(data), () => Readable.from([data.subarray(0, 300_000), data.subarray(300_000)])), 'pushed');
  t.is(proxy.count('PATCH', /\/blobs\/uploads\//), 5, 'four full 256 KiB chunks and a tail');
  t.true((await readAll(await repo.fetchBlob(blob(data)))).equals(data));
  t.is(await repo.pushBlob(blob(data), () => Readable.from([data])), 'exists', 'HEAD skips a present blob');
  // Small blobs go up monolithically.
  const small = Buffer.from('small');
  proxy.reset();
  await repo.pushBlob(blob(small), () => Readable.from([small]));
  t.is(proxy.count('PATCH'), 0);
  t.is(proxy.count('PUT', /\/blobs\/uploads\//), 1);
});

test('keep-alive: pushes (HEAD, POST, PUT), pings and blob GETs to one registry reuse pooled connections', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const proxy = await startFaultProxy(t, reg.url);
  const client = new RemoteRegistry(proxy.host);
  t.teardown(() => client.close());
  const repo = client.repository('pooled');
  const blobs = Array.from({ length: 5 }, (_, i) => Buffer.from(`blob ${i}`));
  for (let round = 0; round < 4; round++) {
    for (const b of blobs) await repo.pushBlob(blob(b), () => Readable.from([b])); // HEAD, then POST + PUT the first time
    await client.ping();
    for (const b of blobs) t.true((await readAll(await repo.fetchBlob(blob(b)))).equals(b));
  }
  t.true(proxy.requests.length >= 50);
  // undici closes the socket after every HEAD; its Agent then dropped the whole origin pool, and a late
  // disconnect closed the next pool too: every request paid a new connection (a TLS handshake on https).
  const connections = new Set(proxy.requests.map((r) => r.connection)).size;
  t.true(connections <= 4, `${connections} TCP connections for ${proxy.requests.length} requests`);
});

test('pushStream uploads bytes of unknown digest in one PATCH and returns the digest the registry committed', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const proxy = await startFaultProxy(t, reg.url);
  const client = new RemoteRegistry(proxy.host);
  t.teardown(() => client.close());
  const repo = client.repository('streamed');
  const data = randomBytes(5 * 1024 * 1024 + 3);
  const r = await repo.pushStream(Readable.from([data.subarray(0, 100_000), data.subarray(100_000)]), data.length);
  t.deepEqual(r, { digest: digestOf(data), size: data.length });
  t.is(proxy.count('PATCH', /\/blobs\/uploads\//), 1);
  t.is(proxy.count('PUT', /\/blobs\/uploads\/.*digest=sha256/), 1);
  t.true((await readAll(await repo.fetchBlob(blob(data)))).equals(data));
  // A source that runs long (a file that grew) fails and commits nothing under any digest.
  const grown = randomBytes(4096);
  const e = await t.throwsAsync(repo.pushStream(Readable.from([grown]), 4000));
  t.is((e as RegfsError).code, 'SIZE_MISMATCH');
  t.false(await repo.blobExists(blob(grown)));
  t.false(await repo.blobExists(blob(grown.subarray(0, 4000))));
  const shrunk = await t.throwsAsync(repo.pushStream(Readable.from([grown]), 5000));
  t.is((shrunk as RegfsError).code, 'SIZE_MISMATCH');
  t.false(await repo.blobExists(blob(grown)));
});

test('an upload whose bytes do not match the descriptor is refused and nothing is stored', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const client = new RemoteRegistry(reg.host);
  t.teardown(() => client.close());
  const repo = client.repository('liar');
  const claimed = blob(Buffer.from('the truth'));
  await t.throwsAsync(repo.pushBlob(claimed, () => Readable.from([Buffer.from('a lie!!!!')])));
  t.false(await repo.blobExists(claimed));
});

test('cross-repository mount, manifest and blob delete, referrers through the tag-schema fallback', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const client = new RemoteRegistry(reg.host);
  t.teardown(() => client.close());
  const a = client.repository('src/a');
  const b = client.repository('dst/b');
  const data = Buffer.from('shared layer');
  const d = blob(data);
  await a.pushBlob(d, () => Readable.from([data]));
  t.true(await b.mountBlob(d, 'src/a'));
  t.true(await b.blobExists(d));
  t.false(await b.mountBlob(blob(Buffer.from('not there')), 'src/a'), 'an unknown blob is not mounted');

  await a.pushBlob(config, () => Readable.from([Buffer.from('{}')]));
  const subject = await a.pushManifest(manifestFor([d]), MediaType.ociManifest, ['v1']);
  const sig = Buffer.from('signature');
  await a.pushBlob(blob(sig), () => Readable.from([sig]));
  const referrer = await a.pushManifest(manifestFor([blob(sig)], { artifactType: 'application/x.sig', subject }), MediaType.ociManifest, []);
  const refs = await a.referrers(subject);
  t.deepEqual(refs.map((r) => r.digest), [referrer.digest]);
  t.is(refs[0]!.artifactType, 'application/x.sig');
  t.deepEqual(await a.referrers(subject, 'application/x.other'), []);
  t.deepEqual((await a.listTags()).sort(), ['sha256-' + subject.digest.slice(7), 'v1'].sort());

  await a.deleteManifest(subject);
  await t.throwsAsync(a.resolve('v1'), { instanceOf: RegfsError, code: 'NOT_FOUND' } as never);
  await b.deleteBlob(d);
  t.false(await b.blobExists(d));
  t.true(await a.blobExists(d), 'deleting a link in one repository leaves the other');
});

test('a blob read resumes after a cut and survives a server that ignores Range', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const proxy = await startFaultProxy(t, reg.url);
  const client = new RemoteRegistry(proxy.host);
  t.teardown(() => client.close());
  const repo = client.repository('cut');
  const data = randomBytes(3 * 1024 * 1024);
  await repo.pushBlob(blob(data), () => Readable.from([data]));
  proxy.rules.push({ method: 'GET', path: /\/blobs\/sha256:/, cutAfterBytes: 1_000_000, times: 1 });
  proxy.rules.push({ method: 'GET', path: /\/blobs\/sha256:/, ignoreRange: true });
  proxy.reset();
  t.true((await readAll(await repo.fetchBlob(blob(data)))).equals(data), 'resumed bytes are exact, nothing doubled');
  t.is(proxy.count('GET', /\/blobs\//), 2);
  const part = await readAll(await repo.fetchBlob(blob(data), { start: 1000, end: 5000 }));
  t.true(part.equals(data.subarray(1000, 5000)), 'a 200 answer to a Range request is trimmed to the range');
});

test('a registry that never answers times out within the deadline; connection errors are retried', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const proxy = await startFaultProxy(t, reg.url);
  const client = new RemoteRegistry(proxy.host, { timeoutMs: 1000, retries: 1, baseDelayMs: 50 });
  t.teardown(() => client.close());
  const repo = client.repository('slow');
  proxy.rules.push({ path: /tags\/list/, stall: true });
  const started = Date.now();
  const err = await t.throwsAsync(repo.listTags(), { instanceOf: RegfsError });
  t.is(err!.code, 'TIMEOUT');
  t.true(Date.now() - started < 6000, 'bounded by deadline x attempts');
  proxy.rules.length = 0;
  proxy.rules.push({ path: /tags\/list/, reset: true, times: 1 });
  proxy.rules.push({ path: /tags\/list/, status: 500, times: 1 });
  const data = Buffer.from('x');
  await repo.pushBlob(config, () => Readable.from([Buffer.from('{}')]));
  await repo.pushBlob(blob(data), () => Readable.from([data]));
  await repo.pushManifest(manifestFor([blob(data)]), MediaType.ociManifest, ['t']);
  const retrying = new RemoteRegistry(proxy.host, { retries: 3, baseDelayMs: 20 });
  t.teardown(() => retrying.close());
  t.deepEqual(await retrying.repository('slow').listTags(), ['t']);
});

import test from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { startRegistry } from '../lab/registry.js';
import { startFaultProxy, type FaultProxy } from '../lab/fault-proxy.js';
import { cliEnv, runCli, tempDir } from '../lab/cli.js';
import { RemoteRegistry } from '../registry/remote.js';
import type { Digest } from '../registry/digest.js';

const STORAGE_PATH = /^\/docker\/registry\/v2\/blobs\//;

async function collect(s: NodeJS.ReadableStream): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of s) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

test('a 403 from the storage host on a redirected blob GET (expired signed URL) goes back to the registry once; Range kept, no Authorization there', async (t) => {
  let storage: FaultProxy | undefined;
  const reg = await startRegistry(t, {
    flavour: 'token',
    redirect: true,
    blobHostFront: async (nginx) => {
      storage = await startFaultProxy(t, nginx.replace(/\/$/, ''));
      return `${storage.url}/`;
    },
  });
  const { env } = await cliEnv(t);
  t.is((await runCli(['login', reg.host, '-u', reg.username!, '--password-stdin'], { env, input: reg.password! })).code, 0);
  const src = await tempDir(t);
  const body = randomBytes(3 * 1024 * 1024 + 5);
  await writeFile(path.join(src, 'big.bin'), body);
  t.is((await runCli(['push', `${reg.host}/team/app:v1`, 'big.bin'], { cwd: src, env })).code, 0);
  const digest = `sha256:${createHash('sha256').update(body).digest('hex')}` as Digest;

  // The CLI pull: the first storage GET is refused, the registry hands out a new redirect, the pull succeeds.
  storage!.rules.push({ method: 'GET', path: STORAGE_PATH, times: 1, status: 403, errorCode: 'AccessDenied' });
  storage!.reset();
  const out = await tempDir(t);
  const pull = await runCli(['pull', `${reg.host}/team/app:v1`, '-o', out], { env });
  t.is(pull.code, 0, pull.stderr);
  t.true((await readFile(path.join(out, 'big.bin'))).equals(body));
  const gets = storage!.requests.filter((r) => r.method === 'GET' && STORAGE_PATH.test(r.path));
  t.deepEqual(gets.map((r) => r.status), [403, 200]);

  // A range read: the retry carries the same Range; the storage host never sees Authorization.
  const client = new RemoteRegistry(reg.host, { credentials: async () => ({ username: reg.username!, password: reg.password! }) });
  t.teardown(() => client.close());
  storage!.rules.push({ method: 'GET', path: STORAGE_PATH, times: 1, status: 403, errorCode: 'AccessDenied' });
  storage!.reset();
  const part = await collect(await client.repository('team/app').fetchBlob({ mediaType: 'application/octet-stream', digest, size: body.length }, { start: 1000, end: 2000 }));
  t.true(part.equals(body.subarray(1000, 2000)));
  const ranged = storage!.requests.filter((r) => r.method === 'GET' && STORAGE_PATH.test(r.path));
  t.deepEqual(ranged.map((r) => [r.status, r.headers.range]), [[403, 'bytes=1000-1999'], [206, 'bytes=1000-1999']]);
  t.true(storage!.requests.every((r) => r.headers.authorization === undefined));

  // Refused twice in a row: one retry only, then a clear error.
  storage!.rules.push({ method: 'GET', path: STORAGE_PATH, times: 2, status: 403, errorCode: 'AccessDenied' });
  storage!.reset();
  const err = await t.throwsAsync(client.repository('team/app').fetchBlob({ mediaType: 'application/octet-stream', digest, size: body.length }, { start: 0, end: 10 }));
  t.regex(err!.message, /access denied/);
  t.is(storage!.requests.filter((r) => STORAGE_PATH.test(r.path)).length, 2);
});

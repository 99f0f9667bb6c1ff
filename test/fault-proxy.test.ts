import test, { type ExecutionContext } from 'ava';
import { execFile, execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import http from 'node:http';
import { Readable } from 'node:stream';
import { startHeaderRecorder } from '../lab/blob-server.js';
import { rateLimitEveryNth, refuseCatalog, startFaultProxy, type FaultProxy } from '../lab/fault-proxy.js';
import { startRegistry, withTimeout, type StartedRegistry } from '../lab/registry.js';

const REPO = 'r';
const BLOB_SIZE = 1024 * 1024 + 333;
const blob = randomBytes(BLOB_SIZE);
const blobDigest = sha256(blob);
const blobPath = `/v2/${REPO}/blobs/${blobDigest}`;

let reg: StartedRegistry;

function sha256(buf: Buffer): string {
  return 'sha256:' + createHash('sha256').update(buf).digest('hex');
}

/** Monolithic blob upload straight to the registry: POST then PUT <location>&digest=... */
async function pushBlob(base: string, repo: string, body: Buffer): Promise<string> {
  const digest = sha256(body);
  const post = await fetch(`${base}/v2/${repo}/blobs/uploads/`, { method: 'POST' });
  if (post.status !== 202) throw new Error(`POST upload: ${post.status} ${await post.text()}`);
  await post.arrayBuffer();
  const loc = new URL(post.headers.get('location')!, base);
  loc.searchParams.set('digest', digest);
  const put = await fetch(loc, {
    method: 'PUT',
    headers: { 'Content-Type': 'application/octet-stream', 'Content-Length': String(body.length) },
    body: new Uint8Array(body),
  });
  if (put.status !== 201) throw new Error(`PUT upload: ${put.status} ${await put.text()}`);
  await put.arrayBuffer();
  return digest;
}

interface RawResult {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
  /** complete is true when the body was received in full (per Content-Length / chunked framing). */
  complete: boolean;
  error?: Error;
}

/** One request with node's http client; resolves (never rejects) once the response ends or breaks. */
function raw(
  url: string,
  opts: { method?: string; headers?: http.OutgoingHttpHeaders; body?: Buffer; agent?: http.Agent | false } = {},
): Promise<RawResult> {
  return new Promise<RawResult>((resolve) => {
    const req = http.request(url, { method: opts.method ?? 'GET', headers: opts.headers, agent: opts.agent ?? false });
    let settled = false;
    req.on('response', (res) => {
      const chunks: Buffer[] = [];
      let error: Error | undefined;
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('error', (e) => (error ??= e));
      res.on('aborted', () => (error ??= new Error('aborted')));
      const finish = (): void => {
        if (settled) return;
        settled = true;
        const r: RawResult = { status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks), complete: res.complete && !error };
        if (error) r.error = error;
        resolve(r);
      };
      res.on('end', finish);
      res.on('close', finish);
    });
    req.on('error', (e) => {
      if (settled) return;
      settled = true;
      resolve({ status: 0, headers: {}, body: Buffer.alloc(0), complete: false, error: e });
    });
    req.end(opts.body);
  });
}

async function proxyFor(t: ExecutionContext): Promise<FaultProxy> {
  return startFaultProxy(t, reg.url);
}

test.before(async () => {
  reg = await startRegistry(undefined, { flavour: 'plain' });
  await pushBlob(reg.url, REPO, blob);
});

test.after.always(async () => {
  await reg?.stop();
});

// ---------------------------------------------------------------------------------------------
// throughput (serial: runs before the concurrent tests, so it has the machine to itself)

const THROUGHPUT_SIZE = 64 * 1024 * 1024;

function hasCurl(): boolean {
  try {
    execFileSync('curl', ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}
const curlAvailable = hasCurl();

/**
 * GET url from a separate process (curl if available: node's own http client tops out well below
 * the proxy on a small box) discarding the body; resolves with bytes and seconds.
 */
function childDownload(url: string): Promise<{ bytes: number; seconds: number }> {
  if (curlAvailable) {
    return new Promise((resolve, reject) => {
      execFile('curl', ['-s', '-o', '/dev/null', '-w', '%{http_code} %{size_download} %{time_total}', url], (err, stdout) => {
        if (err) return reject(err);
        const [status, bytes, seconds] = stdout.trim().split(' ').map(Number);
        if (status !== 200) return reject(new Error(`curl download status ${status}`));
        resolve({ bytes: bytes!, seconds: seconds! });
      });
    });
  }
  const script = `
    import http from 'node:http';
    const t0 = process.hrtime.bigint();
    http.get(process.argv[1], { agent: false }, (res) => {
      let n = 0;
      res.on('data', (c) => { n += c.length; });
      res.on('end', () => {
        const s = Number(process.hrtime.bigint() - t0) / 1e9;
        process.stdout.write(res.statusCode + ' ' + n + ' ' + s + '\\n');
      });
    }).on('error', (e) => { console.error(e); process.exit(1); });
  `;
  return new Promise((resolve, reject) => {
    execFile(process.execPath, ['--input-type=module', '-e', script, url], (err, stdout) => {
      if (err) return reject(err);
      const [status, bytes, seconds] = stdout.trim().split(' ').map(Number);
      if (status !== 200) return reject(new Error(`child download status ${status}`));
      resolve({ bytes: bytes!, seconds: seconds! });
    });
  });
}

/** Best (fastest) of `n` child downloads of url. */
async function bestDownload(url: string, n: number): Promise<{ bytes: number; seconds: number }> {
  let best: { bytes: number; seconds: number } | undefined;
  for (let i = 0; i < n; i++) {
    const r = await childDownload(url);
    if (!best || r.seconds < best.seconds) best = r;
  }
  return best!;
}

test.serial('a 64 MiB blob streams up and down through the proxy intact (rates logged, not asserted)', async (t) => {
  const proxy = await proxyFor(t);
  const unit = randomBytes(1024 * 1024);
  const n = THROUGHPUT_SIZE / unit.length;
  const h = createHash('sha256');
  for (let i = 0; i < n; i++) h.update(unit);
  const digest = 'sha256:' + h.digest('hex');

  // Upload through the proxy: POST, then one streamed monolithic PUT.
  const post = await raw(`${proxy.url}/v2/big/blobs/uploads/`, { method: 'POST', headers: { 'content-length': 0 } });
  t.is(post.status, 202);
  const loc = new URL(post.headers.location!);
  loc.searchParams.set('digest', digest);
  const upStart = process.hrtime.bigint();
  const put = await new Promise<number>((resolve, reject) => {
    const req = http.request(loc, { method: 'PUT', agent: false, headers: { 'content-length': THROUGHPUT_SIZE, 'content-type': 'application/octet-stream' } });
    req.on('response', (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
    });
    req.on('error', reject);
    Readable.from((function* () {
      for (let i = 0; i < n; i++) yield unit;
    })()).pipe(req);
  });
  const upSeconds = Number(process.hrtime.bigint() - upStart) / 1e9;
  t.is(put, 201);

  const path = `/v2/big/blobs/${digest}`;
  await childDownload(reg.url + path); // warm the page cache
  const direct = await bestDownload(reg.url + path, 2);
  proxy.reset();
  const viaProxy = await bestDownload(proxy.url + path, 3);
  t.is(direct.bytes, THROUGHPUT_SIZE);
  t.is(viaProxy.bytes, THROUGHPUT_SIZE);
  t.is(proxy.bytesOut(), 3 * THROUGHPUT_SIZE);
  const mbps = (bytes: number, s: number): number => bytes / 1e6 / s;
  const upRate = mbps(THROUGHPUT_SIZE, upSeconds);
  const directRate = mbps(direct.bytes, direct.seconds);
  const proxyRate = mbps(viaProxy.bytes, viaProxy.seconds);
  t.log(`upload via proxy (incl. registry digest verification): ${upRate.toFixed(0)} MB/s`);
  t.log(`client: ${curlAvailable ? 'curl' : 'node child process'}; best of 2 direct / 3 via proxy`);
  t.log(`download direct: ${directRate.toFixed(0)} MB/s (${direct.seconds.toFixed(2)} s)`);
  t.log(`download via proxy: ${proxyRate.toFixed(0)} MB/s (${viaProxy.seconds.toFixed(2)} s)`);
  // Rates are logged for information only: speed is checked by benchmarks, never asserted in tests.

  // Integrity of a big streamed body (backpressure path): hash it in-process once.
  const hh = createHash('sha256');
  await new Promise<void>((resolve, reject) => {
    http.get(proxy.url + path, { agent: false }, (res) => {
      res.on('data', (c: Buffer) => hh.update(c));
      res.on('end', resolve);
      res.on('error', reject);
    }).on('error', reject);
  });
  t.is('sha256:' + hh.digest('hex'), digest);
});

// ---------------------------------------------------------------------------------------------
// pass-through

test('pass-through GET/HEAD works, counts bytes and reuses keep-alive connections', async (t) => {
  const proxy = await proxyFor(t);
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  t.teardown(() => agent.destroy());

  const r1 = await raw(proxy.url + blobPath, { agent });
  t.is(r1.status, 200);
  t.true(r1.complete);
  t.true(r1.body.equals(blob));
  t.is(r1.headers['docker-content-digest'], blobDigest);
  t.is(r1.headers['content-length'], String(BLOB_SIZE));

  const reused = await new Promise<boolean>((resolve, reject) => {
    const req = http.request(proxy.url + blobPath, { method: 'HEAD', agent }, (res) => {
      res.resume();
      res.on('end', () => resolve(req.reusedSocket));
    });
    req.on('error', reject);
    req.end();
  });
  t.true(reused, 'second request should reuse the keep-alive socket');

  t.is(proxy.bytesOut(), BLOB_SIZE);
  t.is(proxy.count(), 2);
  t.is(proxy.count('get', /\/blobs\/sha256:/), 1);
  t.is(proxy.count('HEAD'), 1);
  t.like(proxy.requests[0], { method: 'GET', path: blobPath, status: 200, bytesOut: BLOB_SIZE });
  t.is(proxy.requests[0]!.rule, undefined);
  t.is(proxy.requests[0]!.headers.host, proxy.host);
  t.like(proxy.requests[1], { method: 'HEAD', status: 200, bytesOut: 0 });

  proxy.reset();
  t.is(proxy.requests.length, 0);
  t.is(proxy.bytesOut(), 0);

  const missing = await fetch(`${proxy.url}/v2/${REPO}/blobs/sha256:${'0'.repeat(64)}`);
  t.is(missing.status, 404);
  await missing.arrayBuffer();
});

test('chunked upload through the proxy (Locations point at the proxy)', async (t) => {
  const proxy = await proxyFor(t);
  const data = randomBytes(300_000);
  const digest = sha256(data);

  const post = await fetch(`${proxy.url}/v2/up/blobs/uploads/`, { method: 'POST' });
  t.is(post.status, 202);
  await post.arrayBuffer();
  let loc = post.headers.get('location')!;
  t.true(loc.startsWith(proxy.url + '/v2/up/blobs/uploads/'), loc);

  for (const [from, to] of [[0, 100_000], [100_000, 300_000]] as const) {
    const patch = await fetch(new URL(loc, proxy.url), {
      method: 'PATCH',
      headers: { 'Content-Type': 'application/octet-stream', 'Content-Range': `${from}-${to - 1}`, 'Content-Length': String(to - from) },
      body: new Uint8Array(data.subarray(from, to)),
    });
    t.is(patch.status, 202, await patch.text());
    t.is(patch.headers.get('range'), `0-${to - 1}`);
    loc = patch.headers.get('location')!;
    t.true(loc.startsWith(proxy.url + '/'), loc);
  }
  const done = new URL(loc, proxy.url);
  done.searchParams.set('digest', digest);
  const put = await fetch(done, { method: 'PUT', headers: { 'Content-Length': '0' } });
  t.is(put.status, 201, await put.text());
  t.true(put.headers.get('location')!.startsWith(proxy.url + '/'));

  const got = await fetch(`${proxy.url}/v2/up/blobs/${digest}`);
  t.is(got.status, 200);
  t.true(Buffer.from(await got.arrayBuffer()).equals(data));
  t.is(proxy.count('PATCH'), 2);
});

test('Location pointing at the upstream origin is rewritten to the proxy; other origins untouched', async (t) => {
  const proxy = await proxyFor(t);
  // Send the upstream's own Host through the proxy: distribution then answers with an upstream
  // absolute Location, which the proxy must rewrite.
  const r = await raw(`${proxy.url}/v2/rw/blobs/uploads/`, { method: 'POST', headers: { host: reg.host, 'content-length': 0 } });
  t.is(r.status, 202);
  t.true(r.headers.location!.startsWith(`${proxy.url}/v2/rw/blobs/uploads/`), r.headers.location);

  const other = await raw(`${proxy.url}/v2/rw/blobs/uploads/`, { method: 'POST', headers: { host: 'elsewhere.test:1234', 'content-length': 0 } });
  t.is(other.status, 202);
  t.true(other.headers.location!.startsWith('http://elsewhere.test:1234/v2/rw/blobs/uploads/'), other.headers.location);
});

// ---------------------------------------------------------------------------------------------
// injected answers

test('status 503 with Retry-After is seen by the client; times: 1 applies once', async (t) => {
  const proxy = await proxyFor(t);
  proxy.rules.push({ method: 'GET', path: /\/blobs\/sha256:/, status: 503, headers: { 'Retry-After': '2' }, times: 1 });

  const r1 = await fetch(proxy.url + blobPath);
  t.is(r1.status, 503);
  t.is(r1.headers.get('retry-after'), '2');
  t.is(r1.headers.get('content-type'), 'application/json');
  t.deepEqual(await r1.json(), { errors: [{ code: 'UNAVAILABLE', message: 'injected' }] });

  const r2 = await fetch(proxy.url + blobPath);
  t.is(r2.status, 200);
  t.true(Buffer.from(await r2.arrayBuffer()).equals(blob));
  const r3 = await fetch(proxy.url + blobPath, { method: 'HEAD' });
  t.is(r3.status, 200);

  t.deepEqual(proxy.requests.map((r) => [r.status, r.rule]), [[503, 0], [200, undefined], [200, undefined]]);
});

test('everyNth answers exactly every Nth matching request (429 + Retry-After); others pass; times counts applications', async (t) => {
  const proxy = await proxyFor(t);
  proxy.rules.push(rateLimitEveryNth(3, 1, { path: /^\/v2\/$/ }));
  const statuses: number[] = [];
  for (let i = 0; i < 10; i++) {
    const r = await fetch(`${proxy.url}/v2/`);
    statuses.push(r.status);
    if (r.status === 429) {
      t.is(r.headers.get('retry-after'), '1');
      t.deepEqual(await r.json(), { errors: [{ code: 'TOOMANYREQUESTS', message: 'injected' }] });
    } else await r.arrayBuffer();
  }
  t.deepEqual(statuses, [200, 200, 429, 200, 200, 429, 200, 200, 429, 200]);
  // A non-matching path is neither refused nor counted.
  t.is((await raw(proxy.url + blobPath, { method: 'HEAD' })).status, 200);
  t.is((await raw(`${proxy.url}/v2/`)).status, 200, '11th');
  t.is((await raw(`${proxy.url}/v2/`)).status, 429, '12th');

  // everyNth + times: the 2nd and 4th match are refused, the 6th is not (times used up); a later rule sees the rest.
  proxy.rules.splice(0, proxy.rules.length, { path: '/v2/', everyNth: 2, times: 2, status: 503 }, { path: '/v2/', status: 418 });
  const seen: number[] = [];
  for (let i = 0; i < 6; i++) seen.push((await raw(`${proxy.url}/v2/`)).status);
  t.deepEqual(seen, [418, 503, 418, 503, 418, 418]);
});

test('refuseCatalog: 404, 401 without a challenge, 401 with a Bearer challenge; other paths pass', async (t) => {
  const proxy = await proxyFor(t);
  const expect: Array<[Parameters<typeof refuseCatalog>[0], number, string, RegExp | undefined]> = [
    ['not-found', 404, 'NOT_FOUND', undefined],
    ['unauthorized', 401, 'UNAUTHORIZED', undefined],
    ['challenge', 401, 'UNAUTHORIZED', /^Bearer realm="http:\/\/127\.0\.0\.1:7\/token",service="svc",scope="registry:catalog:\*"$/],
  ];
  for (const [mode, status, code, challenge] of expect) {
    proxy.rules.splice(0, proxy.rules.length, refuseCatalog(mode, { realm: 'http://127.0.0.1:7/token', service: 'svc' }));
    for (const p of ['/v2/_catalog', '/v2/_catalog?n=100', '/v2/_catalog?n=10&last=a']) {
      const r = await fetch(proxy.url + p);
      t.is(r.status, status, `${mode} ${p}`);
      const h = r.headers.get('www-authenticate');
      if (challenge) t.regex(h ?? '', challenge);
      else t.is(h, null, `${mode}: no challenge`);
      t.deepEqual(await r.json(), { errors: [{ code, message: 'injected' }] });
    }
    // Everything else reaches the registry.
    t.is((await raw(`${proxy.url}/v2/`)).status, 200);
    t.is((await raw(proxy.url + blobPath, { method: 'HEAD' })).status, 200);
    t.is((await raw(`${proxy.url}/v2/${REPO}/tags/list`)).status, 404, 'a repository with no tags: upstream answers');
    t.is((await raw(`${proxy.url}/v2/_catalogue`)).status, 404);
  }
  // Without a rule, the catalog answers again.
  proxy.rules.splice(0, proxy.rules.length);
  const ok = await fetch(`${proxy.url}/v2/_catalog`);
  t.is(ok.status, 200);
  t.true(((await ok.json()) as { repositories: string[] }).repositories.includes(REPO));
  // The default challenge of refuseCatalog names a realm nobody listens on.
  t.regex(refuseCatalog('challenge').headers!['WWW-Authenticate']!, /^Bearer realm="http:\/\/127\.0\.0\.1:9\/token"/);
});

test('first matching rule wins; method/path matching; rules mutable at run time', async (t) => {
  const proxy = await proxyFor(t);
  proxy.rules.push(
    { method: 'HEAD', status: 500 },
    { path: /\/manifests\//, status: 418 },
    { method: /^(GET|HEAD)$/, path: blobPath, status: 502 },
    { status: 504 },
  );
  t.is((await raw(proxy.url + blobPath, { method: 'HEAD' })).status, 500);
  t.is((await raw(proxy.url + blobPath)).status, 502);
  t.is((await raw(`${proxy.url}/v2/${REPO}/manifests/latest`)).status, 418);
  t.is((await raw(`${proxy.url}/v2/`)).status, 504);
  proxy.rules.splice(0, proxy.rules.length);
  t.is((await raw(`${proxy.url}/v2/`)).status, 200);
  t.deepEqual(proxy.requests.map((r) => r.rule), [0, 2, 1, 3, undefined]);
});

test('redirectTo answers 307; the second origin sees no credentials when fetch follows', async (t) => {
  const proxy = await proxyFor(t);
  const rec = await startHeaderRecorder(t, reg.url);
  proxy.rules.push({ method: 'GET', path: /\/blobs\//, redirectTo: rec.url });

  const r = await raw(proxy.url + blobPath);
  t.is(r.status, 307);
  t.is(r.headers.location, rec.url + blobPath);
  t.is(rec.requests.length, 0);

  const f = await fetch(proxy.url + blobPath, { headers: { Authorization: 'Bearer secret-token', Cookie: 'a=b' } });
  t.is(f.status, 200);
  t.true(Buffer.from(await f.arrayBuffer()).equals(blob));
  t.is(f.url, rec.url + blobPath);
  t.is(rec.requests.length, 1);
  t.is(rec.requests[0]!.path, blobPath);
  t.is(rec.requests[0]!.headers.authorization, undefined);
  t.is(rec.requests[0]!.headers.cookie, undefined);
  // The proxy itself did get the credentials (same origin as the client's target).
  t.is(proxy.requests[1]!.headers.authorization, 'Bearer secret-token');

  // Range requests pass through the recorder too.
  const part = await fetch(rec.url + blobPath, { headers: { Range: 'bytes=10-19' } });
  t.is(part.status, 206);
  t.true(Buffer.from(await part.arrayBuffer()).equals(blob.subarray(10, 20)));
});

// ---------------------------------------------------------------------------------------------
// broken bodies

test('cutAfterBytes delivers exactly N bytes, then the client sees a premature close', async (t) => {
  const proxy = await proxyFor(t);
  proxy.rules.push({ path: blobPath, cutAfterBytes: 100_000, times: 2 });
  const r = await raw(proxy.url + blobPath);
  t.is(r.status, 200);
  t.is(r.headers['content-length'], String(BLOB_SIZE));
  t.false(r.complete);
  t.is(r.body.length, 100_000);
  t.true(r.body.equals(blob.subarray(0, 100_000)));
  t.is(proxy.requests[0]!.bytesOut, 100_000);

  const f = await fetch(proxy.url + blobPath);
  t.is(f.status, 200);
  await t.throwsAsync(f.arrayBuffer());

  const ok = await raw(proxy.url + blobPath);
  t.true(ok.complete);
  t.is(ok.body.length, BLOB_SIZE);
});

test('cutAfterBytes: 0 sends the head and closes', async (t) => {
  const proxy = await proxyFor(t);
  proxy.rules.push({ cutAfterBytes: 0 });
  const r = await raw(proxy.url + blobPath);
  t.is(r.status, 200);
  t.false(r.complete);
  t.is(r.body.length, 0);
});

test('flipByteAt changes exactly one byte', async (t) => {
  const proxy = await proxyFor(t);
  const at = 700_001;
  proxy.rules.push({ path: blobPath, flipByteAt: at });
  const r = await raw(proxy.url + blobPath);
  t.is(r.status, 200);
  t.true(r.complete);
  t.is(r.body.length, BLOB_SIZE);
  const diffs: number[] = [];
  for (let i = 0; i < BLOB_SIZE; i++) if (r.body[i] !== blob[i]) diffs.push(i);
  t.deepEqual(diffs, [at]);
  t.is(r.body[at], blob[at]! ^ 0xff);
});

test('bytesPerSecondEach paces every answer on its own (a per-connection cap); bytesPerSecond shares one link', async (t) => {
  const proxy = await proxyFor(t);
  const rate = 1_000_000; // a 1 MiB blob: >= 1.05 s at this rate; two sharing one link: >= 2.1 s
  const one = BLOB_SIZE / rate;
  const both = async (): Promise<number[]> => {
    const t0 = performance.now();
    return Promise.all([0, 1].map(async () => {
      const r = await raw(proxy.url + blobPath);
      t.true(r.body.equals(blob));
      return (performance.now() - t0) / 1000;
    }));
  };
  proxy.rules.push({ path: blobPath, bytesPerSecondEach: rate });
  const each = await both();
  // Pacing can only slow an answer down: the lower bounds hold on any machine; the upper one leaves 0.8 s for load.
  for (const s of each) t.true(s >= one * 0.95, `each answer paced: ${s.toFixed(2)} s`);
  t.true(Math.max(...each) < 2 * one * 0.9, `two answers at once, each at the full rate: ${each.map((s) => s.toFixed(2)).join(', ')} s`);
  proxy.rules.splice(0, proxy.rules.length, { path: blobPath, bytesPerSecond: rate });
  const shared = await both();
  t.true(Math.max(...shared) >= 2 * one * 0.95, `one shared link: ${shared.map((s) => s.toFixed(2)).join(', ')} s`);
});

test('ignoreRange makes a Range GET come back 200 with the full body', async (t) => {
  const proxy = await proxyFor(t);
  const ranged = await raw(proxy.url + blobPath, { headers: { range: 'bytes=100-199' } });
  t.is(ranged.status, 206);
  t.true(ranged.body.equals(blob.subarray(100, 200)));

  proxy.rules.push({ path: blobPath, ignoreRange: true });
  const r = await raw(proxy.url + blobPath, { headers: { range: 'bytes=100-199' } });
  t.is(r.status, 200);
  t.true(r.complete);
  t.true(r.body.equals(blob));
  t.is(proxy.requests[1]!.headers.range, 'bytes=100-199'); // recorded as the client sent it
});

test('appendBytes adds junk bytes and fixes Content-Length', async (t) => {
  const proxy = await proxyFor(t);
  proxy.rules.push({ path: blobPath, appendBytes: 17 });
  const r = await raw(proxy.url + blobPath);
  t.is(r.status, 200);
  t.true(r.complete);
  t.is(r.headers['content-length'], String(BLOB_SIZE + 17));
  t.is(r.body.length, BLOB_SIZE + 17);
  t.true(r.body.subarray(0, BLOB_SIZE).equals(blob));
  t.is(proxy.bytesOut(), BLOB_SIZE + 17);
});

test('wrongContentLength: shorter declares and sends N bytes; longer ends prematurely', async (t) => {
  const proxy = await proxyFor(t);
  proxy.rules.push({ path: blobPath, wrongContentLength: 1000, times: 1 }, { path: blobPath, wrongContentLength: BLOB_SIZE + 50, times: 1 });
  const short = await raw(proxy.url + blobPath);
  t.is(short.status, 200);
  t.is(short.headers['content-length'], '1000');
  t.is(short.body.length, 1000);
  t.true(short.body.equals(blob.subarray(0, 1000)));

  const long = await raw(proxy.url + blobPath);
  t.is(long.headers['content-length'], String(BLOB_SIZE + 50));
  t.false(long.complete);
  t.is(long.body.length, BLOB_SIZE);
});

test('replaceBody keeps upstream status/headers with the given body', async (t) => {
  const proxy = await proxyFor(t);
  const fake = Buffer.from('not the blob');
  proxy.rules.push({ path: blobPath, replaceBody: fake });
  const r = await raw(proxy.url + blobPath);
  t.is(r.status, 200);
  t.is(r.headers['docker-content-digest'], blobDigest);
  t.is(r.headers['content-length'], String(fake.length));
  t.true(r.body.equals(fake));
});

test('setHeaders sets and removes headers of a forwarded answer; chunked drops Content-Length', async (t) => {
  const proxy = await proxyFor(t);
  proxy.rules.push({ path: blobPath, setHeaders: { 'docker-content-digest': 'sha256:other', 'x-extra': 'yes', 'accept-ranges': null }, chunked: true, appendBytes: 3 });
  const r = await raw(proxy.url + blobPath);
  t.is(r.status, 200);
  t.true(r.complete);
  t.is(r.headers['docker-content-digest'], 'sha256:other');
  t.is(r.headers['x-extra'], 'yes');
  t.is(r.headers['accept-ranges'], undefined);
  t.is(r.headers['content-length'], undefined);
  t.is(r.headers['transfer-encoding'], 'chunked');
  t.is(r.body.length, BLOB_SIZE + 3);
  t.true(r.body.subarray(0, BLOB_SIZE).equals(blob));
});

test('delayResponseMs lets the request reach upstream at once but holds the answer; requests carry their arrival time', async (t) => {
  const proxy = await proxyFor(t);
  const body = Buffer.from('delayed upload');
  proxy.rules.push({ method: 'PUT', delayResponseMs: 400 });
  const before = Date.now();
  const pending = pushBlob(proxy.url, REPO, body);
  let answered = false;
  void pending.then(() => (answered = true));
  // The blob is in the registry before the client hears about it.
  let landed = false;
  for (let i = 0; i < 50 && !landed; i++) {
    landed = (await raw(`${reg.url}/v2/${REPO}/blobs/${sha256(body)}`, { method: 'HEAD' })).status === 200;
    if (!landed) await new Promise((r) => setTimeout(r, 20));
  }
  t.true(landed);
  t.false(answered, 'the client was still waiting when the blob had landed');
  t.is(await pending, sha256(body));
  t.true(Date.now() - before >= 390);
  const put = proxy.requests.find((r) => r.method === 'PUT')!;
  t.true(put.time >= before && put.time <= Date.now());
  t.is(put.status, 201);
});

// ---------------------------------------------------------------------------------------------
// connection-level faults

test('latencyMs delays the answer', async (t) => {
  const proxy = await proxyFor(t);
  proxy.rules.push({ path: '/v2/', latencyMs: 300 });
  const t0 = Date.now();
  const r = await raw(`${proxy.url}/v2/`);
  t.is(r.status, 200);
  t.true(Date.now() - t0 >= 290);
});

test('reset destroys the client socket', async (t) => {
  const proxy = await proxyFor(t);
  proxy.rules.push({ reset: true, times: 1 });
  const r = await raw(proxy.url + blobPath);
  t.is(r.status, 0);
  t.truthy(r.error);
  t.regex((r.error as NodeJS.ErrnoException).code ?? '', /ECONNRESET|EPIPE/);
  t.is((await raw(proxy.url + blobPath)).status, 200);
});

test('stall never answers; close() still returns quickly and the client then fails', async (t) => {
  const proxy = await proxyFor(t);
  proxy.rules.push({ stall: true });
  const pending = raw(proxy.url + blobPath);
  const early = await Promise.race([pending.then(() => 'answered'), new Promise((r) => setTimeout(() => r('waiting'), 500))]);
  t.is(early, 'waiting');
  t.is(proxy.requests.length, 1);
  t.is(proxy.requests[0]!.status, 0);

  const t0 = Date.now();
  await withTimeout(proxy.close(), 2000, 'proxy.close()');
  t.true(Date.now() - t0 < 2000);
  const r = await withTimeout(pending, 2000, 'stalled request');
  t.is(r.status, 0);
  t.truthy(r.error);
  await proxy.close(); // idempotent
  const after = await raw(proxy.url + '/v2/');
  t.truthy(after.error, 'proxy no longer listens');
});

test('endlessBody keeps sending until the client aborts', async (t) => {
  const proxy = await proxyFor(t);
  proxy.rules.push({ path: /\/manifests\//, endlessBody: true });
  const ac = new AbortController();
  const res = await fetch(`${proxy.url}/v2/${REPO}/manifests/latest`, { signal: ac.signal });
  t.is(res.status, 200);
  t.is(res.headers.get('content-type'), 'application/vnd.oci.image.manifest.v1+json');
  t.is(res.headers.get('transfer-encoding'), 'chunked');
  const reader = res.body!.getReader();
  let got = 0;
  while (got < 8 * 1024 * 1024) {
    const { value, done } = await reader.read();
    t.false(done);
    got += value!.length;
  }
  ac.abort();
  await reader.cancel().catch(() => {});
  // The proxy stops writing once the client is gone.
  await new Promise((r) => setTimeout(r, 200));
  const a = proxy.bytesOut();
  await new Promise((r) => setTimeout(r, 300));
  t.is(proxy.bytesOut(), a);
  t.true(a >= got);
});

test('close() leaves nothing keeping the event loop alive', async (t) => {
  // A separate node process: start upstream + proxy, leave a stalled, an endless and a keep-alive
  // connection open, close, and check that the process exits on its own.
  const modUrl = new URL('../lab/fault-proxy.js', import.meta.url).href;
  const script = `
    import http from 'node:http';
    const { startFaultProxy } = await import(${JSON.stringify(modUrl)});
    const upstream = http.createServer((req, res) => res.end('ok'));
    await new Promise((r) => upstream.listen(0, '127.0.0.1', r));
    const proxy = await startFaultProxy(undefined, 'http://127.0.0.1:' + upstream.address().port);
    proxy.rules.push({ path: '/stall', stall: true }, { path: '/endless', endlessBody: true }, { path: '/slow', latencyMs: 60000 });
    const agent = new http.Agent({ keepAlive: true });
    const get = (p) => new Promise((resolve) => {
      const req = http.get(proxy.url + p, { agent }, (res) => { res.on('data', () => {}); res.on('end', resolve); res.on('error', resolve); res.on('close', resolve); });
      req.on('error', resolve);
      return req;
    });
    await get('/ok');
    const others = [get('/stall'), get('/endless'), get('/slow')];
    await new Promise((r) => setTimeout(r, 200));
    const t0 = Date.now();
    await proxy.close();
    await Promise.all(others);
    upstream.close();
    agent.destroy();
    process.stdout.write('closed in ' + (Date.now() - t0) + ' ms\\n');
  `;
  const t0 = Date.now();
  const out = await new Promise<string>((resolve, reject) => {
    const child = execFile(process.execPath, ['--input-type=module', '-e', script], { timeout: 10_000 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${err.message}\n${stderr}`));
      else resolve(stdout);
    });
    child.stdin?.end();
  });
  t.regex(out, /closed in \d+ ms/);
  t.log(out.trim(), `; child exited after ${Date.now() - t0} ms`);
  t.true(Date.now() - t0 < 8000);
});

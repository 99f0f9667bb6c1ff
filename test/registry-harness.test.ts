import test from 'ava';
import { createHash } from 'node:crypto';
import { readFile, stat } from 'node:fs/promises';
import https from 'node:https';
import { freePort, startRegistry, withTimeout, type StartedRegistry } from '../lab/registry.js';

function basic(user: string, pass: string): string {
  return 'Basic ' + Buffer.from(`${user}:${pass}`).toString('base64');
}

function sha256(buf: Buffer): string {
  return 'sha256:' + createHash('sha256').update(buf).digest('hex');
}

/** Parse `Bearer realm="...",service="...",scope="..."` into a record. */
function parseChallenge(h: string | null): Record<string, string> {
  const out: Record<string, string> = {};
  if (!h) return out;
  const m = /^Bearer\s+(.*)$/i.exec(h);
  if (!m) return out;
  for (const p of m[1]!.matchAll(/(\w+)="([^"]*)"/g)) out[p[1]!] = p[2]!;
  return out;
}

/** Monolithic blob upload: POST then PUT <location>&digest=... */
async function pushBlob(reg: StartedRegistry, repo: string, body: Buffer, headers: Record<string, string> = {}): Promise<string> {
  const digest = sha256(body);
  const post = await fetch(`${reg.url}/v2/${repo}/blobs/uploads/`, { method: 'POST', headers });
  if (post.status !== 202) throw new Error(`POST upload: ${post.status} ${await post.text()}`);
  await post.arrayBuffer();
  const loc = new URL(post.headers.get('location')!, reg.url);
  loc.searchParams.set('digest', digest);
  const put = await fetch(loc, {
    method: 'PUT',
    headers: { ...headers, 'Content-Type': 'application/octet-stream', 'Content-Length': String(body.length) },
    body: new Uint8Array(body),
  });
  if (put.status !== 201) throw new Error(`PUT upload: ${put.status} ${await put.text()}`);
  await put.arrayBuffer();
  return digest;
}

function httpsGet(url: string, ca?: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = https.get(url, { ca, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', reject);
  });
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

test('freePort returns a usable port', async (t) => {
  const p = await freePort();
  t.true(p > 0 && p < 65536);
});

test('withTimeout rejects with a clear message', async (t) => {
  await t.throwsAsync(withTimeout(new Promise(() => {}), 20, 'never-resolving thing'), {
    message: 'never-resolving thing timed out after 20 ms',
  });
  t.is(await withTimeout(Promise.resolve(7), 1000, 'x'), 7);
});

test('plain: GET /v2/ is 200', async (t) => {
  const t0 = Date.now();
  const reg = await startRegistry(t, { flavour: 'plain' });
  t.log(`plain start ${Date.now() - t0} ms`);
  t.regex(reg.host, /^127\.0\.0\.1:\d+$/);
  t.is(reg.url, `http://${reg.host}`);
  const r = await fetch(`${reg.url}/v2/`);
  t.is(r.status, 200);
  t.is(r.headers.get('x-content-type-options'), 'nosniff');
  t.is(reg.username, undefined);
});

test('plain: blob delete is visible at once (no blobdescriptor cache)', async (t) => {
  const reg = await startRegistry(t);
  const digest = await pushBlob(reg, 'del/me', Buffer.from('delete me please'));
  t.is((await fetch(`${reg.url}/v2/del/me/blobs/${digest}`, { method: 'HEAD' })).status, 200);
  const del = await fetch(`${reg.url}/v2/del/me/blobs/${digest}`, { method: 'DELETE' });
  t.is(del.status, 202);
  t.is((await fetch(`${reg.url}/v2/del/me/blobs/${digest}`, { method: 'HEAD' })).status, 404);
});

test('plain: deleteEnabled=false refuses deletes', async (t) => {
  const reg = await startRegistry(t, { deleteEnabled: false });
  const digest = await pushBlob(reg, 'keep/me', Buffer.from('keep me'));
  const del = await fetch(`${reg.url}/v2/keep/me/blobs/${digest}`, { method: 'DELETE' });
  t.is(del.status, 405);
});

test('basic: 401 without creds, 200 with', async (t) => {
  const t0 = Date.now();
  const reg = await startRegistry(t, { flavour: 'basic' });
  t.log(`basic start ${Date.now() - t0} ms`);
  t.is(reg.username, 'regfs-user');
  t.regex(reg.password ?? '', /^[0-9a-f]{24}$/);
  const anon = await fetch(`${reg.url}/v2/`);
  t.is(anon.status, 401);
  t.regex(anon.headers.get('www-authenticate') ?? '', /^Basic realm="regfs-test"/);
  const wrong = await fetch(`${reg.url}/v2/`, { headers: { Authorization: basic(reg.username!, 'nope') } });
  t.is(wrong.status, 401);
  const ok = await fetch(`${reg.url}/v2/`, { headers: { Authorization: basic(reg.username!, reg.password!) } });
  t.is(ok.status, 200);
});

test('token: bearer challenge, token grants catalog, wrong password is 401', async (t) => {
  const t0 = Date.now();
  const reg = await startRegistry(t, { flavour: 'token' });
  t.log(`token start ${Date.now() - t0} ms`);
  const ts = reg.tokenServer!;
  t.truthy(ts);

  const anon = await fetch(`${reg.url}/v2/`);
  t.is(anon.status, 401);
  const ch = parseChallenge(anon.headers.get('www-authenticate'));
  t.is(ch.realm, ts.url);
  t.is(ch.service, 'regfs-test-registry');

  // authenticated token with catalog scope
  const tokUrl = new URL(ch.realm!);
  tokUrl.searchParams.set('service', ch.service!);
  tokUrl.searchParams.append('scope', 'registry:catalog:*');
  const tr = await fetch(tokUrl, { headers: { Authorization: basic(reg.username!, reg.password!) } });
  t.is(tr.status, 200);
  const tj = (await tr.json()) as { token: string; access_token: string; expires_in: number; issued_at: string };
  t.is(tj.token, tj.access_token);
  t.is(tj.expires_in, 300);
  t.true(ts.issuedTokens.includes(tj.token));
  const claims = JSON.parse(Buffer.from(tj.token.split('.')[1]!, 'base64url').toString('utf8')) as {
    sub: string;
    access: Array<{ type: string; name: string; actions: string[] }>;
  };
  t.is(claims.sub, 'regfs-user');
  t.deepEqual(claims.access, [{ type: 'registry', name: 'catalog', actions: ['*'] }]);

  const cat = await fetch(`${reg.url}/v2/_catalog`, { headers: { Authorization: `Bearer ${tj.token}` } });
  t.is(cat.status, 200, await cat.clone().text());
  t.deepEqual(await cat.json(), { repositories: [] });

  // anonymous token only grants pull -> catalog refused
  const anonTok = (await (await fetch(tokUrl)).json()) as { token: string };
  const cat2 = await fetch(`${reg.url}/v2/_catalog`, { headers: { Authorization: `Bearer ${anonTok.token}` } });
  t.is(cat2.status, 401);
  t.regex(cat2.headers.get('www-authenticate') ?? '', /insufficient_scope/);

  // wrong password
  const bad = await fetch(tokUrl, { headers: { Authorization: basic(reg.username!, 'wrong') } });
  t.is(bad.status, 401);
  t.deepEqual(await bad.json(), { errors: [{ code: 'UNAUTHORIZED', message: 'authentication failed' }] });

  t.is(ts.requests.length, 3);
  t.is(ts.requests[0]!.method, 'GET');
  t.deepEqual(ts.requests[0]!.query, { service: 'regfs-test-registry', scope: 'registry:catalog:*' });
  t.truthy(ts.requests[0]!.authorization);
  t.is(ts.requests[1]!.authorization, undefined);
});

test('token: push + pull with scoped tokens (repeated and space-separated scopes)', async (t) => {
  const reg = await startRegistry(t, { flavour: 'token' });
  const ts = reg.tokenServer!;
  const repo = 'team/app';
  const tokUrl = new URL(ts.url);
  tokUrl.searchParams.set('service', 'regfs-test-registry');
  tokUrl.searchParams.append('scope', `repository:${repo}:pull,push`);
  tokUrl.searchParams.append('scope', 'repository:other/thing:pull registry:catalog:*');
  const tj = (await (await fetch(tokUrl, { headers: { Authorization: basic(reg.username!, reg.password!) } })).json()) as {
    token: string;
  };
  const claims = JSON.parse(Buffer.from(tj.token.split('.')[1]!, 'base64url').toString('utf8')) as { access: unknown };
  t.deepEqual(claims.access, [
    { type: 'repository', name: repo, actions: ['pull', 'push'] },
    { type: 'repository', name: 'other/thing', actions: ['pull'] },
    { type: 'registry', name: 'catalog', actions: ['*'] },
  ]);
  const auth = { Authorization: `Bearer ${tj.token}` };
  const body = Buffer.from('hello from the token flavour');
  const digest = await pushBlob(reg, repo, body, auth);
  const get = await fetch(`${reg.url}/v2/${repo}/blobs/${digest}`, { headers: auth });
  t.is(get.status, 200);
  t.is(Buffer.from(await get.arrayBuffer()).toString(), body.toString());

  // anonymous pull token can read it but not push
  const pullUrl = new URL(ts.url);
  pullUrl.searchParams.set('service', 'regfs-test-registry');
  pullUrl.searchParams.set('scope', `repository:${repo}:pull,push`);
  const anon = (await (await fetch(pullUrl)).json()) as { token: string };
  const ah = { Authorization: `Bearer ${anon.token}` };
  t.is((await fetch(`${reg.url}/v2/${repo}/blobs/${digest}`, { headers: ah, method: 'HEAD' })).status, 200);
  t.is((await fetch(`${reg.url}/v2/${repo}/blobs/uploads/`, { headers: ah, method: 'POST' })).status, 401);

  // a token without the repository in it is refused for that repository
  t.is((await fetch(`${reg.url}/v2/${repo}/blobs/${digest}`, { method: 'HEAD' })).status, 401);

  // catalog now lists the repo
  const cat = await fetch(`${reg.url}/v2/_catalog`, { headers: auth });
  t.deepEqual(await cat.json(), { repositories: [repo] });
});

test('token: POST password / refresh_token grants, offline_token, down', async (t) => {
  const reg = await startRegistry(t, { flavour: 'token' });
  const ts = reg.tokenServer!;
  const form = (o: Record<string, string>): RequestInit => ({
    method: 'POST',
    headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams(o).toString(),
  });
  const common = { service: 'regfs-test-registry', scope: 'registry:catalog:*', client_id: 'regfs-test' };

  const pw = await fetch(ts.url, form({ ...common, grant_type: 'password', username: reg.username!, password: reg.password! }));
  t.is(pw.status, 200);
  const pj = (await pw.json()) as { access_token: string; expires_in: number; refresh_token: string };
  t.truthy(pj.refresh_token);
  t.true(ts.refreshTokens.has(pj.refresh_token));
  t.is(ts.requests.at(-1)!.form?.grant_type, 'password');
  t.is((await fetch(`${reg.url}/v2/_catalog`, { headers: { Authorization: `Bearer ${pj.access_token}` } })).status, 200);

  const badPw = await fetch(ts.url, form({ ...common, grant_type: 'password', username: reg.username!, password: 'x' }));
  t.is(badPw.status, 401);

  ts.tokenLifetimeSeconds = 42;
  const rf = await fetch(ts.url, form({ ...common, grant_type: 'refresh_token', refresh_token: pj.refresh_token }));
  t.is(rf.status, 200);
  const rj = (await rf.json()) as { access_token: string; expires_in: number };
  t.is(rj.expires_in, 42);
  t.is((await fetch(`${reg.url}/v2/_catalog`, { headers: { Authorization: `Bearer ${rj.access_token}` } })).status, 200);

  const badRf = await fetch(ts.url, form({ ...common, grant_type: 'refresh_token', refresh_token: 'bogus' }));
  t.is(badRf.status, 401);

  // GET with offline_token=true hands out a refresh token only for valid credentials
  const off = new URL(ts.url);
  off.searchParams.set('service', 'regfs-test-registry');
  off.searchParams.set('offline_token', 'true');
  off.searchParams.set('client_id', 'regfs-test');
  const oj = (await (await fetch(off, { headers: { Authorization: basic(reg.username!, reg.password!) } })).json()) as {
    refresh_token?: string;
  };
  t.truthy(oj.refresh_token);
  t.true(ts.refreshTokens.has(oj.refresh_token!));
  const oa = (await (await fetch(off)).json()) as { refresh_token?: string };
  t.is(oa.refresh_token, undefined);

  ts.down = true;
  t.is((await fetch(off)).status, 503);
  ts.down = false;
  t.is((await fetch(off)).status, 200);
});

test('tls: https with the CA works, without it fails with a certificate error', async (t) => {
  const t0 = Date.now();
  const reg = await startRegistry(t, { flavour: 'tls' });
  t.log(`tls start ${Date.now() - t0} ms`);
  t.is(reg.url, `https://${reg.host}`);
  const ca = await readFile(reg.caFile!, 'utf8');
  const ok = await httpsGet(`${reg.url}/v2/`, ca);
  t.is(ok.status, 200);
  const port = reg.host.split(':')[1]!;
  t.is((await httpsGet(`https://localhost:${port}/v2/`, ca)).status, 200);
  const err = await t.throwsAsync(httpsGet(`${reg.url}/v2/`));
  t.regex((err as NodeJS.ErrnoException).code ?? '', /CERT|SIGNATURE|VERIFY|ISSUER/);
});

test('restart keeps storage; kill simulates registry down; stop leaves no process', async (t) => {
  const reg = await startRegistry(t);
  const body = Buffer.from('persist me across restarts');
  const digest = await pushBlob(reg, 'x', body);
  const pid1 = reg.pid;
  t.true(isAlive(pid1));

  const t0 = Date.now();
  await reg.restart();
  t.log(`restart ${Date.now() - t0} ms`);
  t.false(isAlive(pid1));
  t.not(reg.pid, pid1);
  const get = await fetch(`${reg.url}/v2/x/blobs/${digest}`);
  t.is(get.status, 200);
  t.is(Buffer.from(await get.arrayBuffer()).toString(), body.toString());

  await reg.kill();
  await t.throwsAsync(fetch(`${reg.url}/v2/`));
  await reg.restart();
  t.is((await fetch(`${reg.url}/v2/x/blobs/${digest}`)).status, 200);

  const pid2 = reg.pid;
  await reg.stop();
  t.throws(() => process.kill(pid2, 0));
  await t.throwsAsync(stat(reg.dir));
  await reg.stop(); // idempotent
  await t.throwsAsync(reg.restart());
  t.is(typeof reg.logs(), 'string');
});

test('startRegistry without t, stopped manually', async (t) => {
  const reg = await startRegistry(undefined);
  t.is((await fetch(`${reg.url}/v2/`)).status, 200);
  const pid = reg.pid;
  await Promise.all([reg.stop(), reg.stop()]);
  t.false(isAlive(pid));
});

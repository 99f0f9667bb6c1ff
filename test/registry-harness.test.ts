import test from 'ava';
import { createHash } from 'node:crypto';
import { readFile, stat } from 'node:fs/promises';
import https from 'node:https';
import { freePort, startRegistry, withTimeout, TEST_USERNAME, type StartedRegistry, type TokenServer } from '../lab/registry.js';

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

  // an anonymous token grants nothing outside the public namespace
  const pullUrl = new URL(ts.url);
  pullUrl.searchParams.set('service', 'regfs-test-registry');
  pullUrl.searchParams.set('scope', `repository:${repo}:pull,push`);
  const anon = (await (await fetch(pullUrl)).json()) as { token: string };
  const ah = { Authorization: `Bearer ${anon.token}` };
  t.is((await fetch(`${reg.url}/v2/${repo}/blobs/${digest}`, { headers: ah, method: 'HEAD' })).status, 401);
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

/** token asks the token server for one token (Basic auth when user is given) and returns it with its claims. */
async function token(ts: TokenServer, scopes: string[], user?: [string, string]): Promise<{ status: number; token: string; access: Array<{ type: string; name: string; actions: string[] }> }> {
  const u = new URL(ts.url);
  u.searchParams.set('service', 'regfs-test-registry');
  for (const s of scopes) u.searchParams.append('scope', s);
  const r = await fetch(u, user ? { headers: { Authorization: basic(user[0], user[1]) } } : {});
  if (r.status !== 200) {
    await r.arrayBuffer();
    return { status: r.status, token: '', access: [] };
  }
  const j = (await r.json()) as { token: string };
  const claims = JSON.parse(Buffer.from(j.token.split('.')[1]!, 'base64url').toString('utf8')) as { access: Array<{ type: string; name: string; actions: string[] }> };
  return { status: 200, token: j.token, access: claims.access };
}

const bearer = (tok: string): Record<string, string> => ({ Authorization: `Bearer ${tok}` });

test('token policy: grants per user and repository, anonymous pull only under public/, insufficient_scope answers', async (t) => {
  const reg = await startRegistry(t, { flavour: 'token' });
  const ts = reg.tokenServer!;
  t.is(ts.publicNamespace, 'public/');
  t.not(new URL(ts.url).port, reg.host.split(':')[1], 'the realm is served on its own port');
  ts.addUser('alice', 'alice-pw', { 'alice/*': ['pull', 'push'], 'shared/tools': ['pull'] });
  ts.addUser('bob', 'bob-pw', { 'bob/*': ['*'] });

  // The default user may do anything: seed repositories of every namespace.
  const admin: [string, string] = [reg.username!, reg.password!];
  const body = Buffer.from('policy blob');
  const all = await token(ts, ['repository:alice/app:pull,push', 'repository:bob/app:pull,push', 'repository:shared/tools:pull,push', 'repository:public/app:pull,push'], admin);
  t.true(all.access.every((a) => a.actions.join(',') === 'pull,push'), JSON.stringify(all.access));
  for (const repo of ['alice/app', 'bob/app', 'shared/tools', 'public/app']) await pushBlob(reg, repo, body, bearer(all.token));
  const digest = sha256(body);

  // alice: her namespace read-write, shared/tools read-only, bob's namespace nothing.
  const a = await token(ts, ['repository:alice/app:pull,push', 'repository:shared/tools:pull,push', 'repository:bob/app:pull,push', 'registry:catalog:*'], ['alice', 'alice-pw']);
  t.deepEqual(a.access, [
    { type: 'repository', name: 'alice/app', actions: ['pull', 'push'] },
    { type: 'repository', name: 'shared/tools', actions: ['pull'] },
    { type: 'repository', name: 'bob/app', actions: [] },
    { type: 'registry', name: 'catalog', actions: [] },
  ]);
  await pushBlob(reg, 'alice/other', Buffer.from('x'), bearer((await token(ts, ['repository:alice/other:pull,push'], ['alice', 'alice-pw'])).token));
  t.is((await fetch(`${reg.url}/v2/shared/tools/blobs/${digest}`, { method: 'HEAD', headers: bearer(a.token) })).status, 200);
  const refused = await fetch(`${reg.url}/v2/bob/app/blobs/${digest}`, { method: 'HEAD', headers: bearer(a.token) });
  t.is(refused.status, 401);
  t.regex(refused.headers.get('www-authenticate') ?? '', /error="insufficient_scope"/);
  t.regex(refused.headers.get('www-authenticate') ?? '', /scope="repository:bob\/app:pull"/);
  const noPush = await fetch(`${reg.url}/v2/shared/tools/blobs/uploads/`, { method: 'POST', headers: bearer(a.token) });
  t.is(noPush.status, 401);
  t.regex(noPush.headers.get('www-authenticate') ?? '', /error="insufficient_scope"/);
  t.is((await fetch(`${reg.url}/v2/_catalog`, { headers: bearer(a.token) })).status, 401);

  // bob: '*' grants whatever he asks for in his namespace; a wrong password is 401 at the token server.
  const b = await token(ts, ['repository:bob/app:pull,push,delete'], ['bob', 'bob-pw']);
  t.deepEqual(b.access, [{ type: 'repository', name: 'bob/app', actions: ['pull', 'push', 'delete'] }]);
  t.is((await token(ts, ['repository:bob/app:pull'], ['bob', 'alice-pw'])).status, 401);
  t.is((await token(ts, ['repository:bob/app:pull'], ['mallory', 'x'])).status, 401);

  // Anonymous: pull under public/ only, never push.
  const anon = await token(ts, ['repository:public/app:pull,push', 'repository:alice/app:pull']);
  t.deepEqual(anon.access, [
    { type: 'repository', name: 'public/app', actions: ['pull'] },
    { type: 'repository', name: 'alice/app', actions: [] },
  ]);
  const got = await fetch(`${reg.url}/v2/public/app/blobs/${digest}`, { headers: bearer(anon.token) });
  t.is(got.status, 200);
  t.is(Buffer.from(await got.arrayBuffer()).toString(), 'policy blob');
  const anonPush = await fetch(`${reg.url}/v2/public/app/blobs/uploads/`, { method: 'POST', headers: bearer(anon.token) });
  t.is(anonPush.status, 401);
  t.regex(anonPush.headers.get('www-authenticate') ?? '', /error="insufficient_scope"/);
  t.is((await fetch(`${reg.url}/v2/alice/app/blobs/${digest}`, { method: 'HEAD', headers: bearer(anon.token) })).status, 401);

  // The public namespace is configurable ('' = none).
  ts.publicNamespace = '';
  t.deepEqual((await token(ts, ['repository:public/app:pull'])).access, [{ type: 'repository', name: 'public/app', actions: [] }]);

  // Counts per scope (as requested).
  t.is(ts.countIssued('repository:alice/app:pull,push'), 2);
  t.is(ts.countIssued('repository:public/app:pull'), 1);
  t.is(ts.countIssued(/^repository:bob\/app:/), 3);
  t.is(ts.tokensPerScope()['registry:catalog:*'], 1);
  t.is(ts.issued.length, ts.issuedTokens.length);
  t.is(ts.issued.at(-1)!.sub, '');
  t.is(ts.issued.find((i) => i.sub === 'alice')!.expiresIn, 300);
});

test('token: setPassword rotates a password at run time; old one refused, new one accepted, tokens already issued keep working', async (t) => {
  const reg = await startRegistry(t, { flavour: 'token' });
  const ts = reg.tokenServer!;
  const old = reg.password!;
  const before = await token(ts, ['repository:rot/app:pull,push'], [TEST_USERNAME, old]);
  t.is(before.status, 200);
  const fresh = 'rotated-' + Math.random().toString(36).slice(2);
  ts.setPassword(TEST_USERNAME, fresh);
  t.is(reg.password, fresh, 'reg.password follows the rotation');
  t.is((await token(ts, ['repository:rot/app:pull'], [TEST_USERNAME, old])).status, 401);
  const after = await token(ts, ['repository:rot/app:pull,push'], [TEST_USERNAME, fresh]);
  t.is(after.status, 200);
  t.deepEqual(after.access, [{ type: 'repository', name: 'rot/app', actions: ['pull', 'push'] }]);
  await pushBlob(reg, 'rot/app', Buffer.from('rotated'), bearer(after.token));
  await pushBlob(reg, 'rot/app', Buffer.from('still valid'), bearer(before.token));
  // The OAuth2 password grant follows the rotation too.
  const form = (pw: string): RequestInit => ({
    method: 'POST',
    headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ grant_type: 'password', service: 'regfs-test-registry', client_id: 'x', username: TEST_USERNAME, password: pw, scope: 'repository:rot/app:pull' }).toString(),
  });
  t.is((await fetch(ts.url, form(old))).status, 401);
  t.is((await fetch(ts.url, form(fresh))).status, 200);
  // Token lifetime is per test: a short token is refused by the registry once expired (exp is written early by the leeway distribution adds).
  // exp counts from the issuing second (rounded down), so a token of n s lives between n-1 and n s: 3 s leaves room for the first HEAD under load.
  ts.tokenLifetimeSeconds = 3;
  const issuedAt = Date.now();
  const short = await token(ts, ['repository:rot/app:pull'], [TEST_USERNAME, fresh]);
  t.is((await fetch(`${reg.url}/v2/rot/app/blobs/${sha256(Buffer.from('rotated'))}`, { method: 'HEAD', headers: bearer(short.token) })).status, 200);
  await new Promise((r) => setTimeout(r, Math.max(0, issuedAt + 3200 - Date.now())));
  t.is((await fetch(`${reg.url}/v2/rot/app/blobs/${sha256(Buffer.from('rotated'))}`, { method: 'HEAD', headers: bearer(short.token) })).status, 401);
});

test('redirect: blob GET and HEAD answer 307 to nginx on another port, which serves Range (206) and sees no Authorization', async (t) => {
  const reg = await startRegistry(t, { flavour: 'token', redirect: true });
  const ts = reg.tokenServer!;
  const bh = reg.blobHost!;
  t.truthy(bh);
  t.not(bh.host, reg.host);
  t.true(isAlive(bh.pid));
  const body = Buffer.alloc(3 * 1024 * 1024 + 17);
  for (let i = 0; i < body.length; i++) body[i] = (i * 31 + (i >> 12)) & 0xff;
  const tok = await token(ts, ['repository:redir/app:pull,push'], [reg.username!, reg.password!]);
  const digest = await pushBlob(reg, 'redir/app', body, bearer(tok.token));

  // Without a token the registry still refuses: the redirect comes only after authorization.
  t.is((await fetch(`${reg.url}/v2/redir/app/blobs/${digest}`, { redirect: 'manual' })).status, 401);
  const get = await fetch(`${reg.url}/v2/redir/app/blobs/${digest}`, { headers: bearer(tok.token), redirect: 'manual' });
  t.is(get.status, 307);
  await get.arrayBuffer();
  const location = get.headers.get('location')!;
  t.is(location, `http://${bh.host}${bh.blobPath(digest)}`);
  const head = await fetch(`${reg.url}/v2/redir/app/blobs/${digest}`, { method: 'HEAD', headers: bearer(tok.token), redirect: 'manual' });
  t.is(head.status, 307);
  t.is(head.headers.get('location'), location);

  // What a careful client does: follow to the storage host with Range and without credentials.
  const part = await fetch(location, { headers: { Range: 'bytes=1048570-1048600' } });
  t.is(part.status, 206);
  t.is(part.headers.get('content-range'), `bytes 1048570-1048600/${body.length}`);
  t.true(Buffer.from(await part.arrayBuffer()).equals(body.subarray(1048570, 1048601)));
  const tail = await fetch(location, { headers: { Range: 'bytes=-17' } });
  t.is(tail.status, 206);
  t.true(Buffer.from(await tail.arrayBuffer()).equals(body.subarray(body.length - 17)));
  const whole = await fetch(location);
  t.is(whole.status, 200);
  t.is(sha256(Buffer.from(await whole.arrayBuffer())), digest);
  t.is((await fetch(location, { method: 'HEAD' })).headers.get('content-length'), String(body.length));
  // Only blob data is served: the rest of the storage root is not.
  t.is((await fetch(`http://${bh.host}/docker/registry/v2/repositories/redir/app/_layers/`)).status, 404);
  t.is((await fetch(`http://${bh.host}/docker/registry/v2/blobs/sha256/00/${'0'.repeat(64)}/data`)).status, 404);
  // A client that leaks the header is visible in the log (as a boolean).
  await (await fetch(location, { headers: { Range: 'bytes=0-0', Authorization: bearer(tok.token).Authorization! } })).arrayBuffer();

  const log = await bh.requests();
  const blobGets = log.filter((r) => r.path === bh.blobPath(digest));
  t.deepEqual(blobGets.map((r) => [r.method, r.range ?? '', r.status, r.authorization]), [
    ['GET', 'bytes=1048570-1048600', 206, false],
    ['GET', 'bytes=-17', 206, false],
    ['GET', '', 200, false],
    ['HEAD', '', 200, false],
    ['GET', 'bytes=0-0', 206, true],
  ]);
  t.is(blobGets[0]!.bytes, 31);
  const logText = await readFile(`${reg.dir}/nginx/access.log`, 'utf8');
  t.false(logText.includes(tok.token), 'the access log never holds a credential');

  // restart keeps nginx; stop ends it.
  await reg.restart();
  t.is((await fetch(location, { method: 'HEAD' })).status, 200);
  const pid = bh.pid;
  await reg.stop();
  t.false(isAlive(pid));
});

test('redirect on a plain registry: fetch following the 307 gets the bytes from nginx', async (t) => {
  const reg = await startRegistry(t, { redirect: true });
  const body = Buffer.from('plain and redirected');
  const digest = await pushBlob(reg, 'p/app', body);
  const r = await fetch(`${reg.url}/v2/p/app/blobs/${digest}`, { headers: { Range: 'bytes=6-8' } });
  t.is(r.status, 206);
  t.is(r.url, `http://${reg.blobHost!.host}${reg.blobHost!.blobPath(digest)}`);
  t.is(Buffer.from(await r.arrayBuffer()).toString(), 'and');
  t.like((await reg.blobHost!.requests())[0], { method: 'GET', range: 'bytes=6-8', status: 206, authorization: false });
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

import test from 'ava';
import { chmod, readFile, readdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { startRegistry } from '../lab/registry.js';
import { cliEnv, runCli, tempDir } from '../lab/cli.js';
import { RemoteRegistry } from '../registry/remote.js';
import { packArtifact } from '../registry/pack.js';
import { pushArtifact } from '../registry/transfer.js';

function assertNoSecret(t: { false(v: boolean, m?: string): void }, text: string, secrets: string[]): void {
  for (const s of secrets) {
    t.false(text.includes(s), 'secret leaked');
    t.false(text.includes(Buffer.from(`regfs-user:${s}`).toString('base64')), 'basic credential leaked');
  }
}

test('token auth: login, push and pull through a Bearer challenge; tokens cached per scope', async (t) => {
  const reg = await startRegistry(t, { flavour: 'token' });
  const { env } = await cliEnv(t);
  const work = await tempDir(t);
  await writeFile(path.join(work, 'f.txt'), 'token-protected');
  const login = await runCli(['login', reg.host, '-u', reg.username!, '--password-stdin', '--debug'], { env, input: reg.password! });
  t.is(login.code, 0, login.stderr);
  const push = await runCli(['push', `${reg.host}/secure/app:v1`, 'f.txt', '--debug'], { cwd: work, env });
  t.is(push.code, 0, push.stderr);
  const out = await tempDir(t);
  const pull = await runCli(['pull', `${reg.host}/secure/app:v1`, '-o', out, '--debug'], { env });
  t.is(pull.code, 0, pull.stderr);
  t.is(await readFile(path.join(out, 'f.txt'), 'utf8'), 'token-protected');
  const all = [login, push, pull].map((r) => r.stdout + r.stderr).join('\n');
  t.regex(all, /http/, 'debug output is on');
  assertNoSecret(t, all, [reg.password!, ...reg.tokenServer!.issuedTokens]);
  // One token per scope per process: the pull asked the token server once.
  const pulls = reg.tokenServer!.requests.filter((r) => JSON.stringify(r.query).includes('secure/app:pull"') || JSON.stringify(r.query).includes('secure/app:pull]'));
  t.true(pulls.length <= 2, `token requests for pull: ${pulls.length}`);
});

test('token auth: wrong password exits 3 with no secret printed', async (t) => {
  const reg = await startRegistry(t, { flavour: 'token' });
  const { env } = await cliEnv(t);
  const wrong = 'not-the-password-123';
  const r = await runCli(['login', reg.host, '-u', reg.username!, '-p', wrong, '--debug'], { env });
  t.is(r.code, 3);
  t.regex(r.stderr, /rejected the credentials/);
  assertNoSecret(t, r.stdout + r.stderr, [wrong, reg.password!]);
  // Nothing was stored.
  const { configDir } = { configDir: env.DOCKER_CONFIG! };
  t.deepEqual(await readdir(configDir), []);
});

test('basic auth: wrong password exits 3, anonymous access says to log in', async (t) => {
  const reg = await startRegistry(t, { flavour: 'basic' });
  const { env } = await cliEnv(t);
  const r = await runCli(['repo', 'ls', reg.host, '-u', reg.username!, '-p', 'bad-pass-xyz', '--debug'], { env });
  t.is(r.code, 3);
  assertNoSecret(t, r.stdout + r.stderr, ['bad-pass-xyz']);
  const anon = await runCli(['repo', 'ls', reg.host], { env });
  t.is(anon.code, 3);
  t.regex(anon.stderr, new RegExp(`regfs login ${reg.host.replace(/\./g, '\\.')}`));
});

test('token auth: a refresh (identity) token is exchanged with an OAuth2 POST, and an expired token is renewed', async (t) => {
  const reg = await startRegistry(t, { flavour: 'token' });
  const ts = reg.tokenServer!;
  const refresh = 'refresh-' + Math.random().toString(36).slice(2);
  ts.refreshTokens.add(refresh);
  ts.tokenLifetimeSeconds = 2;
  const client = new RemoteRegistry(reg.host, { credentials: async () => ({ refreshToken: refresh }) });
  t.teardown(() => client.close());
  const repo = client.repository('oauth/app');
  const work = await tempDir(t);
  await writeFile(path.join(work, 'a'), 'a');
  const packed = await packArtifact({ files: [{ path: 'a' }], cwd: work });
  await pushArtifact(repo, packed, ['v1']);
  const posts = ts.requests.filter((r) => r.method === 'POST');
  t.true(posts.length >= 1);
  t.is(posts[0]!.form?.grant_type, 'refresh_token');
  t.is(posts[0]!.form?.refresh_token, refresh);
  t.true(ts.requests.every((r) => r.method === 'POST'), 'never falls back to GET with a refresh token');
  // With a 2 s lifetime the client renews before expiry instead of sending a stale token.
  await new Promise((r) => setTimeout(r, 2100));
  const beforeRenew = ts.requests.length;
  t.deepEqual(await repo.listTags(), ['v1']);
  t.true(ts.requests.length > beforeRenew, 'an expired token is renewed');
  // A long-lived token is cached: once the 2 s one has lapsed and a 300 s one is issued, no more token requests.
  ts.tokenLifetimeSeconds = 300;
  await new Promise((r) => setTimeout(r, 2100));
  await repo.listTags();
  const before = ts.requests.length;
  await repo.listTags();
  t.is(ts.requests.length, before, 'a cached token is reused');
});

test('credentials from a docker credential helper (credHelpers) and from the ACR token username', async (t) => {
  const reg = await startRegistry(t, { flavour: 'token' });
  const { env, configDir } = await cliEnv(t);
  const bin = await tempDir(t);
  const helper = path.join(bin, 'docker-credential-regfstest');
  await writeFile(
    helper,
    `#!/bin/sh\nread host\nif [ "$1" = get ] && [ "$host" = "${reg.host}" ]; then printf '{"Username":"${reg.username}","Secret":"${reg.password}"}'; exit 0; fi\necho "credentials not found in native keychain"; exit 1\n`,
  );
  await chmod(helper, 0o755);
  await writeFile(path.join(configDir, 'config.json'), JSON.stringify({ credHelpers: { [reg.host]: 'regfstest' } }));
  const work = await tempDir(t);
  await writeFile(path.join(work, 'h.txt'), 'helper');
  const r = await runCli(['push', `${reg.host}/helper/app:v1`, 'h.txt'], { cwd: work, env: { ...env, PATH: `${bin}:${process.env.PATH}` } });
  t.is(r.code, 0, r.stderr);

  // ACR stores a refresh token under the all-zero username; regfs must POST it as a refresh token.
  const refresh = 'acr-refresh-' + Math.random().toString(36).slice(2);
  reg.tokenServer!.refreshTokens.add(refresh);
  await writeFile(path.join(configDir, 'config.json'), JSON.stringify({ auths: { [reg.host]: { auth: Buffer.from(`00000000-0000-0000-0000-000000000000:${refresh}`).toString('base64') } } }));
  const n = reg.tokenServer!.requests.length;
  const tags = await runCli(['repo', 'tags', `${reg.host}/helper/app`], { env });
  t.is(tags.code, 0, tags.stderr);
  t.is(tags.stdout.trim(), 'v1');
  const used = reg.tokenServer!.requests.slice(n);
  t.true(used.some((u) => u.method === 'POST' && u.form?.refresh_token === refresh));
});

test('TLS: --ca-file trusts a private CA, without it the error says how to fix it, --insecure skips verification', async (t) => {
  const reg = await startRegistry(t, { flavour: 'tls' });
  const { env } = await cliEnv(t);
  const work = await tempDir(t);
  await writeFile(path.join(work, 'tls.txt'), 'over tls');
  const ok = await runCli(['push', `${reg.host}/tls/app:v1`, 'tls.txt', '--ca-file', reg.caFile!], { cwd: work, env });
  t.is(ok.code, 0, ok.stderr);
  const untrusted = await runCli(['repo', 'tags', `localhost:${reg.host.split(':')[1]}/tls/app`, '--plain-http'], { env });
  t.not(untrusted.code, 0, 'plain HTTP to a TLS port fails');
  // As ORAS: --insecure alone keeps plain HTTP on a loopback host; --plain-http=false (ORAS's spelling) asks for HTTPS.
  const plainOnLoopback = await runCli(['repo', 'tags', `${reg.host}/tls/app`, '--insecure'], { env });
  t.not(plainOnLoopback.code, 0, 'plain HTTP to a TLS port fails');
  const noCa = await runCli(['repo', 'tags', `${reg.host}/tls/app`, '--insecure', '--plain-http=false'], { env });
  t.is(noCa.code, 0, noCa.stderr);
  t.is(noCa.stdout.trim(), 'v1');
  const noCa2 = await runCli(['repo', 'tags', `${reg.host}/tls/app`, '--insecure', '--no-plain-http'], { env });
  t.is(noCa2.code, 0, noCa2.stderr);
  // HTTPS with only the system CAs refuses the private certificate, and says what to do.
  const strict = new RemoteRegistry(reg.host, { caFile: '/etc/ssl/certs/ca-certificates.crt' });
  t.teardown(() => strict.close());
  const err = await t.throwsAsync(strict.ping());
  t.regex(err!.message, /not trusted.*--ca-file/);
});

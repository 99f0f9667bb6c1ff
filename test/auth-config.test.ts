/**
 * Where credentials come from and how the client authenticates: credsStore helpers, --registry-config,
 * identity tokens in the config file, anonymous bearer tokens, re-authentication after a refused
 * token, and the http/https choice. Registry tests run Debian's docker-registry (startRegistry).
 */
import test, { type ExecutionContext } from 'ava';
import { existsSync } from 'node:fs';
import { chmod, readFile, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { startRegistry, type StartedRegistry } from '../lab/registry.js';
import { startFaultProxy } from '../lab/fault-proxy.js';
import { cliEnv, runCli, tempDir, type CliResult } from '../lab/cli.js';
import { RegistryTransport } from '../registry/http-client.js';
import { openSource } from '../registry/open.js';
import { RemoteRegistry } from '../registry/remote.js';
import { packArtifact } from '../registry/pack.js';
import { pushArtifact } from '../registry/transfer.js';

type T = { teardown(fn: () => unknown): void };

/** seed pushes one file `name` with `content` to repo:v1 as the registry's user (library client, no CLI). */
async function seed(t: T, reg: StartedRegistry, repo: string, name: string, content: string): Promise<void> {
  const user = reg.username!;
  const pass = reg.password!;
  const client = new RemoteRegistry(reg.host, { credentials: async () => ({ username: user, password: pass }) });
  t.teardown(() => client.close());
  const work = await tempDir(t);
  await writeFile(path.join(work, name), content);
  const packed = await packArtifact({ files: [{ path: name }], cwd: work });
  await pushArtifact(client.repository(repo), packed, ['v1']);
}

/** tagsAndPull runs `repo tags REPO` (expecting the one tag v1) and `pull REPO:v1`, checking the pulled file; it returns both results. */
async function tagsAndPull(t: ExecutionContext, env: Record<string, string>, repo: string, file: string, content: string, tagArgs: string[] = []): Promise<[CliResult, CliResult]> {
  const tags = await runCli(['repo', 'tags', repo, ...tagArgs], { env });
  t.is(tags.code, 0, tags.stderr);
  t.is(tags.stdout.trim(), 'v1');
  const out = await tempDir(t);
  const pull = await runCli(['pull', `${repo}:v1`, '-o', out], { env });
  t.is(pull.code, 0, pull.stderr);
  t.is(await readFile(path.join(out, file), 'utf8'), content);
  return [tags, pull];
}

/** noSecret checks that CLI output never shows a secret (without printing it on failure). */
function noSecret(t: { true(v: boolean, m?: string): void }, text: string, secrets: string[]): void {
  for (const s of secrets) t.true(!text.includes(s), 'a secret was printed');
}

test('credsStore: with only "credsStore" in config.json, push and pull ask docker-credential-<name> and need no login', async (t) => {
  const reg = await startRegistry(t, { flavour: 'basic' });
  const { env, configDir } = await cliEnv(t);
  const bin = await tempDir(t, 'regfs-helper-');
  const log = path.join(bin, 'calls.log');
  const helper = path.join(bin, 'docker-credential-regfsstore');
  await writeFile(
    helper,
    [
      '#!/bin/sh',
      'host=$(cat)',
      `printf '%s %s\\n' "$1" "$host" >> '${log}'`,
      `if [ "$1" = get ] && [ "$host" = '${reg.host}' ]; then printf '%s' '{"ServerURL":"${reg.host}","Username":"${reg.username}","Secret":"${reg.password}"}'; exit 0; fi`,
      'echo "credentials not found in native keychain"; exit 1',
      '',
    ].join('\n'),
  );
  await chmod(helper, 0o755);
  await writeFile(path.join(configDir, 'config.json'), JSON.stringify({ credsStore: 'regfsstore' }));
  const helperEnv = { ...env, PATH: `${bin}:${process.env.PATH ?? ''}` };

  const work = await tempDir(t);
  await writeFile(path.join(work, 'store.txt'), 'from the creds store');
  const push = await runCli(['push', `${reg.host}/store/app:v1`, 'store.txt', '--debug'], { cwd: work, env: helperEnv });
  t.is(push.code, 0, push.stderr);
  const afterPush = (await readFile(log, 'utf8')).trim().split('\n');
  t.true(afterPush.length >= 1);
  t.deepEqual([...new Set(afterPush)], [`get ${reg.host}`], 'the helper was asked for this host only, with "get"');

  const out = await tempDir(t);
  const pull = await runCli(['pull', `${reg.host}/store/app:v1`, '-o', out], { env: helperEnv });
  t.is(pull.code, 0, pull.stderr);
  t.is(await readFile(path.join(out, 'store.txt'), 'utf8'), 'from the creds store');
  const afterPull = (await readFile(log, 'utf8')).trim().split('\n');
  t.true(afterPull.length > afterPush.length, 'the pull asked the helper too');
  noSecret(t, [push, pull].map((r) => r.stdout + r.stderr).join('\n'), [reg.password!]);

  // Control: the same pull without the helper's answer is refused (so the success above came from the helper).
  await writeFile(path.join(configDir, 'config.json'), '{}');
  const anon = await runCli(['pull', `${reg.host}/store/app:v1`, '-o', await tempDir(t)], { env: helperEnv });
  t.is(anon.code, 3, anon.stderr);
});

test('--registry-config FILE: login writes FILE (0600) and not $DOCKER_CONFIG; push/tags with it work, without it exit 3; logout removes the entry', async (t) => {
  const reg = await startRegistry(t, { flavour: 'basic' });
  const { env, configDir } = await cliEnv(t);
  const cfgDir = await tempDir(t, 'regfs-altcfg-');
  const file = path.join(cfgDir, 'sub', 'creds.json');

  const login = await runCli(['login', reg.host, '-u', reg.username!, '--password-stdin', '--registry-config', file], { env, input: reg.password! });
  t.is(login.code, 0, login.stderr);
  t.is((await stat(file)).mode & 0o777, 0o600);
  t.false(existsSync(path.join(configDir, 'config.json')), 'nothing written to $DOCKER_CONFIG/config.json');
  const saved = JSON.parse(await readFile(file, 'utf8')) as { auths?: Record<string, { auth?: string }> };
  const auth = saved.auths?.[reg.host]?.auth ?? '';
  t.true(Buffer.from(auth, 'base64').toString('utf8') === `${reg.username!}:${reg.password!}`, 'FILE holds the credential for the host');

  const work = await tempDir(t);
  await writeFile(path.join(work, 'alt.txt'), 'alt config');
  const push = await runCli(['push', `${reg.host}/alt/app:v1`, 'alt.txt', '--registry-config', file], { cwd: work, env });
  t.is(push.code, 0, push.stderr);
  const tags = await runCli(['repo', 'tags', `${reg.host}/alt/app`, '--registry-config', file], { env });
  t.is(tags.code, 0, tags.stderr);
  t.is(tags.stdout.trim(), 'v1');

  const without = await runCli(['repo', 'tags', `${reg.host}/alt/app`], { env });
  t.is(without.code, 3, without.stderr);

  const logout = await runCli(['logout', reg.host, '--registry-config', file], { env });
  t.is(logout.code, 0, logout.stderr);
  t.regex(logout.stdout, /Removed login credentials/);
  const after = JSON.parse(await readFile(file, 'utf8')) as { auths?: Record<string, unknown> };
  t.false(reg.host in (after.auths ?? {}), 'the entry is gone from FILE');
  const afterLogout = await runCli(['repo', 'tags', `${reg.host}/alt/app`, '--registry-config', file], { env });
  t.is(afterLogout.code, 3, afterLogout.stderr);
  noSecret(t, [login, push, tags, without, logout, afterLogout].map((r) => r.stdout + r.stderr).join('\n'), [reg.password!]);
});

test('identitytoken in config.json (no username/password): tags and pull exchange it with an OAuth2 refresh_token POST', async (t) => {
  const reg = await startRegistry(t, { flavour: 'token' });
  const ts = reg.tokenServer!;
  await seed(t, reg, 'idt/app', 'idt.txt', 'identity token');

  // Obtain a refresh token the way docker does: a Basic-authenticated GET with offline_token=true.
  const u = new URL(ts.url);
  u.searchParams.set('service', 'regfs-test-registry');
  u.searchParams.set('offline_token', 'true');
  u.searchParams.set('client_id', 'regfs-test');
  const got = await fetch(u, { headers: { Authorization: `Basic ${Buffer.from(`${reg.username!}:${reg.password!}`).toString('base64')}` } });
  t.is(got.status, 200);
  const refresh = ((await got.json()) as { refresh_token?: string }).refresh_token;
  t.true(typeof refresh === 'string' && refresh.length > 0 && ts.refreshTokens.has(refresh), 'the token server issued a refresh token');

  const { env, configDir } = await cliEnv(t);
  await writeFile(path.join(configDir, 'config.json'), JSON.stringify({ auths: { [reg.host]: { identitytoken: refresh } } }));
  const n = ts.requests.length;
  const [tags, pull] = await tagsAndPull(t, env, `${reg.host}/idt/app`, 'idt.txt', 'identity token');

  const used = ts.requests.slice(n);
  t.true(used.length >= 2, `token requests: ${used.length}`);
  t.true(used.every((r) => r.method === 'POST' && r.form?.grant_type === 'refresh_token'), 'every token request is an OAuth2 refresh_token POST');
  t.true(used.every((r) => r.form?.refresh_token === refresh), 'the POSTs carry the identity token from config.json');
  t.true(used.every((r) => r.authorization === undefined), 'no Basic credentials were sent');
  t.true(used.some((r) => r.form?.scope === 'repository:idt/app:pull'));
  noSecret(t, [tags, pull].map((r) => r.stdout + r.stderr).join('\n'), [refresh!]);
});

test('anonymous bearer: with an empty config, repo tags and pull get a pull token by a GET without Authorization', async (t) => {
  const reg = await startRegistry(t, { flavour: 'token' });
  const ts = reg.tokenServer!;
  await seed(t, reg, 'public/app', 'pub.txt', 'anonymous pull');
  const { env, configDir } = await cliEnv(t);
  t.false(existsSync(path.join(configDir, 'config.json')));

  const n = ts.requests.length;
  await tagsAndPull(t, env, `${reg.host}/public/app`, 'pub.txt', 'anonymous pull', ['--debug']);

  const used = ts.requests.slice(n);
  t.true(used.length >= 2, `token requests: ${used.length}`);
  t.true(used.every((r) => r.method === 'GET'), 'anonymous token requests are GETs');
  t.true(used.every((r) => r.authorization === undefined), 'no Authorization header on the token request');
  t.true(used.every((r) => r.query.service === 'regfs-test-registry'));
  t.true(used.some((r) => ([] as string[]).concat(r.query.scope ?? []).includes('repository:public/app:pull')));
});

test('re-auth: a cached bearer token refused with 401 + challenge is dropped, a new token is fetched and the pull succeeds', async (t) => {
  const reg = await startRegistry(t, { flavour: 'token' });
  const ts = reg.tokenServer!;
  // Anonymous pull: the token server grants it under public/ only.
  await seed(t, reg, 'public/re', 're.txt', 'reauth');
  const proxy = await startFaultProxy(t, reg.url);
  const { env } = await cliEnv(t);

  // The registry's own challenge for this repository, replayed by the proxy.
  const probe = await fetch(`${reg.url}/v2/public/re/tags/list`);
  await probe.arrayBuffer();
  t.is(probe.status, 401);
  const challenge = probe.headers.get('www-authenticate') ?? '';
  t.regex(challenge, /^Bearer realm=.*scope="repository:public\/re:pull"/);

  // Baseline: how many token requests one pull makes when nothing is refused.
  let n = ts.requests.length;
  const base = await runCli(['pull', `${proxy.host}/public/re:v1`, '-o', await tempDir(t)], { env });
  t.is(base.code, 0, base.stderr);
  const baseline = ts.requests.length - n;
  t.true(baseline >= 1);

  // The blob GET goes out with the token cached by the manifest GET: refuse it once.
  proxy.reset();
  proxy.rules.push({ method: 'GET', path: /\/v2\/public\/re\/blobs\/sha256:/, times: 1, status: 401, headers: { 'WWW-Authenticate': challenge } });
  n = ts.requests.length;
  const out = await tempDir(t);
  const pull = await runCli(['pull', `${proxy.host}/public/re:v1`, '-o', out], { env });
  t.is(pull.code, 0, pull.stderr);
  t.is(await readFile(path.join(out, 're.txt'), 'utf8'), 'reauth');
  t.is(ts.requests.length - n, baseline + 1, 'exactly one extra token request after the refusal');

  const blobGets = proxy.requests.filter((r) => r.method === 'GET' && /\/blobs\//.test(r.path));
  t.is(blobGets.length, 2);
  t.is(blobGets[0]!.rule, 0);
  t.is(blobGets[0]!.status, 401);
  t.is(blobGets[1]!.status, 200);
  const refused = String(blobGets[0]!.headers.authorization ?? '');
  const retried = String(blobGets[1]!.headers.authorization ?? '');
  t.true(refused.startsWith('Bearer '), 'the refused request carried the cached token');
  t.true(retried.startsWith('Bearer '), 'the retry carried a token');
  t.true(refused !== retried, 'the retry used a different token');
  t.true(retried === `Bearer ${ts.issuedTokens[ts.issuedTokens.length - 1]!}`, 'the retry used the newest token issued');
});

test('scheme: a non-loopback host is https:// by default and http:// with plainHttp (--plain-http); loopback hosts are http:// without it', async (t) => {
  const base = (host: string, opts: ConstructorParameters<typeof RegistryTransport>[1] = {}): string => {
    const tr = new RegistryTransport(host, opts);
    t.teardown(() => tr.close());
    return tr.base.toString();
  };
  t.is(base('registry.example.invalid'), 'https://registry.example.invalid/');
  t.is(base('registry.example.invalid:5000'), 'https://registry.example.invalid:5000/');
  t.is(base('registry.example.invalid', { plainHttp: true }), 'http://registry.example.invalid/');
  t.is(base('10.1.2.3:5000'), 'https://10.1.2.3:5000/');
  t.is(base('127.0.0.1:5000'), 'http://127.0.0.1:5000/');
  t.is(base('127.9.8.7:5000'), 'http://127.9.8.7:5000/');
  t.is(base('localhost:5000'), 'http://localhost:5000/');
  t.is(base('[::1]:5000'), 'http://[::1]:5000/');
  // As ORAS: --insecure keeps plain HTTP on a loopback host; a CA file or plainHttp false selects https.
  t.is(base('localhost:5000', { insecure: true }), 'http://localhost:5000/');
  t.is(base('localhost:5000', { caFile: '/etc/ssl/certs/ca-certificates.crt' }), 'https://localhost:5000/');
  t.is(base('127.0.0.1:5000', { plainHttp: false, insecure: true }), 'https://127.0.0.1:5000/');

  // The CLI path: openSource receives the parsed --plain-http flag and builds the same transport.
  const viaCli = (source: string, plainHttp?: boolean): string => {
    const r = openSource(source, { plainHttp, credentials: async () => undefined }) as RemoteRegistry;
    t.teardown(() => r.close());
    t.true(r instanceof RemoteRegistry);
    return new URL('/v2/', r.transport.base).toString();
  };
  t.is(viaCli('registry.example.invalid'), 'https://registry.example.invalid/v2/');
  t.is(viaCli('registry.example.invalid', true), 'http://registry.example.invalid/v2/');
  t.is(viaCli('localhost:5000'), 'http://localhost:5000/v2/');
});

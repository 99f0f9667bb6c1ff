import test from 'ava';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { startRegistry } from '../lab/registry.js';
import { startForwardProxy } from '../lab/forward-proxy.js';
import { cliEnv, runCli, tempDir } from '../lab/cli.js';

test('HTTP_PROXY reaches a registry name only the proxy resolves; NO_PROXY bypasses it', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const { env } = await cliEnv(t);
  const src = await tempDir(t);
  await writeFile(path.join(src, 'a.txt'), 'through the proxy');
  t.is((await runCli(['push', `${reg.host}/team/app:v1`, 'a.txt'], { cwd: src, env })).code, 0);
  const port = reg.host.split(':')[1]!;
  const fwd = await startForwardProxy(t, { hosts: { 'registry.invalid': '127.0.0.1' } });
  const proxied = { ...env, HTTP_PROXY: fwd.url, NO_PROXY: '' };

  const out = await tempDir(t);
  const pull = await runCli(['pull', `registry.invalid:${port}/team/app:v1`, '-o', out, '--plain-http'], { env: proxied });
  t.is(pull.code, 0, pull.stderr);
  t.is(await readFile(path.join(out, 'a.txt'), 'utf8'), 'through the proxy');
  t.true(fwd.requests.length > 0);
  t.true(fwd.requests.every((r) => r.target === `registry.invalid:${port}` && r.status === 200), JSON.stringify(fwd.requests));

  // Without the proxy the name does not resolve.
  const direct = await runCli(['pull', `registry.invalid:${port}/team/app:v1`, '-o', await tempDir(t), '--plain-http'], { env });
  t.not(direct.code, 0);

  // Loopback is never proxied (as Go clients do); NO_PROXY names bypass the proxy too.
  const before = fwd.requests.length;
  const out2 = await tempDir(t);
  const loop = await runCli(['pull', `${reg.host}/team/app:v1`, '-o', out2], { env: proxied });
  t.is(loop.code, 0, loop.stderr);
  t.is(await readFile(path.join(out2, 'a.txt'), 'utf8'), 'through the proxy');
  t.is(fwd.requests.length, before);
  const bypass = await runCli(['pull', `registry.invalid:${port}/team/app:v1`, '-o', await tempDir(t), '--plain-http'], { env: { ...proxied, NO_PROXY: '.invalid' } });
  t.not(bypass.code, 0, 'bypassing the proxy, the name does not resolve');
  t.regex(bypass.stderr, /cannot reach registry\.invalid/);
  t.is(fwd.requests.length, before);
});

test('HTTPS_PROXY tunnels TLS to the registry; the registry certificate is still verified inside the tunnel', async (t) => {
  const reg = await startRegistry(t, { flavour: 'tls' });
  const { env } = await cliEnv(t);
  const port = reg.host.split(':')[1]!;
  const fwd = await startForwardProxy(t, { hosts: { 'registry.invalid': '127.0.0.1' } });
  const proxied = { ...env, HTTPS_PROXY: fwd.url, NO_PROXY: '' };
  const src = await tempDir(t);
  await writeFile(path.join(src, 'b.txt'), 'tunnelled');
  const push = await runCli(['push', `registry.invalid:${port}/team/tls:v1`, 'b.txt', '--ca-file', reg.caFile!], { cwd: src, env: proxied });
  t.is(push.code, 0, push.stderr);
  t.true(fwd.requests.some((r) => r.kind === 'connect' && r.target === `registry.invalid:${port}` && r.status === 200), JSON.stringify(fwd.requests));
  const before = fwd.requests.length;
  const untrusted = await runCli(['pull', `registry.invalid:${port}/team/tls:v1`, '-o', await tempDir(t), '--ca-file', '/etc/ssl/certs/ca-certificates.crt'], { env: proxied });
  t.not(untrusted.code, 0);
  t.regex(untrusted.stderr, /certificate of registry\.invalid:\d+ is not trusted/);
  t.true(fwd.requests.length > before, 'that attempt went through the proxy too');
});

import test from 'ava';
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { startRegistry } from '../lab/registry.js';
import { cliEnv, runCli, tempDir } from '../lab/cli.js';
import { startDaemon } from '../lab/daemon.js';
import { invalidateCredentials, type Credential } from '../registry/credentials.js';
import { packArtifact } from '../registry/pack.js';
import { RemoteRegistry } from '../registry/remote.js';
import { pushArtifact } from '../registry/transfer.js';

const exec = promisify(execFile);
const sha = (b: Buffer | string): string => createHash('sha256').update(b).digest('hex');
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function pushOne(repo: ReturnType<RemoteRegistry['repository']>, dir: string, name: string, tag: string): Promise<void> {
  await writeFile(path.join(dir, name), `content of ${name}`);
  const packed = await packArtifact({ files: [{ path: name }], cwd: dir });
  await pushArtifact(repo, packed, [tag]);
}

test('a refused credential is read again once: a password changed behind a running client works without a restart', async (t) => {
  const reg = await startRegistry(t, { flavour: 'token' });
  const ts = reg.tokenServer!;
  ts.tokenLifetimeSeconds = 2;
  let cred: Credential = { username: reg.username!, password: reg.password! };
  let reads = 0;
  const client = new RemoteRegistry(reg.host, { credentials: async () => (reads++, cred) });
  t.teardown(() => client.close());
  const work = await tempDir(t);
  await pushOne(client.repository('rot/app'), work, 'a', 'v1');
  t.is(reads, 1, 'the credential is read once while it works');
  ts.setPassword(reg.username!, 'changed-password-1');
  cred = { username: reg.username!, password: 'changed-password-1' };
  await sleep(2200); // the tokens got with the old password expire
  await pushOne(client.repository('rot/app'), work, 'b', 'v2');
  t.is(reads, 2, 'the refusal made the client read the credential again');
  // invalidateCredentials (SIGHUP, regfs retry) makes it read again before the next token.
  invalidateCredentials(reg.host);
  t.deepEqual(await client.repository('rot/app').listTags(), ['v1', 'v2']);
  t.is(reads, 3);
  // A credential that is still wrong after the re-read fails with UNAUTHORIZED, reading once more only.
  ts.setPassword(reg.username!, 'changed-password-2');
  await sleep(2200);
  const err = await t.throwsAsync(client.repository('rot/app').listTags());
  t.regex(err!.message, /rejected the credentials: run regfs login/);
  t.is(reads, 4);
});

test('daemon: a push refused after a password change succeeds after regfs login and regfs retry, without a restart; skopeo reads it', async (t) => {
  const reg = await startRegistry(t, { flavour: 'token' });
  const ts = reg.tokenServer!;
  ts.tokenLifetimeSeconds = 3;
  const { env } = await cliEnv(t);
  const login = (pw: string) => runCli(['login', reg.host, '-u', reg.username!, '--password-stdin'], { env, input: pw });
  t.is((await login(reg.password!)).code, 0);
  const d = await startDaemon(t, { source: reg.host, env });
  const stage = async (tag: string, body: string): Promise<string> => {
    const dir = path.join(d.dirs.staging, 'team/app', tag);
    await mkdir(dir, { recursive: true });
    await writeFile(path.join(dir, 'app.txt'), body);
    return dir;
  };
  await stage('v1', 'first');
  await d.waitLog(/pushed team\/app:v1/);

  // The password changes (rotation); the daemon's tokens expire; the next push is refused.
  const pw2 = 'rotated-password-42';
  ts.setPassword(reg.username!, pw2);
  await sleep(3500);
  await stage('v2', 'second');
  await d.waitLog(/push of team\/app:v2 failed/);
  t.false(/pushed team\/app:v2/.test(d.logs()));

  t.is((await login(pw2)).code, 0);
  const retry = await runCli(['retry', '--socket', d.dirs.socket], { env });
  t.is(retry.code, 0, retry.stderr);
  await d.waitLog(/pushed team\/app:v2/, 60_000);
  t.false(d.logs().includes(pw2) || d.logs().includes(reg.username! + ':'), 'no credential in the log');
  for (const tok of ts.issuedTokens) t.false(d.logs().includes(tok), 'no token in the log');

  // skopeo, an independent client, reads what the daemon pushed, with the new credentials.
  const { stdout } = await exec('skopeo', ['--insecure-policy', 'inspect', '--raw', '--tls-verify=false', '--creds', `${reg.username!}:${pw2}`, `docker://${reg.host}/team/app:v2`]);
  const manifest = JSON.parse(stdout) as { layers: Array<{ digest: string; size: number }> };
  t.deepEqual(manifest.layers.map((l) => [l.digest, l.size]), [[`sha256:${sha('second')}`, 6]]);
  const st = await runCli(['status', '--socket', d.dirs.socket, '--format', 'json'], { env });
  const item = (JSON.parse(st.stdout) as { queue: Array<{ tag: string; state: string; pushedDigest?: string }> }).queue.find((q) => q.tag === 'v2');
  t.is(item?.state, 'done');
  t.is(item?.pushedDigest, `sha256:${sha(stdout)}`);
});

import test from 'ava';
import { readFile, writeFile, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { startRegistry } from '../lab/registry.js';
import { cliEnv, runCli, tempDir } from '../lab/cli.js';

// The walk-through of "Push and pull OCI artifacts using an Azure container registry", word for
// word with regfs in place of oras (and of `az acr repository show/delete`), against a registry
// with Basic authentication.
test('the Azure article walk-through works with regfs in place of oras', async (t) => {
  const reg = await startRegistry(t, { flavour: 'basic' });
  const { env, configDir } = await cliEnv(t);
  const work = await tempDir(t);
  const run = (args: string[], input?: string) => runCli(args, { cwd: work, env, input });

  await writeFile(path.join(work, 'artifact.txt'), 'Here is an artifact!\n');

  const login = await run(['login', reg.host, '--username', reg.username!, '--password-stdin'], reg.password!);
  t.is(login.code, 0, login.stderr);
  t.regex(login.stdout, /Login Succeeded/);
  const cfgFile = path.join(configDir, 'config.json');
  t.is((await stat(cfgFile)).mode & 0o777, 0o600);
  t.false(login.stdout.includes(reg.password!) || login.stderr.includes(reg.password!));

  const push = await run([
    'push',
    `${reg.host}/samples/artifact:1.0`,
    '--manifest-config',
    '/dev/null:application/vnd.unknown.config.v1+json',
    './artifact.txt:application/vnd.unknown.layer.v1+txt',
  ]);
  t.is(push.code, 0, push.stderr);
  t.regex(push.stdout, /Uploading\s+[0-9a-f]{12} artifact\.txt/);
  t.regex(push.stdout, /Digest: sha256:[0-9a-f]{64}/);

  const show = await run(['repo', 'show', `${reg.host}/samples/artifact:1.0`]);
  t.is(show.code, 0, show.stderr);
  const info = JSON.parse(show.stdout) as { name: string; digest: string; mediaType: string; artifactType: string };
  t.is(info.name, 'samples/artifact:1.0');
  t.is(info.artifactType, 'application/vnd.unknown.config.v1+json');
  t.true(push.stdout.includes(info.digest));

  await rm(path.join(work, 'artifact.txt'));

  const pull = await run(['pull', `${reg.host}/samples/artifact:1.0`, '--media-type', 'application/vnd.unknown.layer.v1+txt']);
  t.is(pull.code, 0, pull.stderr);
  t.is(await readFile(path.join(work, 'artifact.txt'), 'utf8'), 'Here is an artifact!\n');

  const del = await run(['repo', 'delete', `${reg.host}/samples/artifact:1.0`, '--force']);
  t.is(del.code, 0, del.stderr);
  const tags = await run(['repo', 'tags', `${reg.host}/samples/artifact`, '--format', 'json']);
  t.is(tags.code, 0, tags.stderr);
  t.deepEqual((JSON.parse(tags.stdout) as { tags: string[] }).tags, []);
  const gone = await run(['resolve', `${reg.host}/samples/artifact:1.0`]);
  t.is(gone.code, 4);

  const logout = await run(['logout', reg.host]);
  t.is(logout.code, 0);
  const after = await run(['repo', 'tags', `${reg.host}/samples/artifact`]);
  t.is(after.code, 3, 'without credentials the registry refuses: exit 3');
  t.regex(after.stderr, /regfs login/);
});

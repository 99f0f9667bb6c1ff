import test from 'ava';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { startRegistry } from '../lab/registry.js';
import { cliEnv, runCli, tempDir } from '../lab/cli.js';

test('a push the token does not grant (insufficient_scope) is one clear line and exit 3; pulling still works', async (t) => {
  const reg = await startRegistry(t, { flavour: 'token' });
  const ts = reg.tokenServer!;
  const { env } = await cliEnv(t);
  const work = await tempDir(t);
  await writeFile(path.join(work, 'f.txt'), 'readable');
  t.is((await runCli(['login', reg.host, '-u', reg.username!, '--password-stdin'], { env, input: reg.password! })).code, 0);
  t.is((await runCli(['push', `${reg.host}/team/app:v1`, 'f.txt'], { cwd: work, env })).code, 0);

  ts.addUser('reader', 'reader-pass-1', { 'team/*': ['pull'] });
  const login = await runCli(['login', reg.host, '-u', 'reader', '--password-stdin'], { env, input: 'reader-pass-1' });
  t.is(login.code, 0, login.stderr);
  const push = await runCli(['push', `${reg.host}/team/app:v2`, 'f.txt'], { cwd: work, env });
  t.log(push.stderr.trim());
  t.is(push.code, 3, push.stderr);
  t.regex(push.stderr, /insufficient_scope/);
  t.regex(push.stderr, /repository:team\/app:pull,push/);
  t.regex(push.stderr, /not allowed/);
  t.is(push.stderr.trim().split('\n').length, 1, push.stderr);
  t.false(push.stderr.includes('reader-pass-1'));
  // The same login still reads.
  const out = await tempDir(t);
  const pull = await runCli(['pull', `${reg.host}/team/app:v1`, '-o', out], { env });
  t.is(pull.code, 0, pull.stderr);
});

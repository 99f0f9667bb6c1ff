import test from 'ava';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { startRegistry } from '../lab/registry.js';
import { refuseCatalog, startFaultProxy } from '../lab/fault-proxy.js';
import { cliEnv, runCli, tempDir } from '../lab/cli.js';
import { RemoteRegistry } from '../registry/remote.js';

test('tokens are cached per scope set: reading many repositories many times asks the token service once per repository', async (t) => {
  const reg = await startRegistry(t, { flavour: 'token' });
  const ts = reg.tokenServer!;
  const { env } = await cliEnv(t);
  const src = await tempDir(t);
  await writeFile(path.join(src, 'a.txt'), 'a');
  t.is((await runCli(['login', reg.host, '-u', reg.username!, '--password-stdin'], { env, input: reg.password! })).code, 0);
  const repos = ['team/one', 'team/two', 'team/three', 'public/four'];
  for (const r of repos) t.is((await runCli(['push', `${reg.host}/${r}:v1`, 'a.txt'], { cwd: src, env })).code, 0);

  const client = new RemoteRegistry(reg.host, { credentials: async () => ({ username: reg.username!, password: reg.password! }) });
  t.teardown(() => client.close());
  const before = ts.issued.length;
  for (let round = 0; round < 10; round++) {
    await Promise.all(repos.map(async (r) => {
      const repo = client.repository(r);
      const m = await repo.fetchManifest('v1');
      await repo.listTags();
      if (m.manifest.kind === 'manifest') await repo.statBlob(m.manifest.layers[0]!.digest);
    }));
  }
  t.is(ts.issued.length - before, repos.length, JSON.stringify(ts.tokensPerScope()));
  t.is(client.stats().tokenRequests, repos.length);

  // Anonymous: a pull token for the public namespace, none for the rest.
  const anon = new RemoteRegistry(reg.host);
  t.teardown(() => anon.close());
  t.deepEqual(await anon.repository('public/four').listTags(), ['v1']);
  const denied = await t.throwsAsync(anon.repository('team/one').listTags());
  t.regex(denied!.message, /authentication required|refused|denied/i);
  t.is(ts.issued.filter((i) => i.sub === '').length >= 2, true);
});

test('a catalog refused with a Bearer challenge of another realm does not make every later request ask that realm', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const { env } = await cliEnv(t);
  const src = await tempDir(t);
  await writeFile(path.join(src, 'a.txt'), 'catalog-free');
  t.is((await runCli(['push', `${reg.host}/team/app:v1`, 'a.txt'], { cwd: src, env })).code, 0);
  const proxy = await startFaultProxy(t, reg.url);
  proxy.rules.push(refuseCatalog('challenge'));
  const client = new RemoteRegistry(proxy.host, { retries: 0 });
  t.teardown(() => client.close());
  await t.throwsAsync(client.listRepositories());
  // The repository is still reachable by path, anonymously, with no token request anywhere.
  t.deepEqual(await client.repository('team/app').listTags(), ['v1']);
  const m = await client.repository('team/app').fetchManifest('v1');
  t.is(m.manifest.kind, 'manifest');
  t.is(client.stats().tokenRequests, 1, 'only the catalog asked for a token');
  await t.throwsAsync(client.listRepositories());
});

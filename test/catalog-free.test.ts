/**
 * A mount never depends on the catalog: registries that refuse `/v2/_catalog` (404 as Docker Hub and
 * GHCR, 401 without or with a Bearer challenge) are mounted through the fault proxy, and every
 * repository stays reachable by its path; mount sources narrow the root to a namespace, a repository
 * or one artifact. Real registry, real FUSE.
 */
import test, { type ExecutionContext } from 'ava';
import { mkdir, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { cliEnv, runCli, tempDir } from '../lab/cli.js';
import { startDaemon, waitFor } from '../lab/daemon.js';
import { CATALOG_PATH, refuseCatalog, startFaultProxy, type CatalogRefusal } from '../lab/fault-proxy.js';
import { sh, startMount } from '../lab/mount.js';
import { freePort, startRegistry } from '../lab/registry.js';
import { skopeoInspect } from '../lab/skopeo.js';

const tagsPath = (repo: string): RegExp => new RegExp(`^/v2/${repo.replace(/[.]/g, '\\.')}/tags/list(\\?|$)`);

/** seed pushes three artifacts straight to the registry: samples/artifact:1.0, samples/artifact:2.0 and team/app/web:v1. */
async function seed(t: ExecutionContext, host: string): Promise<{ src: string; env: Record<string, string> }> {
  const { env } = await cliEnv(t);
  const src = await tempDir(t);
  await writeFile(path.join(src, 'artifact.txt'), 'Here is an artifact!\n');
  await mkdir(path.join(src, 'site/css'), { recursive: true });
  await writeFile(path.join(src, 'site/index.html'), '<html>hi</html>\n');
  await writeFile(path.join(src, 'site/css/a.css'), 'body{}\n');
  await writeFile(path.join(src, 'big.bin'), Buffer.alloc(2 * 1024 * 1024 + 5, 7));
  for (const [ref, files] of [['samples/artifact:1.0', ['artifact.txt']], ['samples/artifact:2.0', ['artifact.txt', 'big.bin']], ['team/app/web:v1', ['site', 'artifact.txt']]] as const) {
    const r = await runCli(['push', `${host}/${ref}`, ...files], { cwd: src, env });
    t.is(r.code, 0, r.stderr);
  }
  return { src, env };
}

test('catalog refused with 404: ls, cat and find work by path, byte for byte; the root lists found repositories; a missing path is ENOENT after one probe', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const { src } = await seed(t, reg.host);
  const proxy = await startFaultProxy(t, reg.url);
  proxy.rules.push(refuseCatalog('not-found'));
  const m = await startMount(t, proxy.host, { args: ['--metadata-ttl', '300'] });

  // The root is a folder, empty at first: nothing lists, nothing is an error.
  t.true((await stat(m.mnt)).isDirectory());
  t.deepEqual(await readdir(m.mnt), []);
  // By path: the namespace folder, the repository, its tags, the files.
  t.is(await readFile(path.join(m.mnt, 'samples/artifact/1.0/artifact.txt'), 'utf8'), 'Here is an artifact!\n');
  t.deepEqual(await readdir(path.join(m.mnt, 'samples/artifact')), ['1.0', '2.0']);
  t.is((await sh(`cmp ${src}/big.bin ${m.mnt}/samples/artifact/2.0/big.bin`)).code, 0);
  const find = await sh(`cd ${m.mnt}/team/app/web/v1 && find . | sort`);
  t.deepEqual(find.stdout.trim().split('\n'), ['.', './artifact.txt', './site', './site/css', './site/css/a.css', './site/index.html']);
  t.is((await sh(`diff -r ${src}/site ${m.mnt}/team/app/web/v1/site`)).code, 0);
  // Found repositories now show at the root and in their namespace folders.
  t.deepEqual(await readdir(m.mnt), ['samples', 'team']);
  t.deepEqual(await readdir(path.join(m.mnt, 'samples')), ['artifact']);

  // Unknown names below a folder that is not a repository are possible namespaces (empty folders),
  // two levels deep; below a repository, or deeper, a name that is no repository is ENOENT. One
  // tag-list probe per unknown name, none on a repeat (TTL).
  t.deepEqual(await readdir(path.join(m.mnt, 'samples/nothing')), []);
  t.is((await sh(`getfattr --only-values -n user.regfs.namespace ${m.mnt}/samples/nothing`)).stdout, 'possible');
  proxy.reset();
  for (let i = 0; i < 5; i++) {
    for (const missing of ['samples/artifact/9.9', 'nope/nada/zilch']) {
      const r = await sh(`stat ${m.mnt}/${missing}`);
      t.not(r.code, 0);
      t.regex(r.stderr, /No such file or directory/);
    }
  }
  t.is(proxy.count('GET', tagsPath('samples/artifact/9.9')), 1, 'one probe per unknown path per TTL');
  t.is(proxy.count('GET', tagsPath('nope/nada/zilch')), 1, 'one probe per unknown path per TTL');
  t.is(proxy.count('GET', tagsPath('nope')), 1);
  // An invalid repository path is ENOENT without any request.
  proxy.reset();
  t.regex((await sh(`stat ${m.mnt}/samples/Upper_Case`)).stderr, /No such file or directory/);
  t.regex((await sh(`stat ${m.mnt}/-x`)).stderr, /No such file or directory/);
  t.is(proxy.requests.filter((r) => /Upper_Case|\/-x/.test(r.path)).length, 0);
  // A blob's digest below a repository is no folder: ENOENT, not EIO.
  const v2 = await sh(`getfattr --only-values -n user.oci.digest ${m.mnt}/samples/artifact/2.0/big.bin`);
  t.regex(v2.stdout, /^sha256:[0-9a-f]{64}$/);
  t.regex((await sh(`ls ${m.mnt}/samples/artifact/${v2.stdout}/`)).stderr, /No such file or directory/, m.logs());

  // An ls storm does not re-send the refused catalog: asked once per TTL, logged once.
  proxy.reset();
  for (let i = 0; i < 10; i++) await readdir(m.mnt);
  await sh(`ls -lR ${m.mnt}/samples > /dev/null`);
  t.is(proxy.count('GET', CATALOG_PATH), 0);
  t.is(m.logs().match(/does not list its repositories/g)?.length, 1, m.logs());
});

for (const mode of ['unauthorized', 'challenge'] as CatalogRefusal[]) {
  test(`catalog refused with 401 (${mode}): the root is readable and repositories are reachable by path`, async (t) => {
    const reg = await startRegistry(t, { flavour: 'plain' });
    await seed(t, reg.host);
    const proxy = await startFaultProxy(t, reg.url);
    proxy.rules.push(refuseCatalog(mode));
    const m = await startMount(t, proxy.host, { args: ['--repository', 'team/app/web'] });
    // The configured repository shows at once, without the catalog.
    t.deepEqual(await readdir(m.mnt), ['team']);
    t.deepEqual(await readdir(path.join(m.mnt, 'team/app/web')), ['v1']);
    t.is(await readFile(path.join(m.mnt, 'samples/artifact/1.0/artifact.txt'), 'utf8'), 'Here is an artifact!\n');
    t.deepEqual(await readdir(m.mnt), ['samples', 'team']);
    // A challenge whose realm never answers reads as "does not answer"; either way it is said, once.
    t.is(m.logs().match(/does not list its repositories|does not answer/g)?.length, 1, m.logs());
  });
}

test('mount sources: HOST/NAMESPACE shows its repositories, HOST/REPO its tags, HOST/REPO:TAG its files (read-only); bad sources exit 2 naming the part', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const { src } = await seed(t, reg.host);
  const proxy = await startFaultProxy(t, reg.url);
  proxy.rules.push(refuseCatalog('not-found'));

  const ns = await startMount(t, `${proxy.host}/team`);
  t.deepEqual(await readdir(ns.mnt), [], 'nothing known below team/ yet');
  t.deepEqual(await readdir(path.join(ns.mnt, 'app/web')), ['v1']);
  t.deepEqual(await readdir(ns.mnt), ['app']);
  t.is((await sh(`diff -r ${src}/site ${ns.mnt}/app/web/v1/site`)).code, 0);

  const repo = await startMount(t, `${proxy.host}/samples/artifact`);
  t.deepEqual(await readdir(repo.mnt), ['1.0', '2.0']);
  t.is(await readFile(path.join(repo.mnt, '1.0/artifact.txt'), 'utf8'), 'Here is an artifact!\n');

  const art = await startMount(t, `${reg.host}/samples/artifact:2.0`);
  t.deepEqual(await readdir(art.mnt), ['artifact.txt', 'big.bin']);
  t.is((await sh(`cmp ${src}/big.bin ${art.mnt}/big.bin`)).code, 0);
  const w = await sh(`touch ${art.mnt}/new.txt`);
  t.not(w.code, 0);
  t.regex(w.stderr, /Read-only file system|Permission denied/);

  // repo ls HOST/NAMESPACE filters the catalog and cuts the prefix, as oras does.
  const ls = await runCli(['repo', 'ls', `${reg.host}/team`]);
  t.is(ls.code, 0, ls.stderr);
  t.deepEqual(ls.stdout.trim().split('\n'), ['app/web']);
  const lsJson = await runCli(['repo', 'ls', `${reg.host}/samples`, '--format', 'json']);
  t.deepEqual(JSON.parse(lsJson.stdout), { namespace: 'samples', repositories: ['artifact'] });
  t.is((await runCli(['repo', 'ls', `${reg.host}/samples/artifact:1.0`])).code, 2);

  for (const [source, part] of [[`${reg.host}/Team`, /component "Team"/], ['localhost:5000/a//b', /empty component/], [`${reg.host}/x:bad tag`, /whitespace/], ['samples/artifact', /is not a host/]] as const) {
    const mnt = await tempDir(t);
    const r = await runCli(['mount', source, mnt]);
    t.is(r.code, 2, `${source}: ${r.stderr}`);
    t.regex(r.stderr, part);
    t.is(r.stderr.trim().split('\n').length, 1, r.stderr);
  }
});

test('a daemon mount without a catalog takes writes (mkdir -p team/app/v1 + cp) and status says the catalog is refused; skopeo reads the push', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  await seed(t, reg.host);
  const proxy = await startFaultProxy(t, reg.url);
  proxy.rules.push(refuseCatalog('not-found'));
  const d = await startDaemon(t, { source: proxy.host });
  const mk = await sh(`mkdir -p ${d.dirs.mnt}/crew/tool/v1 && printf 'made here\\n' > ${d.dirs.mnt}/crew/tool/v1/notes.txt`);
  t.is(mk.code, 0, mk.stderr);
  t.is(await readFile(path.join(d.dirs.mnt, 'crew/tool/v1/notes.txt'), 'utf8'), 'made here\n');
  const info = await waitFor(() => skopeoInspect(reg.host, 'crew/tool:v1'), 60_000, 'the pushed crew/tool:v1', d.logs);
  t.deepEqual(info.LayersData.map((l) => l.Annotations['org.opencontainers.image.title']), ['notes.txt']);
  const st = await runCli(['status', '--socket', d.dirs.socket, '--format', 'json']);
  t.is(st.code, 0, st.stderr);
  const mount = (JSON.parse(st.stdout) as { mounts: Array<{ catalog: { state: string; reason?: string } }> }).mounts[0]!;
  t.is(mount.catalog.state, 'refused');
  const text = await runCli(['status', '--socket', d.dirs.socket]);
  t.regex(text.stdout, /catalog refused/);
  t.is(await d.stop(), 0);
});

test('a registry that does not answer at all still mounts and says so at once; a lookup fails with an error, never a dead mount', async (t) => {
  const port = await freePort();
  const m = await startMount(t, `127.0.0.1:${port}`);
  await waitFor(async () => /does not answer/.test(m.logs()), 15_000, 'the unreachable warning', m.logs);
  t.true((await stat(m.mnt)).isDirectory());
  const r = await sh(`ls ${m.mnt}/samples/artifact`);
  t.not(r.code, 0);
  t.notRegex(r.stderr, /Transport endpoint/);
});

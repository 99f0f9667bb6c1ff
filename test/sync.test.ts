import test, { type ExecutionContext } from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import { cp, mkdir, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { conflictTag, decideSync, tagMatcher } from '../daemon/sync-rule.js';
import { ControlClient } from '../cli/daemon-client.js';
import { openSource } from '../registry/open.js';
import { packArtifact } from '../registry/pack.js';
import { isTag, parseReference } from '../registry/reference.js';
import { pushArtifact } from '../registry/transfer.js';
import { cliEnv, runCli, tempDir } from '../lab/cli.js';
import { startDaemon, waitFor, type StartedDaemon } from '../lab/daemon.js';
import { startFaultProxy } from '../lab/fault-proxy.js';
import { startRegistry } from '../lab/registry.js';
import { skopeoInspect, skopeoTags } from '../lab/skopeo.js';

const sha = (b: Buffer | string): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;
type T = ExecutionContext;

/** syncDaemon starts a daemon (one mount of `source`, no staging) with a config file that `regfs sync add` saves into. */
async function syncDaemon(t: T, source: string, base?: string): Promise<{ d: StartedDaemon; base: string; cfg: string; sock: string[] }> {
  const dir = base ?? (await tempDir(t, 'regfs-sync-'));
  const cfg = path.join(dir, 'config.json');
  if (!(await exists(cfg))) await writeFile(cfg, JSON.stringify({ syncs: [] }));
  const d = await startDaemon(t, { source, staging: false, dirs: { base: dir }, args: ['--config', cfg] });
  return { d, base: dir, cfg, sock: ['--socket', d.dirs.socket] };
}

async function exists(p: string): Promise<boolean> {
  return stat(p).then(
    () => true,
    () => false,
  );
}

async function readText(p: string): Promise<string | undefined> {
  return readFile(p, 'utf8').catch(() => undefined);
}

/**
 * pushFiles writes files into a fresh folder and pushes them as one artifact, the way `regfs push` does:
 * with the CLI itself when `env` is given, else in this process (same packing, no process start).
 * It returns the manifest digest.
 */
async function pushFiles(t: T, ref: string, files: Record<string, string | Buffer>, env?: Record<string, string>): Promise<string> {
  const src = await tempDir(t);
  for (const [name, data] of Object.entries(files)) {
    await mkdir(path.dirname(path.join(src, name)), { recursive: true });
    await writeFile(path.join(src, name), data);
  }
  const top = [...new Set(Object.keys(files).map((f) => f.split('/')[0]!))];
  if (env) {
    const r = await runCli(['push', ref, ...top, '--format', 'json'], { cwd: src, env });
    if (r.code !== 0) throw new Error(`push ${ref}: ${r.stderr}`);
    return (JSON.parse(r.stdout) as { digest: string }).digest;
  }
  const parsed = parseReference(ref);
  if (parsed.kind !== 'remote') throw new Error(`pushFiles in process takes host/repo:tag, not ${ref}`);
  const registry = openSource(parsed.registry);
  try {
    const packed = await packArtifact({ files: top.map((p) => ({ path: p })), cwd: src });
    return (await pushArtifact(registry.repository(parsed.repository), packed, [parsed.tag ?? 'latest'])).digest;
  } finally {
    await registry.close();
  }
}

/** syncNow runs a round of every pair of the daemon through its control socket and waits for it. */
async function syncNow(d: StartedDaemon): Promise<void> {
  await new ControlClient(d.dirs.socket).request('POST', '/syncs/now', {});
}

test('the sync rule: every combination of base, registry and local side', (t) => {
  const base = { digest: 'D0', fingerprint: 'F0' };
  const cases: Array<[typeof base | undefined, string | undefined, string | undefined, 'both' | 'up' | 'down', boolean, string]> = [
    [undefined, 'D1', 'F1', 'both', false, 'compare'],
    [undefined, 'D1', undefined, 'both', false, 'pull'],
    [undefined, 'D1', undefined, 'up', false, 'none'],
    [undefined, undefined, 'F1', 'both', false, 'push'],
    [undefined, undefined, 'F1', 'down', false, 'none'],
    [base, 'D0', 'F0', 'both', true, 'none'],
    [base, 'D1', 'F0', 'both', false, 'pull'],
    [base, 'D1', 'F0', 'up', false, 'none'],
    [base, 'D0', 'F1', 'both', false, 'push'],
    [base, 'D0', 'F1', 'down', false, 'none'],
    [base, 'D1', 'F1', 'both', false, 'compare'],
    [base, 'D1', 'F1', 'down', false, 'compare'],
    [base, undefined, 'F0', 'both', false, 'push'],
    [base, undefined, 'F0', 'both', true, 'delete-local'],
    [base, undefined, 'F0', 'down', false, 'forget'],
    [base, undefined, 'F0', 'up', true, 'push'],
    [base, 'D0', undefined, 'both', false, 'pull'],
    [base, 'D0', undefined, 'both', true, 'delete-remote'],
    [base, 'D0', undefined, 'up', false, 'forget'],
    [base, 'D0', undefined, 'down', true, 'pull'],
    [base, undefined, 'F1', 'both', true, 'push'],
    [base, 'D1', undefined, 'both', true, 'pull'],
    [base, undefined, undefined, 'both', true, 'forget'],
  ];
  for (const [b, r, l, dir, prop, want] of cases) t.is(decideSync(b, r, l, dir, prop).kind as string, want, JSON.stringify({ b, r, l, dir, prop }));
  t.regex((decideSync(base, undefined, 'F0', 'both', false) as { why: string }).why, /restoring it from the local folder because propagateDeletes is off/);
  t.regex((decideSync(base, 'D0', undefined, 'both', false) as { why: string }).why, /restoring it from the registry because propagateDeletes is off/);

  const m = tagMatcher('v1.*,latest');
  t.true(m('v1.2'));
  t.true(m('latest'));
  t.false(m('v1x2'), 'a dot matches only a dot');
  t.false(m('v2.0'));
  t.true(tagMatcher(undefined)('anything'));
  t.true(tagMatcher('v?')('v7'));
  t.false(tagMatcher('v?')('v10'));
  const long = conflictTag('t'.repeat(128), 'abcdef0123456789');
  t.true(isTag(long));
  t.regex(long, /-conflict-abcdef012345$/);
});

test('a push to the registry appears in the sync folder byte for byte, blobs fetched once; a local edit and a new local tag reach the registry', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const proxy = await startFaultProxy(t, reg.url);
  const { env } = await cliEnv(t);
  const { d, cfg, sock } = await syncDaemon(t, proxy.host);
  const local = path.join(d.dirs.base, 'models');

  t.is((await runCli(['sync', 'add', local, `${proxy.host}/team/models`, '--direction', 'sideways', ...sock], { env })).code, 2);
  const add = await runCli(['sync', 'add', local, `${proxy.host}/team/models`, '--interval', '1', ...sock], { env });
  t.is(add.code, 0, add.stderr);
  t.regex(add.stdout, /saved in .*config\.json/);
  t.deepEqual((JSON.parse(await readFile(cfg, 'utf8')) as { syncs: Array<{ local: string }> }).syncs.map((s) => s.local), [local]);
  t.is((await runCli(['sync', 'add', local, `${proxy.host}/team/other`, ...sock], { env })).code, 1, 'a folder syncs with one repository');

  // Pushed straight to the registry: the proxy counts only what the daemon fetches.
  const big = randomBytes(3 * 1024 * 1024);
  await pushFiles(t, `${reg.host}/team/models:v1`, { 'a.bin': big, 'b.txt': 'one\n', 'conf/settings.ini': 'x=1\n' }, env);
  await waitFor(async () => (await readText(path.join(local, 'v1/b.txt'))) === 'one\n', 90_000, 'v1 in the sync folder');
  t.true((await readFile(path.join(local, 'v1/a.bin'))).equals(big));
  t.is(await readText(path.join(local, 'v1/conf/settings.ini')), 'x=1\n');
  const bigGets = (): number => proxy.requests.filter((r) => r.method === 'GET' && r.path.includes(`/blobs/${sha(big)}`)).length;
  t.true(bigGets() >= 1);
  const fetchedOnce = bigGets();

  // The tag moves: a.bin is the same blob (not fetched again), b.txt changes, conf goes away.
  await pushFiles(t, `${reg.host}/team/models:v1`, { 'a.bin': big, 'b.txt': 'two\n' });
  await waitFor(async () => (await readText(path.join(local, 'v1/b.txt'))) === 'two\n', 90_000, 'the moved tag in the sync folder');
  t.false(await exists(path.join(local, 'v1/conf')), 'a file the new manifest lacks is removed');
  t.true((await readFile(path.join(local, 'v1/a.bin'))).equals(big));
  t.is(bigGets(), fetchedOnce, 'an unchanged blob is not fetched twice');

  // A local edit, and a new local tag with a folder in it.
  const edited = randomBytes(200_000);
  await writeFile(path.join(local, 'v1/a.bin'), edited);
  const v1 = await waitFor(async () => {
    const i = await skopeoInspect(reg.host, 'team/models:v1');
    return i?.LayersData.some((l) => l.Digest === sha(edited)) ? i : undefined;
  }, 60_000, 'the edited layer in the registry');
  t.deepEqual(v1.LayersData.map((l) => l.Annotations['org.opencontainers.image.title']).sort(), ['a.bin', 'b.txt']);
  await mkdir(path.join(local, 'v2/docs'), { recursive: true });
  await writeFile(path.join(local, 'v2/docs/readme.md'), '# v2\n');
  await waitFor(() => skopeoInspect(reg.host, 'team/models:v2'), 60_000, 'the new local tag in the registry');
  const out = await tempDir(t);
  t.is((await runCli(['pull', `${reg.host}/team/models:v2`, '-o', out], { env })).code, 0);
  t.is(await readText(path.join(out, 'docs/readme.md')), '# v2\n');

  // Nothing moves back: the folder keeps the edit, no conflict.
  t.is((await runCli(['sync', 'now', local, ...sock], { env })).code, 0);
  t.true((await readFile(path.join(local, 'v1/a.bin'))).equals(edited));
  t.deepEqual((await readdir(local)).sort(), ['v1', 'v2']);
  const st = JSON.parse((await runCli(['status', ...sock, '--format', 'json'], { env })).stdout) as { sync: Array<{ local: string; lastRound: string | null; lastError: string | null; syncedTags: number; conflicts: unknown[] }> };
  t.is(st.sync[0]!.local, local);
  t.truthy(st.sync[0]!.lastRound);
  t.is(st.sync[0]!.lastError, null);
  t.is(st.sync[0]!.syncedTags, 2);
  t.deepEqual(st.sync[0]!.conflicts, []);
  t.regex((await runCli(['status', ...sock], { env })).stdout, /Sync:\n {2}.*models <-> /);
  t.regex((await runCli(['sync', 'ls', ...sock], { env })).stdout, /models <-> .*team\/models +\(both, every 1s, tags \*\)\n +2 tags in step; last round 20/);
  t.is((await runCli(['sync', 'now', '/not/synced', ...sock], { env })).code, 4);
  t.is((await runCli(['sync', 'rm', '/not/synced', ...sock], { env })).code, 4);
  t.is((await runCli(['sync', 'rm', local, ...sock], { env })).code, 0);
  t.deepEqual((JSON.parse(await readFile(cfg, 'utf8')) as { syncs: unknown[] }).syncs, []);
  t.is(await d.stop(), 0);
});

test('conflicts: equal contents on the first round are recorded; different ones keep both versions (registry keeps the tag)', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const { env } = await cliEnv(t);
  const base = await tempDir(t, 'regfs-sync-');
  const local = path.join(base, 'conf');
  // Both sides hold v5 (the same file) and v6 (different files) before the pair exists.
  await pushFiles(t, `${reg.host}/team/conf:v5`, { 'same.txt': 'same\n' });
  const remote6 = await pushFiles(t, `${reg.host}/team/conf:v6`, { 'x.txt': 'remote\n' });
  await mkdir(path.join(local, 'v5'), { recursive: true });
  await mkdir(path.join(local, 'v6'), { recursive: true });
  await writeFile(path.join(local, 'v5/same.txt'), 'same\n');
  await writeFile(path.join(local, 'v6/x.txt'), 'local\n');

  let { d, sock } = await syncDaemon(t, reg.host, base);
  t.is((await runCli(['sync', 'add', local, `${reg.host}/team/conf`, '--interval', '1', ...sock], { env })).code, 0);
  const kept6 = await waitFor(async () => (await readdir(local)).find((n) => n.startsWith('v6-conflict-')), 90_000, 'the kept local v6');
  t.regex(kept6, /^v6-conflict-[0-9a-f]{12}$/);
  await waitFor(async () => (await readText(path.join(local, 'v6/x.txt'))) === 'remote\n', 90_000, 'the registry version in v6');
  t.is(await readText(path.join(local, kept6, 'x.txt')), 'local\n');
  const pushed6 = await waitFor(() => skopeoInspect(reg.host, `team/conf:${kept6}`), 60_000, 'the conflict tag in the registry');
  t.true(pushed6.LayersData.some((l) => l.Digest === sha('local\n')));
  t.is(kept6.slice(-12), pushed6.Digest.slice(7, 19), 'named after the local manifest digest');
  t.is((await skopeoInspect(reg.host, 'team/conf:v6'))?.Digest, remote6, 'the registry keeps the tag');
  t.false((await readdir(local)).some((n) => n.startsWith('v5-conflict')), 'equal contents are no conflict');
  const st = JSON.parse((await runCli(['status', ...sock, '--format', 'json'], { env })).stdout) as { sync: Array<{ conflicts: Array<{ tag: string; kept: string }> }> };
  t.deepEqual(st.sync[0]!.conflicts.map((c) => [c.tag, c.kept]), [['v6', kept6]]);
  t.regex(d.logs(), /conflict on v6: both sides changed/);

  // Later: both sides change v5 while the daemon is down; the base tells it is a conflict.
  const queueSettled = async (): Promise<boolean> => (await new ControlClient(d.dirs.socket).request<{ queue: Array<{ state: string }> }>('GET', '/status')).queue.every((q) => q.state === 'done');
  await waitFor(async () => (await skopeoTags(reg.host, 'team/conf')).includes(kept6) && (await queueSettled()), 90_000, 'the queue to settle');
  t.is(await d.stop(), 0);
  await writeFile(path.join(local, 'v5/same.txt'), 'local edit\n');
  const remote5 = await pushFiles(t, `${reg.host}/team/conf:v5`, { 'same.txt': 'remote edit\n' });
  ({ d, sock } = await syncDaemon(t, reg.host, base));
  const kept5 = await waitFor(async () => (await readdir(local)).find((n) => n.startsWith('v5-conflict-')), 90_000, 'the kept local v5');
  await waitFor(async () => (await readText(path.join(local, 'v5/same.txt'))) === 'remote edit\n', 90_000, 'the registry version in v5');
  t.is(await readText(path.join(local, kept5, 'same.txt')), 'local edit\n');
  const pushed5 = await waitFor(() => skopeoInspect(reg.host, `team/conf:${kept5}`), 60_000, 'the v5 conflict tag in the registry');
  t.true(pushed5.LayersData.some((l) => l.Digest === sha('local edit\n')));
  t.is((await skopeoInspect(reg.host, 'team/conf:v5'))?.Digest, remote5);
  t.is(await d.stop(), 0);
});

test('deletions: without propagateDeletes a deleted tag comes back from the other side; with it the deletion propagates', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const { env } = await cliEnv(t);
  const { d, base, sock } = await syncDaemon(t, reg.host);
  const keep = path.join(base, 'keep');
  const prop = path.join(base, 'prop');
  for (const repo of ['keep', 'prop']) {
    for (const tag of ['v1', 'v2']) await pushFiles(t, `${reg.host}/team/${repo}:${tag}`, { 'f.txt': `${repo} ${tag}\n` });
  }
  t.is((await runCli(['sync', 'add', keep, `${reg.host}/team/keep`, '--interval', '1', ...sock], { env })).code, 0);
  t.is((await runCli(['sync', 'add', prop, `${reg.host}/team/prop`, '--interval', '1', '--propagate-deletes', ...sock], { env })).code, 0);
  for (const dir of [keep, prop]) {
    for (const tag of ['v1', 'v2']) await waitFor(() => exists(path.join(dir, tag, 'f.txt')), 90_000, `${dir}/${tag}`);
  }
  // Let both pairs record their base (a pull records it after the files are in place).
  await syncNow(d);

  await rm(path.join(keep, 'v1'), { recursive: true });
  await rm(path.join(prop, 'v1'), { recursive: true });
  t.is((await runCli(['repo', 'delete', `${reg.host}/team/keep:v2`, '--force'], { env })).code, 0);
  t.is((await runCli(['repo', 'delete', `${reg.host}/team/prop:v2`, '--force'], { env })).code, 0);

  await waitFor(async () => (await readText(path.join(keep, 'v1/f.txt'))) === 'keep v1\n', 90_000, 'v1 restored locally');
  const restored = await waitFor(() => skopeoInspect(reg.host, 'team/keep:v2'), 60_000, 'v2 restored in the registry');
  t.true(restored.LayersData.some((l) => l.Digest === sha('keep v2\n')));
  t.regex(d.logs(), /keep <-> .*v1.*deleted locally; restoring it from the registry because propagateDeletes is off/);
  t.regex(d.logs(), /keep <-> .*pushing v2 .*deleted in the registry; restoring it from the local folder because propagateDeletes is off/);

  await waitFor(async () => !(await skopeoTags(reg.host, 'team/prop')).includes('v1'), 90_000, 'v1 deleted in the registry');
  await waitFor(async () => !(await exists(path.join(prop, 'v2'))), 90_000, 'v2 deleted locally');
  await syncNow(d);
  await syncNow(d);
  t.deepEqual(await skopeoTags(reg.host, 'team/prop'), [], 'deletions stay deleted');
  t.deepEqual(await readdir(prop), []);
  t.deepEqual((await readdir(keep)).sort(), ['v1', 'v2']);
  t.deepEqual(await skopeoTags(reg.host, 'team/keep'), ['v1', 'v2']);
  t.is(await d.stop(), 0);
});

test('kill -9 in the middle of a round, then a restart: it converges with one manifest PUT per change and no conflict', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const proxy = await startFaultProxy(t, reg.url);
  const { env } = await cliEnv(t);
  const base = await tempDir(t, 'regfs-sync-');
  const local = path.join(base, 'big');
  let { d, sock } = await syncDaemon(t, proxy.host, base);
  t.is((await runCli(['sync', 'add', local, `${proxy.host}/team/big`, '--interval', '1', ...sock], { env })).code, 0);
  await pushFiles(t, `${reg.host}/team/big:v1`, { 'f.txt': 'start\n' });
  await waitFor(() => exists(path.join(local, 'v1/f.txt')), 90_000, 'the starting point');
  await syncNow(d);

  // Slow uploads and downloads, so the kill lands in the middle of the round's work.
  proxy.rules.push({ method: 'PUT', path: /\/blobs\/uploads\//, latencyMs: 3000 });
  proxy.rules.push({ method: 'PATCH', path: /\/blobs\/uploads\//, latencyMs: 3000 });
  proxy.rules.push({ method: 'GET', path: /\/blobs\/sha256:/, latencyMs: 3000 });
  const big = randomBytes(20 * 1024 * 1024);
  const h = randomBytes(1024 * 1024);
  await pushFiles(t, `${reg.host}/team/big:v3`, { 'h.bin': h });
  await writeFile(path.join(base, 'big.bin'), big);
  await cp(path.join(base, 'big.bin'), path.join(local, 'v1/big.bin'));
  await mkdir(path.join(local, 'v2'));
  await writeFile(path.join(local, 'v2/g.txt'), 'new tag\n');
  await waitFor(async () => proxy.requests.some((r) => /\/blobs\/uploads\//.test(r.path) && r.method !== 'POST'), 60_000, 'an upload to start');
  await d.crash();
  t.is(proxy.count('PUT', /\/manifests\//), 0);
  proxy.rules.length = 0;

  ({ d, sock } = await syncDaemon(t, proxy.host, base));
  await waitFor(async () => (await skopeoInspect(reg.host, 'team/big:v1'))?.LayersData.some((l) => l.Digest === sha(big)), 90_000, 'the edit in the registry');
  await waitFor(() => skopeoInspect(reg.host, 'team/big:v2'), 60_000, 'the new tag in the registry');
  await waitFor(async () => (await readFile(path.join(local, 'v3/h.bin')).catch(() => Buffer.alloc(0))).equals(h), 60_000, 'the registry push in the folder');
  await syncNow(d);
  await syncNow(d);
  t.is(proxy.count('PUT', /\/manifests\//), 2, 'one manifest PUT for the edit, one for the new tag');
  t.deepEqual(await skopeoTags(reg.host, 'team/big'), ['v1', 'v2', 'v3']);
  t.deepEqual((await readdir(local)).sort(), ['v1', 'v2', 'v3'], 'no conflict copies, no temp folders left');
  t.true((await readFile(path.join(local, 'v1/big.bin'))).equals(big));
  t.is(await d.stop(), 0);

  // A crash right after a push landed and before its base was written: the next round finds the same
  // files on both sides and records the base, without a conflict and without pushing again.
  const stateDir = path.join(base, 'state/sync');
  const [stateFile] = await readdir(stateDir);
  const state = JSON.parse(await readFile(path.join(stateDir, stateFile!), 'utf8')) as { tags: Record<string, unknown> };
  delete state.tags.v1;
  await writeFile(path.join(stateDir, stateFile!), JSON.stringify(state));
  ({ d, sock } = await syncDaemon(t, proxy.host, base));
  await d.waitLog(/v1 holds the same files on both sides/);
  await syncNow(d);
  t.is(proxy.count('PUT', /\/manifests\//), 2);
  t.deepEqual((await readdir(local)).sort(), ['v1', 'v2', 'v3']);
  t.is(await d.stop(), 0);
});

test('two daemons with their own caches and state, syncing one repository into their own folders, converge', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const { env } = await cliEnv(t);
  const a = await syncDaemon(t, reg.host);
  const b = await syncDaemon(t, reg.host);
  const la = path.join(a.base, 'shared');
  const lb = path.join(b.base, 'shared');
  t.is((await runCli(['sync', 'add', la, `${reg.host}/team/shared`, '--interval', '1', ...a.sock], { env })).code, 0);
  t.is((await runCli(['sync', 'add', lb, `${reg.host}/team/shared`, '--interval', '1', ...b.sock], { env })).code, 0);

  await mkdir(path.join(la, 'v1'), { recursive: true });
  await writeFile(path.join(la, 'v1/a.txt'), 'from A\n');
  await waitFor(async () => (await readText(path.join(lb, 'v1/a.txt'))) === 'from A\n', 60_000, "A's tag in B's folder");

  const bin = randomBytes(500_000);
  await mkdir(path.join(lb, 'v2'));
  await writeFile(path.join(lb, 'v2/b.bin'), bin);
  await writeFile(path.join(lb, 'v1/a.txt'), 'edited by B\n');
  await waitFor(async () => (await readFile(path.join(la, 'v2/b.bin')).catch(() => Buffer.alloc(0))).equals(bin), 60_000, "B's new tag in A's folder");
  await waitFor(async () => (await readText(path.join(la, 'v1/a.txt'))) === 'edited by B\n', 60_000, "B's edit in A's folder");

  await syncNow(a.d);
  await syncNow(b.d);
  t.deepEqual((await readdir(la)).sort(), ['v1', 'v2']);
  t.deepEqual((await readdir(lb)).sort(), ['v1', 'v2']);
  t.deepEqual(await skopeoTags(reg.host, 'team/shared'), ['v1', 'v2']);
  t.is(await readText(path.join(lb, 'v1/a.txt')), 'edited by B\n');
  t.is(await a.d.stop(), 0);
  t.is(await b.d.stop(), 0);
});

test('an oci:DIR/NAME pair syncs with an OCI layout; a missing sync folder is an error, never a mass deletion', async (t) => {
  const { env } = await cliEnv(t);
  const store = await tempDir(t);
  const layout = path.join(store, 'team', 'docs');
  const { d, base, sock } = await syncDaemon(t, `oci:${store}`);
  const local = path.join(base, 'docs');
  const add = await runCli(['sync', 'add', local, `oci:${layout}`, '--interval', '1', '--propagate-deletes', ...sock], { env });
  t.is(add.code, 0, add.stderr);
  await mkdir(path.join(local, 'v1'));
  await writeFile(path.join(local, 'v1/a.txt'), 'from the folder\n');
  const out = await tempDir(t);
  await waitFor(async () => (await runCli(['pull', `oci:${layout}:v1`, '-o', out], { env })).code === 0, 90_000, 'v1 in the layout');
  t.is(await readText(path.join(out, 'a.txt')), 'from the folder\n');
  await pushFiles(t, `oci:${layout}:v2`, { 'b.txt': 'from the layout\n' }, env);
  await waitFor(async () => (await readText(path.join(local, 'v2/b.txt'))) === 'from the layout\n', 90_000, 'v2 in the folder');
  await syncNow(d);

  // The folder disappears (a disk not mounted): the round fails and deletes nothing in the layout.
  await rename(local, `${local}.away`);
  const now = await runCli(['sync', 'now', local, ...sock], { env });
  t.is(now.code, 1);
  t.regex(now.stdout, /error: the sync folder .* is missing; nothing is deleted/);
  await rename(`${local}.away`, local);
  t.is((await runCli(['sync', 'now', local, ...sock], { env })).code, 0);
  for (const tag of ['v1', 'v2']) t.is((await runCli(['pull', `oci:${layout}:${tag}`, '-o', out], { env })).code, 0, `${tag} is still in the layout`);
  t.deepEqual((await readdir(local)).sort(), ['v1', 'v2']);
  t.is(await d.stop(), 0);
});

test('regfs sync and its subcommands have help with examples', async (t) => {
  for (const args of [['sync', 'add'], ['sync', 'ls'], ['sync', 'rm'], ['sync', 'now']]) {
    const h = await runCli([...args, '--help']);
    t.is(h.code, 0, args.join(' '));
    t.regex(h.stdout, /Example/, args.join(' '));
    for (const line of h.stdout.split('\n').filter((l) => /^  -/.test(l))) t.regex(line, /\S\s{2,}\S/, `${args.join(' ')}: ${line}`);
  }
  t.regex((await runCli(['--help'])).stdout, /^ {2}sync\b/m);
});

test('one-way pairs: down never writes the registry, up never writes the folder; each keeps the other version on a conflict', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const { env } = await cliEnv(t);
  const { d, base, sock } = await syncDaemon(t, reg.host);
  const down = path.join(base, 'down');
  const up = path.join(base, 'up');
  await pushFiles(t, `${reg.host}/team/down:v1`, { 'f.txt': 'registry 1\n' });
  await pushFiles(t, `${reg.host}/team/up:v9`, { 'f.txt': 'registry only\n' });
  t.is((await runCli(['sync', 'add', down, `${reg.host}/team/down`, '--direction', 'down', '--interval', '1', ...sock], { env })).code, 0);
  t.is((await runCli(['sync', 'add', up, `${reg.host}/team/up`, '--direction', 'up', '--interval', '1', ...sock], { env })).code, 0);
  await waitFor(async () => (await readText(path.join(down, 'v1/f.txt'))) === 'registry 1\n', 90_000, 'the down pair pulls');
  await mkdir(path.join(up, 'v1'), { recursive: true });
  await writeFile(path.join(up, 'v1/f.txt'), 'local 1\n');
  const upV1 = await waitFor(() => skopeoInspect(reg.host, 'team/up:v1'), 60_000, 'the up pair pushes');
  t.true(upV1.LayersData.some((l) => l.Digest === sha('local 1\n')));

  // down: a local edit stays local; up: a registry change stays in the registry.
  const downV1 = (await skopeoInspect(reg.host, 'team/down:v1'))!.Digest;
  await writeFile(path.join(down, 'v1/f.txt'), 'local edit\n');
  const remoteUp = await pushFiles(t, `${reg.host}/team/up:v1`, { 'f.txt': 'registry edit\n' });
  await syncNow(d);
  await syncNow(d);
  t.is((await skopeoInspect(reg.host, 'team/down:v1'))!.Digest, downV1);
  t.is(await readText(path.join(up, 'v1/f.txt')), 'local 1\n');
  t.deepEqual(await readdir(up), ['v1'], 'up never pulls');

  // Now the other side changes too: both are conflicts, and both keep the other version.
  await pushFiles(t, `${reg.host}/team/down:v1`, { 'f.txt': 'registry 2\n' });
  const keptDown = await waitFor(async () => (await readdir(down)).find((n) => n.startsWith('v1-conflict-')), 90_000, 'the kept local version of the down pair');
  t.is(await readText(path.join(down, keptDown, 'f.txt')), 'local edit\n');
  await waitFor(async () => (await readText(path.join(down, 'v1/f.txt'))) === 'registry 2\n', 90_000, 'the registry version in the down folder');
  t.deepEqual(await skopeoTags(reg.host, 'team/down'), ['v1'], 'down never pushes');

  await writeFile(path.join(up, 'v1/f.txt'), 'local 2\n');
  await waitFor(async () => (await skopeoInspect(reg.host, 'team/up:v1'))?.LayersData.some((l) => l.Digest === sha('local 2\n')), 60_000, 'the local version takes the tag');
  const keptUp = `v1-conflict-${remoteUp.slice(7, 19)}`;
  t.is((await skopeoInspect(reg.host, `team/up:${keptUp}`))?.Digest, remoteUp, "the registry's version is kept as a conflict tag");
  t.deepEqual(await readdir(up), ['v1']);
  t.is(await d.stop(), 0);
});

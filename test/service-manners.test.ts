import test from 'ava';
import { spawn, spawnSync } from 'node:child_process';
import { openSync, closeSync, fstatSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { cliEnv, runCli, tempDir } from '../lab/cli.js';
import { startDaemon, waitFor } from '../lab/daemon.js';

const LOG_JS = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../util/log.js');

/** A fake service manager's notify socket: prints one JSON line per datagram, with what the mount showed then. */
const RECEIVER = `
import json, os, socket, sys
path, probe = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(path)
print(json.dumps({"listening": True}), flush=True)
while True:
    data = s.recv(65536).decode()
    seen = None
    if "READY=1" in data.split("\\n"):
        try:
            seen = sorted(os.listdir(probe))
        except OSError as e:
            seen = "error: " + str(e)
    print(json.dumps({"data": data, "seen": seen}), flush=True)
`;

interface Datagram {
  data: string;
  seen: string[] | string | null;
}

async function makeStore(t: Parameters<typeof tempDir>[0]): Promise<string> {
  const { env } = await cliEnv(t);
  const src = await tempDir(t, 'regfs-notify-src-');
  await writeFile(path.join(src, 'file.txt'), 'ready\n');
  const store = await tempDir(t, 'regfs-notify-store-');
  const r = await runCli(['push', `oci:${store}/demo:1`, 'file.txt'], { cwd: src, env });
  if (r.code !== 0) throw new Error(`regfs push failed (${r.code}): ${r.stderr}`);
  return store;
}

test('with $NOTIFY_SOCKET the daemon sends READY=1 once the mount answers, STATUS= on reload (also a failed one, shown by regfs status), STOPPING=1 at stop', async (t) => {
  const store = await makeStore(t);
  const base = await tempDir(t, 'regfs-notify-');
  const sock = path.join(base, 'notify.sock');
  const config = path.join(base, 'config.json');
  await writeFile(config, '{}\n');
  const script = path.join(base, 'receiver.py');
  await writeFile(script, RECEIVER);
  const mnt = path.join(base, 'd', 'mnt');
  const receiver = spawn('python3', [script, sock, path.join(mnt, 'demo', '1')], { stdio: ['ignore', 'pipe', 'pipe'] });
  t.teardown(() => {
    if (receiver.exitCode === null) receiver.kill('SIGKILL');
  });
  let out = '';
  let err = '';
  receiver.stdout.on('data', (d: Buffer) => (out += d.toString()));
  receiver.stderr.on('data', (d: Buffer) => (err += d.toString()));
  const messages = (): Datagram[] => out.split('\n').filter(Boolean).map((l) => JSON.parse(l) as Datagram & { listening?: boolean }).filter((m) => !('listening' in m));
  await waitFor(async () => out.includes('listening'), 10_000, 'the fake notify socket', () => err);

  const d = await startDaemon(t, { source: `oci:${store}`, staging: false, dirs: { base: path.join(base, 'd') }, args: ['--config', config], env: { NOTIFY_SOCKET: sock } });
  await waitFor(async () => messages().some((m) => m.data.split('\n').includes('READY=1')), 30_000, 'READY=1', () => `${d.logs()}\n${out}\n${err}`);
  const ready = messages().find((m) => m.data.split('\n').includes('READY=1'))!;
  // At the moment READY=1 arrived, the mount answered with the tag's files.
  t.deepEqual(ready.seen, ['file.txt'], JSON.stringify(ready));
  t.regex(ready.data, /^STATUS=serving 1 mount; control socket /m);
  t.regex(d.logs(), /regfs daemon ready: every mount answers/);
  t.is(messages().filter((m) => m.data.includes('READY=1')).length, 1);

  // A reload that fails (the config is no longer JSON): STATUS= says so and so does regfs status.
  const { env } = await cliEnv(t);
  await writeFile(config, '{ not json');
  d.child.kill('SIGHUP');
  await waitFor(async () => messages().some((m) => /^STATUS=reload at .* failed: config .*not valid JSON/m.test(m.data)), 20_000, 'the failed reload STATUS=', () => `${d.logs()}\n${out}`);
  const failed = await runCli(['status', '--socket', d.dirs.socket], { env });
  t.is(failed.code, 0, failed.stderr);
  t.regex(failed.stdout, /^Last reload \(SIGHUP\): \S+ FAILED: config .*not valid JSON/m);
  const asJson = JSON.parse((await runCli(['status', '--socket', d.dirs.socket, '--format', 'json'], { env })).stdout) as { lastReload: { ok: boolean; error: string } };
  t.false(asJson.lastReload.ok);
  t.regex(asJson.lastReload.error, /not valid JSON/);
  t.is(d.child.exitCode, null);

  // Fixed: the next reload is ok.
  await writeFile(config, '{}\n');
  d.child.kill('SIGHUP');
  await waitFor(async () => messages().some((m) => /^STATUS=reloaded at .*: 1 mounts$/m.test(m.data)), 20_000, 'the reload STATUS=', () => `${d.logs()}\n${out}`);
  const ok = await runCli(['status', '--socket', d.dirs.socket], { env });
  t.regex(ok.stdout, /^Last reload \(SIGHUP\): \S+ ok, 1 mounts$/m);

  t.is(await d.stop(), 0, d.logs());
  await waitFor(async () => messages().some((m) => m.data.split('\n').includes('STOPPING=1')), 10_000, 'STOPPING=1', () => out);
});

test('without $NOTIFY_SOCKET nothing is sent and nothing is complained about', async (t) => {
  const store = await makeStore(t);
  const d = await startDaemon(t, { source: `oci:${store}`, staging: false, env: { NOTIFY_SOCKET: '' } });
  await d.waitLog(/regfs daemon ready/);
  t.notRegex(d.logs(), /cannot notify|service manager/i);
  t.is(await d.stop(), 0);
});

test('an invalid config file exits 2 (the units do not restart on it: RestartPreventExitStatus=2)', async (t) => {
  const base = await tempDir(t, 'regfs-badcfg-');
  const config = path.join(base, 'config.json');
  await writeFile(config, JSON.stringify({ mounts: [{ source: 'localhost:5000', mountpoint: base, stagging: '/x' }] }));
  const r = await runCli(['daemon', '--config', config, '--socket', path.join(base, 'ctl.sock')]);
  t.is(r.code, 2, r.stderr);
  t.regex(r.stderr, /unknown key "stagging" \(did you mean "staging"\?\)/);
});

/** logTo runs a logger in a child with stderr going to FILE and returns what it wrote. */
async function logTo(t: Parameters<typeof tempDir>[0] & { is(a: unknown, b: unknown): void }, journal: (file: string) => string | undefined, format: 'text' | 'json'): Promise<string> {
  const file = path.join(await tempDir(t, 'regfs-journal-'), 'stderr');
  const fd = openSync(file, 'w');
  const value = journal(file);
  const code = `import(${JSON.stringify(LOG_JS)}).then((m) => { const l = m.createLogger({ level: 'debug', format: ${JSON.stringify(format)} }); l.error('bad thing', { path: '/a b/c' }); l.warn('careful', { n: 3 }); l.info('fine', { word: 'plain', empty: '' }); l.debug('detail'); })`;
  const r = spawnSync(process.execPath, ['-e', code], { stdio: ['ignore', 'ignore', fd], env: { ...process.env, JOURNAL_STREAM: value ?? '' } });
  closeSync(fd);
  t.is(r.status, 0);
  return readFile(file, 'utf8');
}

test('log lines carry journald priorities (<3> <4> <6> <7>) only when $JOURNAL_STREAM is stderr; text values with spaces are quoted', async (t) => {
  const devIno = (file: string): string => {
    const st = fstatSync(openSync(file, 'r'));
    return `${st.dev}:${st.ino}`;
  };
  const journal = (await logTo(t, devIno, 'text')).split('\n').filter(Boolean);
  t.deepEqual(journal.map((l) => l.slice(0, 3)), ['<3>', '<4>', '<6>', '<7>']);
  t.regex(journal[0]!, /^<3>\S+ ERROR bad thing path="\/a b\/c"$/);
  t.regex(journal[2]!, /^<6>\S+ INFO  fine word=plain empty=""$/);
  const json = (await logTo(t, devIno, 'json')).split('\n').filter(Boolean);
  t.is(json[0]!.slice(0, 3), '<3>');
  t.is((JSON.parse(json[0]!.slice(3)) as { msg: string }).msg, 'bad thing');

  // Another stream's JOURNAL_STREAM (stderr redirected away from the journal), or none: no prefixes.
  for (const other of [() => '1:2', () => undefined]) {
    const plain = (await logTo(t, other, 'text')).split('\n').filter(Boolean);
    t.is(plain.length, 4);
    for (const l of plain) t.regex(l, /^\d{4}-/);
  }
});

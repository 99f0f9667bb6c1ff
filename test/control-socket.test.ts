/**
 * The daemon's control socket (daemon/control.ts) against real Unix sockets and, for the permission
 * checks, a real unprivileged process (setpriv to nobody). Ported from an earlier alternative server.
 */
import test, { type ExecutionContext } from 'ava';
import { execFile, spawn } from 'node:child_process';
import { chmod, chown, lstat, mkdir, mkdtemp, readdir, readFile, readlink, rm, stat, symlink, unlink, writeFile } from 'node:fs/promises';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { ControlClient } from '../cli/daemon-client.js';
import { startControlServer, type Routes } from '../daemon/control.js';
import { RegfsError } from '../util/errors.js';
import { REGFS_BIN } from '../lab/cli.js';

const ping: Routes = { 'GET /ping': async () => ({ pid: process.pid }) };

async function tempDir(t: ExecutionContext, mode = 0o700): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'regfs-sock-'));
  await chmod(dir, mode);
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

async function serve(t: ExecutionContext, socket: string, routes: Routes = {}): Promise<{ close(): Promise<void> }> {
  const srv = await startControlServer(socket, { ...ping, ...routes });
  t.teardown(() => srv.close());
  return srv;
}

/** staleSocket leaves a socket file nobody listens on: a child binds it and is SIGKILLed, as after a crash. */
async function staleSocket(socket: string): Promise<void> {
  const child = spawn(process.execPath, ['-e', `require('net').createServer().listen(process.argv[1], () => process.kill(process.pid, 'SIGKILL'))`, socket], { stdio: 'ignore' });
  await new Promise((resolve) => child.on('exit', resolve));
  if (!(await lstat(socket)).isSocket()) throw new Error('no stale socket left behind');
}

/** asNobody runs a command as uid/gid 65534 with no supplementary groups. */
function asNobody(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile('setpriv', ['--reuid=nobody', '--regid=nogroup', '--clear-groups', ...args], { cwd: '/', timeout: 20_000 }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr });
    });
  });
}

/** connectAsNobody tries to connect to a socket as nobody and reports `CONNECTED` or the errno code. */
async function connectAsNobody(socket: string): Promise<string> {
  const script = `const s = require('net').connect(process.argv[1]);
s.on('connect', () => { console.log('CONNECTED'); s.destroy(); });
s.on('error', (e) => console.log(e.code));`;
  const r = await asNobody([process.execPath, '-e', script, socket]);
  if (r.code !== 0) throw new Error(`setpriv failed: ${r.stderr}`);
  return r.stdout.trim();
}

test('the control socket is created 0600 in a new 0700 directory, nothing else is left there, routes answer, close removes it', async (t) => {
  const base = await tempDir(t);
  const socket = path.join(base, 'run', 'regfs', 'control.sock');
  const srv = await startControlServer(socket, { ...ping, 'POST /echo': async (body, query) => ({ body, x: query.get('x') }) });
  t.is((await stat(path.dirname(socket))).mode & 0o777, 0o700);
  const st = await lstat(socket);
  t.true(st.isSocket());
  t.is(st.mode & 0o777, 0o600);
  t.deepEqual(await readdir(path.dirname(socket)), ['control.sock'], 'the temporary bind name is gone');
  const client = new ControlClient(socket);
  t.deepEqual(await client.request('GET', '/ping'), { pid: process.pid });
  t.deepEqual(await client.request('POST', '/echo?x=1', { a: [1, 2] }), { body: { a: [1, 2] }, x: '1' });
  await srv.close();
  await srv.close(); // idempotent
  await t.throwsAsync(lstat(socket), { code: 'ENOENT' });
});

test('an unprivileged user (setpriv to nobody) cannot connect: the 0700 directory refuses, and so does the 0600 socket on its own', async (t) => {
  const dir = await tempDir(t);
  const socket = path.join(dir, 'control.sock');
  await serve(t, socket);
  t.is(await connectAsNobody(socket), 'EACCES');
  // The CLI, run as nobody, says so in one line.
  const cli = await asNobody([process.execPath, REGFS_BIN, 'status', '--socket', socket]);
  t.not(cli.code, 0);
  t.regex(cli.stderr, /permission denied on .*control\.sock/);
  t.is(cli.stderr.trim().split('\n').length, 1);
  // Open the directory up: the socket's own 0600 mode still refuses...
  await chmod(dir, 0o755);
  t.is(await connectAsNobody(socket), 'EACCES');
  // ...and it is that mode at work: the same child connects once the socket allows it.
  await chmod(socket, 0o666);
  t.is(await connectAsNobody(socket), 'CONNECTED');
});

test('a symlink at the socket path is refused, never followed, and its target left untouched', async (t) => {
  const dir = await tempDir(t);
  const target = path.join(dir, 'precious');
  await writeFile(target, 'keep me', { mode: 0o640 });
  const socket = path.join(dir, 'control.sock');
  await symlink(target, socket);
  const err = await t.throwsAsync(startControlServer(socket, ping), { instanceOf: RegfsError });
  t.is(err!.code, 'UNSAFE_PATH');
  t.is(err!.message, `${socket} is a symlink; refusing to use or replace it`);
  t.is(await readlink(socket), target);
  t.is(await readFile(target, 'utf8'), 'keep me');
  t.is((await stat(target)).mode & 0o777, 0o640);
  // A dangling symlink is refused the same way and nothing is created at its target.
  await unlink(socket);
  const nowhere = path.join(dir, 'nowhere.sock');
  await symlink(nowhere, socket);
  await t.throwsAsync(startControlServer(socket, ping), { code: 'UNSAFE_PATH' } as never);
  await t.throwsAsync(lstat(nowhere), { code: 'ENOENT' });
  t.deepEqual((await readdir(dir)).sort(), ['control.sock', 'precious']);
  // A regular file there is refused and kept.
  await unlink(socket);
  await writeFile(socket, 'not a socket');
  t.is((await t.throwsAsync(startControlServer(socket, ping), { instanceOf: RegfsError }))!.code, 'CONFLICT');
  t.is(await readFile(socket, 'utf8'), 'not a socket');
});

test('an unsafe socket directory is refused: group- or world-writable, a symlink, or owned by someone else', async (t) => {
  const base = await tempDir(t);
  for (const mode of [0o770, 0o703]) {
    const d = path.join(base, `m${mode.toString(8)}`);
    await mkdir(d);
    await chmod(d, mode);
    const err = await t.throwsAsync(startControlServer(path.join(d, 'c.sock'), ping), { instanceOf: RegfsError });
    t.is(err!.code, 'UNSAFE_PATH');
    t.regex(err!.message, /writable by others/);
    t.deepEqual(await readdir(d), []);
  }
  const real = path.join(base, 'real');
  await mkdir(real, { mode: 0o700 });
  const link = path.join(base, 'link');
  await symlink(real, link);
  t.regex((await t.throwsAsync(startControlServer(path.join(link, 'c.sock'), ping)))!.message, /is a symlink; refusing it/);
  t.deepEqual(await readdir(real), []);
  const theirs = path.join(base, 'theirs');
  await mkdir(theirs, { mode: 0o700 });
  await chown(theirs, 65534, 65534);
  t.regex((await t.throwsAsync(startControlServer(path.join(theirs, 'c.sock'), ping)))!.message, /belongs to uid 65534/);
});

test('a second daemon on a live socket is a CONFLICT naming the pid; a stale socket is replaced; racing starts leave exactly one winner', async (t) => {
  const dir = await tempDir(t);
  const socket = path.join(dir, 'control.sock');
  const first = await serve(t, socket);
  const err = await t.throwsAsync(startControlServer(socket, ping), { instanceOf: RegfsError });
  t.is(err!.code, 'CONFLICT');
  t.is(err!.message, `a regfs daemon is already running on ${socket} (pid ${process.pid})`);
  t.deepEqual(await new ControlClient(socket).request('GET', '/ping'), { pid: process.pid }, 'the first one is unharmed');
  await first.close();

  // Left behind by a crash: replaced.
  await staleSocket(socket);
  t.is((await t.throwsAsync(new ControlClient(socket).request('GET', '/ping'), { instanceOf: RegfsError }))!.code, 'NETWORK', 'nothing listens');
  const srv = await serve(t, socket, { 'GET /who': async () => ({ who: 'new' }) });
  t.deepEqual(await new ControlClient(socket).request('GET', '/who'), { who: 'new' });
  await srv.close();

  // Several starts at once, on a free path and over a stale socket: one wins, the others are CONFLICTs.
  for (const stale of [false, true]) {
    if (stale) await staleSocket(socket);
    const results = await Promise.allSettled([0, 1, 2, 3].map((i) => startControlServer(socket, { ...ping, 'GET /who': async () => ({ who: i }) })));
    for (const r of results) if (r.status === 'fulfilled') t.teardown(() => r.value.close());
    const won = results.filter((r) => r.status === 'fulfilled');
    t.is(won.length, 1, `stale=${stale}: ${results.map((r) => (r.status === 'rejected' ? String(r.reason) : 'ok')).join('; ')}`);
    for (const r of results) if (r.status === 'rejected') t.is((r.reason as RegfsError).code, 'CONFLICT');
    t.deepEqual(await new ControlClient(socket).request('GET', '/ping'), { pid: process.pid }, 'the winner answers on the path');
    t.deepEqual(await readdir(dir), ['control.sock'], 'no temporary names left');
    await (won[0] as PromiseFulfilledResult<{ close(): Promise<void> }>).value.close();
  }
});

test('close removes the socket only while it is still ours', async (t) => {
  const dir = await tempDir(t);
  const socket = path.join(dir, 'control.sock');
  const first = await startControlServer(socket, ping);
  await unlink(socket); // someone removed it, and a new daemon took the path
  const second = await serve(t, socket, { 'GET /who': async () => ({ who: 'second' }) });
  await first.close();
  t.true((await lstat(socket)).isSocket());
  t.deepEqual(await new ControlClient(socket).request('GET', '/who'), { who: 'second' });
  await second.close();
  await t.throwsAsync(lstat(socket), { code: 'ENOENT' });
});

test('a socket path longer than a Unix socket allows is refused instead of being truncated', async (t) => {
  const socket = path.join(await tempDir(t), `${'x'.repeat(120)}.sock`);
  const err = await t.throwsAsync(startControlServer(socket, ping), { instanceOf: RegfsError });
  t.is(err!.code, 'INVALID_ARGUMENT');
  t.regex(err!.message, /too long for a Unix socket/);
});

test('route errors come back with their code and without secrets; a handler that throws does not stop the server', async (t) => {
  const socket = path.join(await tempDir(t), 'control.sock');
  await serve(t, socket, {
    'GET /upstream': async () => {
      throw new RegfsError('DENIED', 'registry said no to Authorization: Bearer abc.def.ghi');
    },
    'GET /crash': async () => {
      throw new Error('boom at https://user:hunter2@registry.example/v2/');
    },
    'GET /sync-throw': (() => {
      throw new RegfsError('CONFLICT', 'thrown before any promise');
    }) as unknown as Routes[string],
  });
  const raw = (p: string): Promise<{ status: number; body: string }> =>
    new Promise((resolve, reject) => {
      http.get({ socketPath: socket, path: p }, (res) => {
        let body = '';
        res.on('data', (c: Buffer) => (body += c.toString()));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      }).on('error', reject);
    });
  const up = await raw('/upstream');
  t.is(up.status, 500);
  t.false(up.body.includes('abc.def.ghi'));
  const crash = await raw('/crash');
  t.is(crash.status, 500);
  t.false(crash.body.includes('hunter2'));
  t.is((await raw('/sync-throw')).status, 409);
  t.deepEqual(await new ControlClient(socket).request('GET', '/ping'), { pid: process.pid });
});

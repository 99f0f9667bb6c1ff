import { randomBytes } from 'node:crypto';
import { promises as fsp, type BigIntStats } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { RegfsError, isRegfsError } from '../util/errors.js';
import { nullLogger, redactText, type Logger } from '../util/log.js';

/** Routes maps `METHOD /path` to a handler of the JSON body and the query. */
export type Routes = Record<string, (body: unknown, query: URLSearchParams) => Promise<unknown>>;

const MAX_BODY = 1024 * 1024;

function statusFor(err: unknown): number {
  if (!isRegfsError(err)) return 500;
  if (err.code === 'NOT_FOUND') return 404;
  if (err.code === 'CONFLICT') return 409;
  if (err.code === 'INVALID_ARGUMENT' || err.code === 'INVALID_REFERENCE') return 400;
  return 500;
}

/** MAX_SOCKET_PATH_BYTES is the longest Unix socket path Linux accepts (sun_path is 108 bytes with the NUL). */
const MAX_SOCKET_PATH_BYTES = 107;

/** probe asks whatever listens on a socket for its pid: `live` unless the connection is refused (or nothing is there). */
function probe(socketPath: string): Promise<{ live: boolean; pid?: number }> {
  return new Promise((resolve) => {
    const req = http.request({ socketPath, path: '/ping', method: 'GET', timeout: 2000, agent: false }, (res) => {
      let text = '';
      res.on('data', (d: Buffer) => (text += d.toString()));
      res.on('end', () => {
        try {
          resolve({ live: true, pid: (JSON.parse(text) as { pid?: number }).pid });
        } catch {
          resolve({ live: true });
        }
      });
    });
    req.on('error', (err: NodeJS.ErrnoException) => resolve({ live: err.code !== 'ECONNREFUSED' && err.code !== 'ENOENT' }));
    req.on('timeout', () => {
      req.destroy();
      resolve({ live: true });
    });
    req.end();
  });
}

/** clearPath makes way at the socket path: a symlink, a non-socket or a live daemon is refused; a stale socket is removed. */
async function clearPath(socketPath: string): Promise<void> {
  const st = await fsp.lstat(socketPath, { bigint: true }).catch(() => undefined);
  if (!st) return;
  if (st.isSymbolicLink()) throw new RegfsError('UNSAFE_PATH', `${socketPath} is a symlink; refusing to use or replace it`);
  if (!st.isSocket()) throw new RegfsError('CONFLICT', `${socketPath} exists and is not a socket; remove it`);
  const p = await probe(socketPath);
  if (p.live) throw new RegfsError('CONFLICT', `a regfs daemon is already running on ${socketPath} (pid ${p.pid ?? 'unknown'})`);
  // Remove it only if it is still the stale socket probed, not one a daemon starting at the same time just put there.
  const again = await fsp.lstat(socketPath, { bigint: true }).catch(() => undefined);
  if (again && sameFile(again, st)) await fsp.rm(socketPath, { force: true });
}

/** sameFile tells whether two stats are of the same file (an inode number alone may be reused at once). */
function sameFile(a: BigIntStats, b: BigIntStats): boolean {
  return a.ino === b.ino && a.dev === b.dev && a.ctimeNs === b.ctimeNs;
}

/** prepareSocketDir makes (or checks) the socket's directory: ours, mode 0700, not a symlink. */
async function prepareSocketDir(dir: string): Promise<void> {
  await fsp.mkdir(dir, { recursive: true, mode: 0o700 });
  const st = await fsp.lstat(dir);
  if (st.isSymbolicLink()) throw new RegfsError('UNSAFE_PATH', `socket directory ${dir} is a symlink; refusing it`);
  if (st.uid !== (process.getuid?.() ?? st.uid)) throw new RegfsError('UNSAFE_PATH', `socket directory ${dir} belongs to uid ${st.uid}, not to this user`);
  if (st.mode & 0o077) {
    if (st.mode & 0o022) throw new RegfsError('UNSAFE_PATH', `socket directory ${dir} is writable by others (mode ${(st.mode & 0o777).toString(8)}); make it 0700`);
    await fsp.chmod(dir, 0o700);
  }
}

/**
 * startControlServer serves HTTP+JSON on a Unix socket created 0600 inside a 0700 directory. A symlink at
 * the socket path is refused (never followed); a live daemon on it is a CONFLICT; a stale socket file is
 * replaced. The socket is bound under a temporary name (umask 0177, so it is never wider than 0600) and
 * hard-linked into place, which fails if the name exists: of daemons starting at once, exactly one wins.
 * close() removes the socket only while it is still this server's.
 */
export async function startControlServer(socketPath: string, routes: Routes, log: Logger = nullLogger): Promise<{ close(): Promise<void> }> {
  const sock = path.resolve(socketPath);
  const dir = path.dirname(sock);
  const tmp = path.join(dir, `.${randomBytes(6).toString('hex')}.sock`);
  if (Buffer.byteLength(tmp) > MAX_SOCKET_PATH_BYTES || Buffer.byteLength(sock) > MAX_SOCKET_PATH_BYTES) {
    throw new RegfsError('INVALID_ARGUMENT', `control socket path ${sock} is too long for a Unix socket (at most ${MAX_SOCKET_PATH_BYTES} bytes, its directory at most ${MAX_SOCKET_PATH_BYTES - 19}); choose a shorter --socket`);
  }
  await prepareSocketDir(dir);
  await clearPath(sock);
  const server = http.createServer((req, res) => {
    const send = (status: number, obj: unknown): void => {
      const body = JSON.stringify(obj);
      res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
      res.end(body);
    };
    const url = new URL(req.url ?? '/', 'http://regfs');
    const handler = routes[`${req.method} ${url.pathname}`];
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > MAX_BODY) req.destroy();
      else chunks.push(c);
    });
    req.on('end', () => {
      if (!handler) return send(404, { error: `no such control route ${req.method} ${url.pathname}`, code: 'NOT_FOUND' });
      let body: unknown = {};
      try {
        if (chunks.length) body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
      } catch {
        return send(400, { error: 'request body is not JSON', code: 'INVALID_ARGUMENT' });
      }
      Promise.resolve().then(() => handler(body, url.searchParams)).then(
        (out) => send(200, out ?? {}),
        (err: unknown) => {
          const message = redactText(err instanceof Error ? err.message : String(err));
          if (!isRegfsError(err)) log.error(`control ${req.method} ${url.pathname}: ${message}`);
          send(statusFor(err), { error: message, code: isRegfsError(err) ? err.code : 'IO' });
        },
      );
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    // listen() binds synchronously: the umask is back to normal before any other code runs.
    const old = process.umask(0o177);
    try {
      server.listen(tmp, () => resolve());
    } finally {
      process.umask(old);
    }
  });
  const stopServer = async (): Promise<void> => {
    await new Promise<void>((resolve) => {
      server.close(() => resolve());
      server.closeAllConnections();
    });
    await fsp.rm(tmp, { force: true });
  };
  let ours: BigIntStats;
  try {
    await fsp.chmod(tmp, 0o600);
    ours = await fsp.lstat(tmp, { bigint: true });
    for (let attempt = 0; ; attempt++) {
      try {
        await fsp.link(tmp, sock);
        break;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST' || attempt >= 3) throw err;
        await clearPath(sock); // CONFLICT when another daemon won the race
      }
    }
    await fsp.rm(tmp);
  } catch (err) {
    await stopServer();
    throw err;
  }
  let closing: Promise<void> | undefined;
  return {
    close: () =>
      (closing ??= (async () => {
        // Checked while still listening: our socket's inode cannot be reused by another one yet.
        const st = await fsp.lstat(sock, { bigint: true }).catch(() => undefined);
        if (st && st.ino === ours.ino && st.dev === ours.dev) await fsp.rm(sock, { force: true });
        await stopServer();
      })()),
  };
}

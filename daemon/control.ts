import { promises as fsp } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { RegfsError, isRegfsError } from '../registry/errors.js';
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

/** ping asks whatever listens on a socket for its pid; undefined when nothing answers. */
function ping(socketPath: string): Promise<number | undefined> {
  return new Promise((resolve) => {
    const req = http.request({ socketPath, path: '/ping', method: 'GET', timeout: 2000 }, (res) => {
      let text = '';
      res.on('data', (d: Buffer) => (text += d.toString()));
      res.on('end', () => {
        try {
          resolve((JSON.parse(text) as { pid?: number }).pid ?? -1);
        } catch {
          resolve(-1);
        }
      });
    });
    req.on('error', () => resolve(undefined));
    req.on('timeout', () => {
      req.destroy();
      resolve(-1);
    });
    req.end();
  });
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
 * the socket path is refused; a live daemon on it is a CONFLICT; a stale socket file is replaced.
 */
export async function startControlServer(socketPath: string, routes: Routes, log: Logger = nullLogger): Promise<{ close(): Promise<void> }> {
  await prepareSocketDir(path.dirname(socketPath));
  const existing = await fsp.lstat(socketPath).catch(() => undefined);
  if (existing) {
    if (existing.isSymbolicLink()) throw new RegfsError('UNSAFE_PATH', `${socketPath} is a symlink; refusing to use or replace it`);
    if (!existing.isSocket()) throw new RegfsError('CONFLICT', `${socketPath} exists and is not a socket; remove it`);
    const pid = await ping(socketPath);
    if (pid !== undefined) throw new RegfsError('CONFLICT', `a regfs daemon is already running on ${socketPath} (pid ${pid})`);
    await fsp.rm(socketPath);
  }
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
      handler(body, url.searchParams).then(
        (out) => send(200, out ?? {}),
        (err: unknown) => {
          const message = redactText(err instanceof Error ? err.message : String(err));
          if (!isRegfsError(err)) log.error(`control ${req.method} ${url.pathname}: ${message}`);
          send(statusFor(err), { error: message, code: isRegfsError(err) ? err.code : 'IO' });
        },
      );
    });
  });
  const old = process.umask(0o177);
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(socketPath, () => resolve());
    });
  } finally {
    process.umask(old);
  }
  await fsp.chmod(socketPath, 0o600);
  return {
    close: async () => {
      await new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeAllConnections();
      await fsp.rm(socketPath, { force: true });
    },
  };
}

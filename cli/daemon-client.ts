import http from 'node:http';
import { RegfsError, type ErrorCode } from '../util/errors.js';
import { defaultPaths } from '../util/paths.js';

/** socketPathFrom picks the control socket: --socket, then $REGFS_SOCKET, then the per-user default. */
export function socketPathFrom(opts: { socket?: string }, env: NodeJS.ProcessEnv = process.env): string {
  return opts.socket ?? env.REGFS_SOCKET ?? defaultPaths(env).socket;
}

/** ControlClient talks HTTP+JSON to a running daemon over its Unix socket. */
export class ControlClient {
  constructor(readonly socketPath: string) {}

  /** request sends one call; a missing daemon is a one-line error saying how to start one. */
  request<T>(method: string, path: string, body?: unknown): Promise<T> {
    return new Promise((resolve, reject) => {
      const payload = body === undefined ? undefined : JSON.stringify(body);
      const req = http.request(
        { socketPath: this.socketPath, path, method, headers: payload ? { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) } : {} },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => {
            let parsed: unknown;
            try {
              parsed = JSON.parse(Buffer.concat(chunks).toString('utf8'));
            } catch {
              return reject(new RegfsError('IO', `the daemon on ${this.socketPath} sent a reply that is not JSON`));
            }
            if (res.statusCode === 200) return resolve(parsed as T);
            const e = parsed as { error?: string; code?: ErrorCode };
            reject(new RegfsError(e.code ?? 'IO', e.error ?? `daemon answered HTTP ${res.statusCode}`));
          });
        },
      );
      req.on('error', (err: NodeJS.ErrnoException) => {
        if (err.code === 'ENOENT' || err.code === 'ECONNREFUSED') {
          reject(new RegfsError('NETWORK', `no regfs daemon is running (socket ${this.socketPath}); start one with: regfs daemon --config FILE`));
        } else if (err.code === 'EACCES') {
          reject(new RegfsError('DENIED', `permission denied on ${this.socketPath}: the daemon belongs to another user`));
        } else reject(new RegfsError('IO', `cannot talk to the daemon on ${this.socketPath}: ${err.message}`));
      });
      req.end(payload);
    });
  }
}

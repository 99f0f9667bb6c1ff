/**
 * Test support: nginx (Debian package `nginx`) as the "object storage" host of the redirect flavour
 * of lab/registry.ts. distribution 2.8.2's `redirect` storage middleware answers a blob GET/HEAD with
 * `307 Location: <baseurl scheme>://<baseurl host><storage driver path>` (the baseurl's own path is
 * ignored), and the filesystem driver's path of a blob is
 * `/docker/registry/v2/blobs/sha256/<hex[0:2]>/<hex>/data` below its root directory. So nginx serves
 * that root directory, only the `/docker/registry/v2/blobs/` subtree, with Range support (static
 * files), and logs each request as one JSON line: method, path, Range, status, and whether an
 * Authorization header was present (a boolean, never its value).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { liveChildren } from './children.js';
import { promises as fsp } from 'node:fs';
import net from 'node:net';
import path from 'node:path';

const NGINX_BIN = '/usr/sbin/nginx';
const READY_DEADLINE_MS = 10_000;
const KILL_GRACE_MS = 3_000;

/** BLOB_PATH_PREFIX is where distribution's filesystem driver keeps blob data, relative to its root. */
export const BLOB_PATH_PREFIX = '/docker/registry/v2/blobs/';

/** BlobHostRequest is one request nginx served, from its access log. */
export interface BlobHostRequest {
  /** method is the request method. */
  method: string;
  /** path is the request path+query as received. */
  path: string;
  /** range is the Range header, if one was sent. */
  range?: string;
  /** status is the status nginx answered. */
  status: number;
  /** bytes is the number of body bytes sent. */
  bytes: number;
  /** authorization tells whether the request carried an Authorization header (its value is never logged). */
  authorization: boolean;
}

/** BlobHost is a running nginx serving a registry's storage root. */
export interface BlobHost {
  /** host is "127.0.0.1:PORT". */
  host: string;
  /** url is "http://127.0.0.1:PORT/", the redirect middleware's baseurl. */
  url: string;
  /** pid is the nginx process id. */
  readonly pid: number;
  /** requests parses the access log written so far. */
  requests(): Promise<BlobHostRequest[]>;
  /** blobPath is the URL path distribution redirects to for a digest ("sha256:<hex>"). */
  blobPath(digest: string): string;
  /** stop kills only this nginx (SIGQUIT, SIGKILL after 3 s) and waits for it; idempotent. */
  stop(): Promise<void>;
}

/** nginxConfig renders the config: foreground, single process, every path inside dir. */
function nginxConfig(dir: string, root: string, port: number): string {
  const q = (s: string): string => JSON.stringify(s); // nginx accepts double-quoted strings
  return `daemon off;
master_process off;
worker_processes 1;
pid ${q(path.join(dir, 'nginx.pid'))};
error_log ${q(path.join(dir, 'error.log'))} warn;
events { worker_connections 256; }
http {
  map $http_authorization $regfs_auth { "" "false"; default "true"; }
  log_format regfs escape=json '{"method":"$request_method","path":"$request_uri","range":"$http_range","status":"$status","bytes":"$body_bytes_sent","authorization":"$regfs_auth"}';
  access_log ${q(path.join(dir, 'access.log'))} regfs;
  client_body_temp_path ${q(path.join(dir, 'tmp', 'body'))};
  proxy_temp_path ${q(path.join(dir, 'tmp', 'proxy'))};
  fastcgi_temp_path ${q(path.join(dir, 'tmp', 'fastcgi'))};
  uwsgi_temp_path ${q(path.join(dir, 'tmp', 'uwsgi'))};
  scgi_temp_path ${q(path.join(dir, 'tmp', 'scgi'))};
  types { }
  default_type application/octet-stream;
  sendfile on;
  keepalive_timeout 30s;
  server {
    listen 127.0.0.1:${port};
    root ${q(root)};
    location ${BLOB_PATH_PREFIX} { }
    location / { return 404; }
  }
}
`;
}

function connectOnce(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port });
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

/** parseAccessLog turns the JSON lines of the access log into records (incomplete last line ignored). */
export function parseAccessLog(text: string): BlobHostRequest[] {
  const out: BlobHostRequest[] = [];
  for (const line of text.split('\n')) {
    if (line.trim() === '') continue;
    let j: Record<string, string>;
    try {
      j = JSON.parse(line) as Record<string, string>;
    } catch {
      continue;
    }
    const r: BlobHostRequest = { method: j.method ?? '', path: j.path ?? '', status: Number(j.status), bytes: Number(j.bytes), authorization: j.authorization === 'true' };
    if (j.range) r.range = j.range;
    out.push(r);
  }
  return out;
}

/** startBlobHost starts nginx on 127.0.0.1:port serving `root`, with config, logs and temp files in `dir`. */
export async function startBlobHost(dir: string, root: string, port: number): Promise<BlobHost> {
  await fsp.mkdir(path.join(dir, 'tmp'), { recursive: true });
  const conf = path.join(dir, 'nginx.conf');
  await fsp.writeFile(conf, nginxConfig(dir, root, port));
  const errorLog = path.join(dir, 'error.log');
  const child: ChildProcess = spawn(NGINX_BIN, ['-p', dir + '/', '-e', errorLog, '-c', conf], { stdio: ['ignore', 'ignore', 'pipe'] });
  liveChildren.track(child);
  let stderr = '';
  child.stderr!.setEncoding('utf8');
  child.stderr!.on('data', (d: string) => {
    if (stderr.length < 16 * 1024) stderr += d;
  });
  let exited = false;
  const gone = new Promise<void>((resolve) => {
    child.once('exit', () => {
      exited = true;
      liveChildren.forget(child);
      resolve();
    });
    child.once('error', (e) => {
      exited = true;
      liveChildren.forget(child);
      stderr += e.message;
      resolve();
    });
  });
  const deadline = Date.now() + READY_DEADLINE_MS;
  for (;;) {
    if (exited) {
      const log = await fsp.readFile(errorLog, 'utf8').catch(() => '');
      throw new Error(`nginx exited before becoming ready:\n${stderr}${log}`);
    }
    // nginx writes its pid file only after it has bound the listening socket: then connect.
    const pidText = await fsp.readFile(path.join(dir, 'nginx.pid'), 'utf8').catch(() => '');
    if (pidText.trim() === String(child.pid) && (await connectOnce(port))) break;
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      await gone;
      throw new Error(`nginx not ready within ${READY_DEADLINE_MS} ms on 127.0.0.1:${port}`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  let stopped: Promise<void> | undefined;
  const host = `127.0.0.1:${port}`;
  return {
    host,
    url: `http://${host}/`,
    pid: child.pid ?? 0,
    async requests(): Promise<BlobHostRequest[]> {
      return parseAccessLog(await fsp.readFile(path.join(dir, 'access.log'), 'utf8').catch(() => ''));
    },
    blobPath(digest: string): string {
      const [alg, hex] = digest.split(':') as [string, string];
      return `${BLOB_PATH_PREFIX}${alg}/${hex.slice(0, 2)}/${hex}/data`;
    },
    stop(): Promise<void> {
      stopped ??= (async () => {
        if (exited || child.pid === undefined) return;
        child.kill('SIGQUIT');
        const timer = setTimeout(() => {
          if (!exited) child.kill('SIGKILL');
        }, KILL_GRACE_MS);
        await gone;
        clearTimeout(timer);
      })();
      return stopped;
    },
  };
}

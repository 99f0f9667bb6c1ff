/**
 * Test support: start a throw-away CNCF distribution (Debian `docker-registry`, 2.8.2) instance
 * in one of several flavours (plain HTTP, htpasswd basic auth, bearer-token auth with an in-process
 * token server (lab/token-server.ts), HTTPS with a private CA), optionally with blob GETs redirected
 * to an nginx "storage host" (lab/blob-host.ts), plus small helpers for tests.
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { liveChildren } from './children.js';
import { randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { startBlobHost, type BlobHost } from './blob-host.js';
import { startTokenServer, TEST_USERNAME, TOKEN_ISSUER, TOKEN_SERVICE, type TokenServer, type TokenServerHandle } from './token-server.js';

export { TEST_USERNAME, TOKEN_ISSUER, TOKEN_SERVICE, DEFAULT_PUBLIC_NAMESPACE } from './token-server.js';
export type { TokenServer, TokenRequest, TokenPolicy, TokenGrants, IssuedToken, AccessEntry } from './token-server.js';
export type { BlobHost, BlobHostRequest } from './blob-host.js';

const execFileP = promisify(execFile);

/** RegistryFlavour selects how the test registry is exposed and authenticated. */
export type RegistryFlavour = 'plain' | 'basic' | 'token' | 'tls';

/** StartedRegistry is a running (or killed-but-restartable) test registry and its controls. */
export interface StartedRegistry {
  /** host is the registry's "127.0.0.1:PORT" as clients use it. */
  host: string;
  /** url is "http://127.0.0.1:PORT", or "https://127.0.0.1:PORT" for the tls flavour. */
  url: string;
  /** dir is the temp dir holding storage and config (removed on stop). */
  dir: string;
  /** username is set for the basic and token flavours ("regfs-user"). */
  username?: string;
  /** password is random per start, set for the basic and token flavours (token: the current one, after setPassword). */
  readonly password?: string;
  /** caFile is (tls flavour) the PEM file of the CA that signed the server certificate. */
  caFile?: string;
  /** tokenServer is (token flavour) the in-process token server. */
  tokenServer?: TokenServer;
  /** blobHost is (redirect option) the nginx that blob GETs and HEADs are redirected to. */
  blobHost?: BlobHost;
  /** pid is the current registry child's pid (changes after restart). */
  readonly pid: number;
  /** stop kills only its own children (SIGTERM, SIGKILL after 3 s; nginx too), closes the token server, removes dir; idempotent. */
  stop(): Promise<void>;
  /** restart stops the process (keeping storage) and starts it again on the same port, waiting until ready. */
  restart(): Promise<void>;
  /** kill stops the process but keeps the storage dir ("registry down"); restart() brings it back. */
  kill(): Promise<void>;
  /** logs returns the combined stdout/stderr of the registry so far (capped at 1 MiB, newest kept). */
  logs(): string;
  /** blobBytesServed sums the body bytes the registry wrote for blob requests since start (needs `accessLog`; counts every answer as its access log line lands). */
  blobBytesServed(): number;
}

/** StartOptions configures startRegistry. */
export interface StartOptions {
  /** flavour defaults to 'plain'. */
  flavour?: RegistryFlavour;
  /** deleteEnabled toggles storage.delete.enabled (default true). */
  deleteEnabled?: boolean;
  /** tagListPageSize is not supported by distribution 2.8.2 configuration. */
  tagListPageSize?: never;
  /**
   * redirect configures distribution's `redirect` storage middleware so blob GETs and HEADs answer
   * 307 to an nginx on another loopback port serving the storage root (combinable with every flavour).
   */
  redirect?: boolean;
  /**
   * blobHostFront puts something in front of the redirect flavour's nginx: it gets nginx's URL and
   * returns the base URL the registry redirects to instead (e.g. a fault proxy's URL + "/").
   */
  blobHostFront?: (blobHostUrl: string) => Promise<string>;
  /** accessLog turns on distribution's access log, so blobBytesServed() counts what it sent without a proxy in between. */
  accessLog?: boolean;
}

const REGISTRY_BIN = '/usr/bin/docker-registry';
const LOG_CAP = 1024 * 1024;
const READY_DEADLINE_MS = 20_000;
const KILL_GRACE_MS = 3_000;

/** withTimeout resolves/rejects like p, or rejects with "<what> timed out after <ms> ms". */
export async function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} timed out after ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([p, timeout]);
  } finally {
    if (timer) clearTimeout(timer);
  }
}

/** freePort binds 127.0.0.1:0, reads the assigned port and closes the socket. */
export async function freePort(): Promise<number> {
  return new Promise<number>((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      if (addr === null || typeof addr === 'string') {
        srv.close();
        reject(new Error('freePort: unexpected address'));
        return;
      }
      const port = addr.port;
      srv.close((err) => (err ? reject(err) : resolve(port)));
    });
  });
}

// ---------------------------------------------------------------------------------------------
// small helpers

async function run(cmd: string, args: string[], cwd: string): Promise<string> {
  try {
    const { stdout } = await execFileP(cmd, args, { cwd, maxBuffer: 16 * 1024 * 1024 });
    return stdout;
  } catch (e) {
    const err = e as Error & { stderr?: string };
    throw new Error(`${cmd} ${args.join(' ')} failed: ${err.message}\n${err.stderr ?? ''}`);
  }
}

/** One HTTP(S) GET for readiness probing; resolves with the status code. */
function probe(url: string, ca: string | undefined): Promise<number> {
  return new Promise<number>((resolve, reject) => {
    const u = new URL(url);
    const opts: https.RequestOptions = { method: 'GET', timeout: 1000, agent: false };
    const req =
      u.protocol === 'https:' ? https.request(u, { ...opts, ca }) : http.request(u, opts);
    req.on('response', (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on('timeout', () => req.destroy(new Error('probe timeout')));
    req.on('error', reject);
    req.end();
  });
}

function delay(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

// ---------------------------------------------------------------------------------------------
// config generation

function yamlQuote(s: string): string {
  return JSON.stringify(s); // JSON strings are valid YAML double-quoted scalars
}

function buildConfig(o: {
  dir: string;
  port: number;
  deleteEnabled: boolean;
  accessLog?: boolean;
  auth?: string;
  tls?: { cert: string; key: string };
  redirectBaseUrl?: string;
}): string {
  const lines = [
    'version: 0.1',
    'log:',
    '  level: warn',
    '  accesslog:',
    `    disabled: ${o.accessLog ? 'false' : 'true'}`,
    'storage:',
    '  filesystem:',
    `    rootdirectory: ${yamlQuote(path.join(o.dir, 'data'))}`,
    '  delete:',
    `    enabled: ${o.deleteEnabled ? 'true' : 'false'}`,
    '  cache: {}',
    '  maintenance:',
    '    uploadpurging:',
    '      enabled: false',
    'http:',
    `  addr: 127.0.0.1:${o.port}`,
    `  secret: ${randomBytes(16).toString('hex')}`,
    '  headers:',
    '    X-Content-Type-Options: [nosniff]',
  ];
  if (o.tls) {
    lines.push('  tls:', `    certificate: ${yamlQuote(o.tls.cert)}`, `    key: ${yamlQuote(o.tls.key)}`);
  }
  lines.push(
    'health:',
    '  storagedriver:',
    '    enabled: false',
  );
  if (o.auth) lines.push(o.auth);
  if (o.redirectBaseUrl) {
    lines.push('middleware:', '  storage:', '    - name: redirect', '      options:', `        baseurl: ${yamlQuote(o.redirectBaseUrl)}`);
  }
  return lines.join('\n') + '\n';
}

// ---------------------------------------------------------------------------------------------
// the registry process

/** startBlobHostRetrying starts nginx on a free port, retrying with another one if it was taken meanwhile. */
async function startBlobHostRetrying(dir: string, root: string): Promise<BlobHost> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await startBlobHost(dir, root, await freePort());
    } catch (e) {
      if (attempt < 3 && /address already in use/i.test(e instanceof Error ? e.message : String(e))) continue;
      throw e;
    }
  }
}

/** startRegistry starts a fresh registry of the given flavour; registers t.teardown(stop) if t is given. */
export async function startRegistry(
  t: { teardown(fn: () => unknown): void } | undefined,
  opts: StartOptions = {},
): Promise<StartedRegistry> {
  const flavour = opts.flavour ?? 'plain';
  const deleteEnabled = opts.deleteEnabled ?? true;
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'regfs-reg-'));
  await fsp.mkdir(path.join(dir, 'data'));

  let tokenHandle: TokenServerHandle | undefined;
  let username: string | undefined;
  let password: string | undefined;
  let caFile: string | undefined;
  let caPem: string | undefined;
  let auth: string | undefined;
  let tls: { cert: string; key: string } | undefined;
  let blobHost: BlobHost | undefined;
  let redirectBaseUrl: string | undefined;

  try {
    if (flavour === 'basic' || flavour === 'token') {
      username = TEST_USERNAME;
      password = randomBytes(12).toString('hex');
    }
    if (flavour === 'basic') {
      const line = await run('htpasswd', ['-Bbn', username!, password!], dir);
      const htpasswdFile = path.join(dir, 'htpasswd');
      await fsp.writeFile(htpasswdFile, line.trim() + '\n', { mode: 0o600 });
      auth = ['auth:', '  htpasswd:', '    realm: regfs-test', `    path: ${yamlQuote(htpasswdFile)}`].join('\n');
    } else if (flavour === 'token') {
      const keyFile = path.join(dir, 'token-key.pem');
      const certFile = path.join(dir, 'token-cert.pem');
      await run(
        'openssl',
        ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-subj', '/CN=regfs-token', '-keyout', keyFile, '-out', certFile],
        dir,
      );
      const [keyPem, certPem] = await Promise.all([fsp.readFile(keyFile, 'utf8'), fsp.readFile(certFile, 'utf8')]);
      tokenHandle = await startTokenServer(keyPem, certPem, username!, password!);
      auth = [
        'auth:',
        '  token:',
        `    realm: ${yamlQuote(tokenHandle.server.url)}`,
        `    service: ${TOKEN_SERVICE}`,
        `    issuer: ${TOKEN_ISSUER}`,
        `    rootcertbundle: ${yamlQuote(certFile)}`,
      ].join('\n');
    } else if (flavour === 'tls') {
      const caKey = path.join(dir, 'ca-key.pem');
      caFile = path.join(dir, 'ca.pem');
      const srvKey = path.join(dir, 'server-key.pem');
      const srvCsr = path.join(dir, 'server.csr');
      const srvCert = path.join(dir, 'server.pem');
      const ext = path.join(dir, 'server-ext.cnf');
      await fsp.writeFile(
        ext,
        [
          'basicConstraints=critical,CA:FALSE',
          'keyUsage=critical,digitalSignature,keyEncipherment',
          'extendedKeyUsage=serverAuth',
          'subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:registry.invalid',
          '',
        ].join('\n'),
      );
      // CA and server key/CSR are independent: generate in parallel.
      await Promise.all([
        run('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-subj', '/CN=regfs-test-ca', '-keyout', caKey, '-out', caFile], dir),
        run('openssl', ['req', '-new', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=127.0.0.1', '-keyout', srvKey, '-out', srvCsr], dir),
      ]);
      await run(
        'openssl',
        ['x509', '-req', '-in', srvCsr, '-CA', caFile, '-CAkey', caKey, '-set_serial', '0x' + randomBytes(8).toString('hex'), '-days', '2', '-sha256', '-extfile', ext, '-out', srvCert],
        dir,
      );
      caPem = await fsp.readFile(caFile, 'utf8');
      tls = { cert: srvCert, key: srvKey };
    }
    if (opts.redirect) blobHost = await startBlobHostRetrying(path.join(dir, 'nginx'), path.join(dir, 'data'));
    if (blobHost) redirectBaseUrl = opts.blobHostFront ? await opts.blobHostFront(blobHost.url) : blobHost.url;
  } catch (e) {
    await blobHost?.stop();
    await tokenHandle?.close();
    await fsp.rm(dir, { recursive: true, force: true });
    throw e;
  }

  const scheme = flavour === 'tls' ? 'https' : 'http';
  const configFile = path.join(dir, 'config.yml');

  let logBuf = '';
  let logTail = '';
  let blobBytes = 0;
  // An access log line: ... "GET /v2/NAME/blobs/sha256:HEX HTTP/1.1" 206 4096 ...
  const accessLine = /"(?:GET|HEAD) \S*\/blobs\/\S* HTTP\/[\d.]+" \d{3} (\d+)/;
  const appendLog = (s: string): void => {
    if (opts.accessLog) {
      const lines = (logTail + s).split('\n');
      logTail = lines.pop() ?? '';
      for (const line of lines) {
        const m = accessLine.exec(line);
        if (m) blobBytes += Number(m[1]);
      }
    }
    logBuf += s;
    if (logBuf.length > LOG_CAP) logBuf = '[... earlier log output truncated ...]\n' + logBuf.slice(logBuf.length - LOG_CAP);
  };

  let child: ChildProcess | undefined;
  let currentPid = 0;
  let stopped: Promise<void> | undefined;
  let port = 0;

  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    // distribution lets REGISTRY_* variables override the config file: keep them out.
    if (!k.startsWith('REGISTRY_')) env[k] = v;
  }

  /** Spawn the registry on `port` and wait for readiness; rejects (and reaps) if it dies first. */
  const launch = async (): Promise<void> => {
    await fsp.writeFile(configFile, buildConfig({ dir, port, deleteEnabled, accessLog: opts.accessLog, auth, tls, redirectBaseUrl }));
    const c = spawn(REGISTRY_BIN, ['serve', configFile], {
      cwd: dir,
      env,
      detached: false,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    child = c;
    liveChildren.track(c);
    let stderr = '';
    c.stdout!.setEncoding('utf8');
    c.stderr!.setEncoding('utf8');
    c.stdout!.on('data', (d: string) => appendLog(d));
    c.stderr!.on('data', (d: string) => {
      appendLog(d);
      if (stderr.length < 64 * 1024) stderr += d;
    });
    let exited = false;
    const exitP = new Promise<string>((resolve) => {
      c.once('exit', (code, sig) => {
        exited = true;
        liveChildren.forget(c);
        resolve(`exit code ${code ?? 'null'} signal ${sig ?? 'null'}`);
      });
      c.once('error', (err) => {
        exited = true;
        liveChildren.forget(c);
        resolve(`spawn error: ${err.message}`);
      });
    });
    await new Promise<void>((resolve, reject) => {
      c.once('spawn', () => resolve());
      c.once('error', reject);
    });
    currentPid = c.pid ?? 0;

    const deadline = Date.now() + READY_DEADLINE_MS;
    const readyUrl = `${scheme}://127.0.0.1:${port}/v2/`;
    for (;;) {
      if (exited) {
        const how = await exitP;
        // give the stderr pipe a moment to drain
        await delay(20);
        throw new Error(`docker-registry exited before becoming ready (${how}):\n${stderr}`);
      }
      try {
        const status = await probe(readyUrl, caPem);
        if (status === 200 || status === 401) return;
      } catch {
        /* not listening yet */
      }
      if (Date.now() > deadline) {
        await terminate();
        throw new Error(`docker-registry not ready within ${READY_DEADLINE_MS} ms on ${readyUrl}:\n${stderr}`);
      }
      await delay(25);
    }
  };

  /** SIGTERM our own child, SIGKILL after the grace period; resolves once it has been reaped. */
  const terminate = async (): Promise<void> => {
    const c = child;
    child = undefined;
    if (!c || c.exitCode !== null || c.signalCode !== null || c.pid === undefined) {
      if (c) liveChildren.forget(c);
      return;
    }
    const gone = new Promise<void>((resolve) => c.once('exit', () => resolve()));
    try {
      process.kill(c.pid, 'SIGTERM');
    } catch {
      /* already gone */
    }
    const timer = setTimeout(() => {
      try {
        if (c.pid !== undefined) process.kill(c.pid, 'SIGKILL');
      } catch {
        /* already gone */
      }
    }, KILL_GRACE_MS);
    try {
      await gone;
    } finally {
      clearTimeout(timer);
      liveChildren.forget(c);
    }
  };

  // Start, retrying with a new port if the one freePort() returned was grabbed in the meantime.
  for (let attempt = 0; ; attempt++) {
    port = await freePort();
    try {
      await launch();
      break;
    } catch (e) {
      const msg = e instanceof Error ? e.message : String(e);
      if (attempt < 3 && /address already in use/i.test(msg)) continue;
      await blobHost?.stop();
      await tokenHandle?.close();
      await fsp.rm(dir, { recursive: true, force: true });
      throw e;
    }
  }

  const host = `127.0.0.1:${port}`;
  const reg: StartedRegistry = {
    host,
    url: `${scheme}://${host}`,
    dir,
    get pid(): number {
      return currentPid;
    },
    stop(): Promise<void> {
      stopped ??= (async () => {
        await terminate();
        await blobHost?.stop();
        await tokenHandle?.close();
        await fsp.rm(dir, { recursive: true, force: true });
      })();
      return stopped;
    },
    async kill(): Promise<void> {
      await terminate();
    },
    async restart(): Promise<void> {
      if (stopped) throw new Error('registry was stopped; cannot restart');
      await terminate();
      appendLog('--- regfs test harness: restart ---\n');
      await launch();
    },
    logs(): string {
      return logBuf;
    },
    blobBytesServed(): number {
      return blobBytes;
    },
  };
  if (username !== undefined) reg.username = username;
  if (password !== undefined) {
    const initial = password;
    const ts = tokenHandle?.server;
    Object.defineProperty(reg, 'password', { enumerable: true, get: () => (ts && username !== undefined ? ts.passwordOf(username) : undefined) ?? initial });
  }
  if (caFile !== undefined) reg.caFile = caFile;
  if (tokenHandle) reg.tokenServer = tokenHandle.server;
  if (blobHost) reg.blobHost = blobHost;
  t?.teardown(() => reg.stop());
  return reg;
}

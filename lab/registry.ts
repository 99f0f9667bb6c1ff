/**
 * Test support: start a throw-away CNCF distribution (Debian `docker-registry`, 2.8.2) instance
 * in one of several flavours (plain HTTP, htpasswd basic auth, bearer-token auth with an in-process
 * token server, HTTPS with a private CA), plus small helpers for tests.
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { createSign, randomBytes, timingSafeEqual } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';

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
  /** password is random per start, set for the basic and token flavours. */
  password?: string;
  /** caFile is (tls flavour) the PEM file of the CA that signed the server certificate. */
  caFile?: string;
  /** tokenServer is (token flavour) the in-process token server. */
  tokenServer?: TokenServer;
  /** pid is the current registry child's pid (changes after restart). */
  readonly pid: number;
  /** stop kills only its own child (SIGTERM, SIGKILL after 3 s), closes the token server, removes dir; idempotent. */
  stop(): Promise<void>;
  /** restart stops the process (keeping storage) and starts it again on the same port, waiting until ready. */
  restart(): Promise<void>;
  /** kill stops the process but keeps the storage dir ("registry down"); restart() brings it back. */
  kill(): Promise<void>;
  /** logs returns the combined stdout/stderr of the registry so far (capped at 1 MiB, newest kept). */
  logs(): string;
}

/** TokenRequest is one request seen by the token server. */
export interface TokenRequest {
  /** method is the HTTP method ("GET" or "POST"). */
  method: string;
  /** query is the parsed query string (repeated keys become arrays). */
  query: Record<string, string | string[]>;
  /** form is the parsed urlencoded body of a POST. */
  form?: Record<string, string>;
  /** authorization is the raw Authorization header, if any. */
  authorization?: string;
}

/** TokenServer is the in-process Docker-token-spec auth server used by the token flavour. */
export interface TokenServer {
  /** url is the realm URL, e.g. "http://127.0.0.1:PORT/token". */
  url: string;
  /** requests lists every request received, in order. */
  requests: TokenRequest[];
  /** issuedTokens lists every access token handed out. */
  issuedTokens: string[];
  /** tokenLifetimeSeconds is the lifetime of newly issued tokens (settable; default 300). */
  tokenLifetimeSeconds: number;
  /** refreshTokens is the set of refresh tokens it accepts (each acts as the configured user). */
  refreshTokens: Set<string>;
  /** down makes the server answer every request with 503 while true. */
  down: boolean;
}

/** StartOptions configures startRegistry. */
export interface StartOptions {
  /** flavour defaults to 'plain'. */
  flavour?: RegistryFlavour;
  /** deleteEnabled toggles storage.delete.enabled (default true). */
  deleteEnabled?: boolean;
  /** tagListPageSize is not supported by distribution 2.8.2 configuration. */
  tagListPageSize?: never;
}

/** TOKEN_SERVICE is the `service` the token-flavour registry expects in tokens. */
export const TOKEN_SERVICE = 'regfs-test-registry';
/** TOKEN_ISSUER is the `iss` the token-flavour registry expects in tokens. */
export const TOKEN_ISSUER = 'regfs-test-issuer';
/** TEST_USERNAME is the user name of the basic and token flavours. */
export const TEST_USERNAME = 'regfs-user';

const REGISTRY_BIN = '/usr/bin/docker-registry';
const LOG_CAP = 1024 * 1024;
const READY_DEADLINE_MS = 20_000;
const KILL_GRACE_MS = 3_000;

/** live holds every registry child this process spawned, so they die with it. */
const live = new Set<ChildProcess>();
let exitHookInstalled = false;
function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.once('exit', () => {
    for (const c of live) {
      try {
        if (c.pid !== undefined && c.exitCode === null && c.signalCode === null) process.kill(c.pid, 'SIGKILL');
      } catch {
        /* already gone */
      }
    }
  });
}

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

function b64url(buf: Buffer | string): string {
  return Buffer.from(buf).toString('base64url');
}

function pemToDerBase64(pem: string): string {
  const m = /-----BEGIN CERTIFICATE-----([\s\S]+?)-----END CERTIFICATE-----/.exec(pem);
  if (!m) throw new Error('no certificate in PEM');
  return m[1]!.replace(/\s+/g, '');
}

function safeEqual(a: string, b: string): boolean {
  const ab = Buffer.from(a);
  const bb = Buffer.from(b);
  return ab.length === bb.length && timingSafeEqual(ab, bb);
}

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
// token server

interface AccessEntry {
  type: string;
  name: string;
  actions: string[];
}

/** parseScope splits "type:name:actions" at the first and the LAST ':' (names may contain ':' and '/'). */
function parseScope(scope: string): AccessEntry | undefined {
  const first = scope.indexOf(':');
  const last = scope.lastIndexOf(':');
  if (first < 0 || last <= first) return undefined;
  const actions = scope
    .slice(last + 1)
    .split(',')
    .map((a) => a.trim())
    .filter((a) => a !== '');
  return { type: scope.slice(0, first), name: scope.slice(first + 1, last), actions };
}

interface TokenServerHandle {
  server: TokenServer;
  close(): Promise<void>;
}

async function startTokenServer(keyPem: string, certPem: string, username: string, password: string): Promise<TokenServerHandle> {
  const x5c = [pemToDerBase64(certPem)];
  const state: TokenServer = {
    url: '',
    requests: [],
    issuedTokens: [],
    tokenLifetimeSeconds: 300,
    refreshTokens: new Set<string>(),
    down: false,
  };

  const sign = (sub: string, access: AccessEntry[]): { token: string; expiresIn: number; now: number } => {
    const now = Math.floor(Date.now() / 1000);
    const expiresIn = state.tokenLifetimeSeconds;
    const header = { typ: 'JWT', alg: 'RS256', x5c };
    const claims = {
      iss: TOKEN_ISSUER,
      sub,
      aud: TOKEN_SERVICE,
      exp: now + expiresIn,
      nbf: now - 5,
      iat: now,
      jti: randomBytes(16).toString('hex'),
      access,
    };
    const input = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(claims))}`;
    const sig = createSign('RSA-SHA256').update(input).sign(keyPem);
    const token = `${input}.${b64url(sig)}`;
    state.issuedTokens.push(token);
    return { token, expiresIn, now };
  };

  const grant = (scopes: string[], authenticated: boolean): AccessEntry[] => {
    const out: AccessEntry[] = [];
    for (const s of scopes) {
      const e = parseScope(s);
      if (!e) continue;
      out.push(authenticated ? e : { ...e, actions: e.actions.filter((a) => a === 'pull') });
    }
    return out;
  };

  const splitScopes = (vals: string[]): string[] =>
    vals.flatMap((v) => v.split(' ')).map((s) => s.trim()).filter((s) => s !== '');

  const send = (res: http.ServerResponse, status: number, body: unknown): void => {
    const data = JSON.stringify(body);
    res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(data) });
    res.end(data);
  };
  const unauthorized = (res: http.ServerResponse, message = 'authentication failed'): void =>
    send(res, 401, { errors: [{ code: 'UNAUTHORIZED', message }] });

  const srv = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      try {
        const u = new URL(req.url ?? '/', 'http://127.0.0.1');
        const query: Record<string, string | string[]> = {};
        for (const k of new Set(u.searchParams.keys())) {
          const all = u.searchParams.getAll(k);
          query[k] = all.length === 1 ? all[0]! : all;
        }
        const method = req.method ?? 'GET';
        const record: TokenRequest = { method, query };
        if (req.headers.authorization !== undefined) record.authorization = req.headers.authorization;
        let form: URLSearchParams | undefined;
        if (method === 'POST') {
          form = new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
          record.form = Object.fromEntries(form.entries());
        }
        state.requests.push(record);

        if (state.down) {
          send(res, 503, { errors: [{ code: 'UNAVAILABLE', message: 'token server down' }] });
          return;
        }
        if (u.pathname !== '/token') {
          send(res, 404, { errors: [{ code: 'NOT_FOUND', message: 'not found' }] });
          return;
        }

        if (method === 'GET') {
          let sub = '';
          const auth = req.headers.authorization;
          if (auth !== undefined && /^basic /i.test(auth)) {
            const decoded = Buffer.from(auth.slice(6).trim(), 'base64').toString('utf8');
            const idx = decoded.indexOf(':');
            const u0 = idx < 0 ? decoded : decoded.slice(0, idx);
            const p0 = idx < 0 ? '' : decoded.slice(idx + 1);
            if (!safeEqual(u0, username) || !safeEqual(p0, password)) {
              unauthorized(res);
              return;
            }
            sub = username;
          }
          const access = grant(splitScopes(u.searchParams.getAll('scope')), sub !== '');
          const { token, expiresIn, now } = sign(sub, access);
          const body: Record<string, unknown> = {
            token,
            access_token: token,
            expires_in: expiresIn,
            issued_at: new Date(now * 1000).toISOString(),
          };
          if (sub !== '' && u.searchParams.get('offline_token') === 'true') {
            const rt = randomBytes(24).toString('hex');
            state.refreshTokens.add(rt);
            body.refresh_token = rt;
          }
          send(res, 200, body);
          return;
        }

        if (method === 'POST' && form) {
          const scopes = splitScopes(form.getAll('scope'));
          const grantType = form.get('grant_type');
          let refresh: string | undefined;
          if (grantType === 'password') {
            if (!safeEqual(form.get('username') ?? '', username) || !safeEqual(form.get('password') ?? '', password)) {
              unauthorized(res);
              return;
            }
            refresh = randomBytes(24).toString('hex');
            state.refreshTokens.add(refresh);
          } else if (grantType === 'refresh_token') {
            const rt = form.get('refresh_token') ?? '';
            if (!state.refreshTokens.has(rt)) {
              unauthorized(res, 'invalid refresh token');
              return;
            }
            refresh = rt;
          } else {
            send(res, 400, { errors: [{ code: 'UNSUPPORTED', message: `unsupported grant_type ${grantType ?? ''}` }] });
            return;
          }
          const { token, expiresIn, now } = sign(username, grant(scopes, true));
          send(res, 200, {
            access_token: token,
            expires_in: expiresIn,
            issued_at: new Date(now * 1000).toISOString(),
            refresh_token: refresh,
          });
          return;
        }
        send(res, 405, { errors: [{ code: 'UNSUPPORTED', message: 'method not allowed' }] });
      } catch (e) {
        send(res, 500, { errors: [{ code: 'UNKNOWN', message: String(e) }] });
      }
    });
  });
  srv.keepAliveTimeout = 1000;
  await new Promise<void>((resolve, reject) => {
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => resolve());
  });
  const addr = srv.address() as net.AddressInfo;
  state.url = `http://127.0.0.1:${addr.port}/token`;
  return {
    server: state,
    close: () =>
      new Promise<void>((resolve) => {
        srv.close(() => resolve());
        srv.closeAllConnections();
      }),
  };
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
  auth?: string;
  tls?: { cert: string; key: string };
}): string {
  const lines = [
    'version: 0.1',
    'log:',
    '  level: warn',
    '  accesslog:',
    '    disabled: true',
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
  return lines.join('\n') + '\n';
}

// ---------------------------------------------------------------------------------------------
// the registry process

/** startRegistry starts a fresh registry of the given flavour; registers t.teardown(stop) if t is given. */
export async function startRegistry(
  t: { teardown(fn: () => unknown): void } | undefined,
  opts: StartOptions = {},
): Promise<StartedRegistry> {
  installExitHook();
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
          'subjectAltName=IP:127.0.0.1,DNS:localhost',
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
  } catch (e) {
    await tokenHandle?.close();
    await fsp.rm(dir, { recursive: true, force: true });
    throw e;
  }

  const scheme = flavour === 'tls' ? 'https' : 'http';
  const configFile = path.join(dir, 'config.yml');

  let logBuf = '';
  const appendLog = (s: string): void => {
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
    await fsp.writeFile(configFile, buildConfig({ dir, port, deleteEnabled, auth, tls }));
    const c = spawn(REGISTRY_BIN, ['serve', configFile], {
      cwd: dir,
      env,
      detached: false,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    child = c;
    live.add(c);
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
        live.delete(c);
        resolve(`exit code ${code ?? 'null'} signal ${sig ?? 'null'}`);
      });
      c.once('error', (err) => {
        exited = true;
        live.delete(c);
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
      if (c) live.delete(c);
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
      live.delete(c);
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
  };
  if (username !== undefined) reg.username = username;
  if (password !== undefined) reg.password = password;
  if (caFile !== undefined) reg.caFile = caFile;
  if (tokenHandle) reg.tokenServer = tokenHandle.server;
  t?.teardown(() => reg.stop());
  return reg;
}

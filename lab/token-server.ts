/**
 * Test support: an in-process Docker-token-spec auth server (RS256 JWTs) for the token flavour of
 * lab/registry.ts, shaped like Docker Hub's and GHCR's: grants per user and repository from a
 * policy the test sets, anonymous pull only for a public namespace, a settable token lifetime,
 * passwords changeable at run time, and counts of issued tokens per scope.
 * It never logs; credentials and tokens stay in its own state.
 */
import { createSign, randomBytes, timingSafeEqual } from 'node:crypto';
import http from 'node:http';
import type net from 'node:net';

/** TOKEN_SERVICE is the `service` the token-flavour registry expects in tokens. */
export const TOKEN_SERVICE = 'regfs-test-registry';
/** TOKEN_ISSUER is the `iss` the token-flavour registry expects in tokens. */
export const TOKEN_ISSUER = 'regfs-test-issuer';
/** TEST_USERNAME is the user name of the basic and token flavours. */
export const TEST_USERNAME = 'regfs-user';
/** REGISTRY_LEEWAY_SECONDS is how long distribution 2.8.2 still accepts a token after its `exp` (registry/auth/token: Leeway). */
export const REGISTRY_LEEWAY_SECONDS = 60;
/** DEFAULT_PUBLIC_NAMESPACE is the prefix under which anonymous clients get pull tokens ("public/"). */
export const DEFAULT_PUBLIC_NAMESPACE = 'public/';

/**
 * TokenGrants maps resource patterns to the actions granted on them. A pattern is a repository
 * name (`team/app`), a prefix (`team/*`: every repository below `team/`), `*` (every repository),
 * or a registry resource spelled `registry:catalog`. The action `*` grants every requested action.
 */
export type TokenGrants = Record<string, string[]>;

/** TokenPolicy maps a user name to its grants; users not in it get nothing (but may still authenticate). */
export type TokenPolicy = Record<string, TokenGrants>;

/** AccessEntry is one element of a token's `access` claim. */
export interface AccessEntry {
  /** type is "repository" or "registry". */
  type: string;
  /** name is the repository name, or "catalog". */
  name: string;
  /** actions are the granted actions (possibly fewer than requested, possibly none). */
  actions: string[];
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

/** IssuedToken describes one access token handed out (the token itself is in `issuedTokens`). */
export interface IssuedToken {
  /** sub is the user the token was issued to ("" for anonymous). */
  sub: string;
  /** scopes are the scopes as requested ("repository:team/app:pull,push", ...). */
  scopes: string[];
  /** access is what was granted. */
  access: AccessEntry[];
  /** expiresIn is the lifetime in seconds. */
  expiresIn: number;
}

/** TokenServer is the in-process token server's state and controls. */
export interface TokenServer {
  /** url is the realm URL, e.g. "http://127.0.0.1:PORT/token" (its own port, not the registry's). */
  url: string;
  /** requests lists every request received, in order. */
  requests: TokenRequest[];
  /** issuedTokens lists every access token handed out (parallel to `issued`). */
  issuedTokens: string[];
  /** issued describes every access token handed out, in order. */
  issued: IssuedToken[];
  /** tokenLifetimeSeconds is the lifetime of newly issued tokens (settable; default 300). */
  tokenLifetimeSeconds: number;
  /**
   * exactExpiry (default true) writes `exp` REGISTRY_LEEWAY_SECONDS early, so the registry refuses a
   * token exactly `expires_in` seconds after it was issued instead of a minute later.
   */
  exactExpiry: boolean;
  /** refreshTokens is the set of refresh tokens it accepts (added ones act as TEST_USERNAME). */
  refreshTokens: Set<string>;
  /** down makes the server answer every request with 503 while true. */
  down: boolean;
  /** policy is user → resource patterns → actions (mutable; default: TEST_USERNAME gets everything). */
  policy: TokenPolicy;
  /** publicNamespace is the prefix anonymous clients may pull from (default "public/"; "" for none, "*" for all). */
  publicNamespace: string;
  /** setPassword adds a user or changes its password at run time; old tokens stay valid until they expire. */
  setPassword(user: string, password: string): void;
  /** addUser sets a user's password and replaces its grants. */
  addUser(user: string, password: string, grants: TokenGrants): void;
  /** passwordOf returns the current password of a user (for the test's own use; never print it). */
  passwordOf(user: string): string | undefined;
  /** countIssued counts the tokens issued for requests that named this scope (string: exact; RegExp: test). */
  countIssued(scope: string | RegExp): number;
  /** tokensPerScope returns scope → number of tokens issued for requests that named it. */
  tokensPerScope(): Record<string, number>;
}

/** TokenServerHandle is a started token server and the way to stop it. */
export interface TokenServerHandle {
  /** server is the state and controls. */
  server: TokenServer;
  /** close stops listening and drops every connection. */
  close(): Promise<void>;
}

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

/** parseScope splits "type:name:actions" at the first and the LAST ':' (names may contain ':' and '/'). */
export function parseScope(scope: string): AccessEntry | undefined {
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

/** patternMatches tells whether a policy pattern covers a requested resource. */
function patternMatches(pattern: string, e: AccessEntry): boolean {
  if (pattern.startsWith('registry:')) return e.type === 'registry' && pattern.slice('registry:'.length) === e.name;
  if (e.type !== 'repository') return false;
  if (pattern === '*') return true;
  if (pattern.endsWith('/*')) return e.name.startsWith(pattern.slice(0, -1));
  return pattern === e.name;
}

/** grantFor returns the requested actions the grants allow on one resource (in request order). */
export function grantFor(grants: TokenGrants | undefined, e: AccessEntry): string[] {
  const allowed = new Set<string>();
  for (const [pattern, actions] of Object.entries(grants ?? {})) {
    if (!patternMatches(pattern, e)) continue;
    for (const a of actions) allowed.add(a);
  }
  return allowed.has('*') ? [...e.actions] : e.actions.filter((a) => allowed.has(a));
}

/** publicGrant returns what an anonymous client gets on one resource: pull inside the public namespace. */
function publicGrant(ns: string, e: AccessEntry): string[] {
  if (ns === '' || e.type !== 'repository') return [];
  if (ns !== '*' && !e.name.startsWith(ns)) return [];
  return e.actions.filter((a) => a === 'pull');
}

/** startTokenServer listens on 127.0.0.1:0 and signs tokens with keyPem (certPem goes into x5c). */
export async function startTokenServer(keyPem: string, certPem: string, username: string, password: string): Promise<TokenServerHandle> {
  const x5c = [pemToDerBase64(certPem)];
  const passwords = new Map<string, string>([[username, password]]);
  /** refreshOwner records who a refresh token issued here belongs to; others act as `username`. */
  const refreshOwner = new Map<string, string>();
  const state: TokenServer = {
    url: '',
    requests: [],
    issuedTokens: [],
    issued: [],
    tokenLifetimeSeconds: 300,
    exactExpiry: true,
    refreshTokens: new Set<string>(),
    down: false,
    policy: { [username]: { '*': ['*'], 'registry:catalog': ['*'] } },
    publicNamespace: DEFAULT_PUBLIC_NAMESPACE,
    setPassword(user: string, pw: string): void {
      passwords.set(user, pw);
    },
    addUser(user: string, pw: string, grants: TokenGrants): void {
      passwords.set(user, pw);
      state.policy[user] = grants;
    },
    passwordOf(user: string): string | undefined {
      return passwords.get(user);
    },
    countIssued(scope: string | RegExp): number {
      return state.issued.filter((i) => i.scopes.some((s) => (typeof scope === 'string' ? s === scope : scope.test(s)))).length;
    },
    tokensPerScope(): Record<string, number> {
      const out: Record<string, number> = {};
      for (const i of state.issued) for (const s of new Set(i.scopes)) out[s] = (out[s] ?? 0) + 1;
      return out;
    },
  };

  const authenticate = (user: string, pw: string): boolean => {
    const known = passwords.get(user);
    return known !== undefined && safeEqual(pw, known);
  };

  const grant = (scopes: string[], sub: string): AccessEntry[] => {
    const out: AccessEntry[] = [];
    for (const s of scopes) {
      const e = parseScope(s);
      if (!e) continue;
      out.push({ ...e, actions: sub === '' ? publicGrant(state.publicNamespace, e) : grantFor(state.policy[sub], e) });
    }
    return out;
  };

  const sign = (sub: string, scopes: string[]): { token: string; expiresIn: number; now: number } => {
    const now = Math.floor(Date.now() / 1000);
    const expiresIn = state.tokenLifetimeSeconds;
    const access = grant(scopes, sub);
    const header = { typ: 'JWT', alg: 'RS256', x5c };
    const claims = { iss: TOKEN_ISSUER, sub, aud: TOKEN_SERVICE, exp: now + expiresIn - (state.exactExpiry ? REGISTRY_LEEWAY_SECONDS : 0), nbf: now - 5, iat: now, jti: randomBytes(16).toString('hex'), access };
    const input = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(claims))}`;
    const sig = createSign('RSA-SHA256').update(input).sign(keyPem);
    const token = `${input}.${b64url(sig)}`;
    state.issuedTokens.push(token);
    state.issued.push({ sub, scopes, access, expiresIn });
    return { token, expiresIn, now };
  };

  const splitScopes = (vals: string[]): string[] => vals.flatMap((v) => v.split(' ')).map((s) => s.trim()).filter((s) => s !== '');

  const send = (res: http.ServerResponse, status: number, body: unknown): void => {
    const data = JSON.stringify(body);
    res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(data) });
    res.end(data);
  };
  const unauthorized = (res: http.ServerResponse, message = 'authentication failed'): void => send(res, 401, { errors: [{ code: 'UNAUTHORIZED', message }] });

  const newRefresh = (owner: string): string => {
    const rt = randomBytes(24).toString('hex');
    state.refreshTokens.add(rt);
    refreshOwner.set(rt, owner);
    return rt;
  };

  const handleGet = (req: http.IncomingMessage, res: http.ServerResponse, u: URL): void => {
    let sub = '';
    const auth = req.headers.authorization;
    if (auth !== undefined && /^basic /i.test(auth)) {
      const decoded = Buffer.from(auth.slice(6).trim(), 'base64').toString('utf8');
      const idx = decoded.indexOf(':');
      const user = idx < 0 ? decoded : decoded.slice(0, idx);
      if (!authenticate(user, idx < 0 ? '' : decoded.slice(idx + 1))) {
        unauthorized(res);
        return;
      }
      sub = user;
    }
    const { token, expiresIn, now } = sign(sub, splitScopes(u.searchParams.getAll('scope')));
    const body: Record<string, unknown> = { token, access_token: token, expires_in: expiresIn, issued_at: new Date(now * 1000).toISOString() };
    if (sub !== '' && u.searchParams.get('offline_token') === 'true') body.refresh_token = newRefresh(sub);
    send(res, 200, body);
  };

  const handlePost = (res: http.ServerResponse, form: URLSearchParams): void => {
    const grantType = form.get('grant_type');
    let refresh: string;
    let sub: string;
    if (grantType === 'password') {
      sub = form.get('username') ?? '';
      if (!authenticate(sub, form.get('password') ?? '')) {
        unauthorized(res);
        return;
      }
      refresh = newRefresh(sub);
    } else if (grantType === 'refresh_token') {
      refresh = form.get('refresh_token') ?? '';
      if (!state.refreshTokens.has(refresh)) {
        unauthorized(res, 'invalid refresh token');
        return;
      }
      sub = refreshOwner.get(refresh) ?? username;
    } else {
      send(res, 400, { errors: [{ code: 'UNSUPPORTED', message: `unsupported grant_type ${grantType ?? ''}` }] });
      return;
    }
    const { token, expiresIn, now } = sign(sub, splitScopes(form.getAll('scope')));
    send(res, 200, { access_token: token, expires_in: expiresIn, issued_at: new Date(now * 1000).toISOString(), refresh_token: refresh });
  };

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
        if (state.down) send(res, 503, { errors: [{ code: 'UNAVAILABLE', message: 'token server down' }] });
        else if (u.pathname !== '/token') send(res, 404, { errors: [{ code: 'NOT_FOUND', message: 'not found' }] });
        else if (method === 'GET') handleGet(req, res, u);
        else if (method === 'POST' && form) handlePost(res, form);
        else send(res, 405, { errors: [{ code: 'UNSUPPORTED', message: 'method not allowed' }] });
      } catch (e) {
        send(res, 500, { errors: [{ code: 'UNKNOWN', message: e instanceof Error ? e.name : 'error' }] });
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

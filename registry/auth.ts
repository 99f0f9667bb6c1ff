import type { Dispatcher } from 'undici';
import { request } from 'undici';
import type { Credential, CredentialProvider } from './credentials.js';
import { RegfsError } from '../util/errors.js';
import type { Logger } from '../util/log.js';

/** Challenge is a parsed `WWW-Authenticate` header. */
export interface Challenge {
  scheme: string;
  params: Record<string, string>;
}

/** parseChallenge parses `Bearer realm="...",service="...",scope="..."` (quoted values may hold commas). */
export function parseChallenge(header: string): Challenge | undefined {
  const m = /^\s*([A-Za-z]+)\s*(.*)$/s.exec(header);
  if (!m) return undefined;
  const params: Record<string, string> = {};
  const re = /([A-Za-z_][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))\s*,?\s*/g;
  let p: RegExpExecArray | null;
  while ((p = re.exec(m[2]!)) !== null) {
    if (p[0] === '') break;
    params[p[1]!.toLowerCase()] = p[2] !== undefined ? p[2].replace(/\\(.)/g, '$1') : p[3]!;
  }
  return { scheme: m[1]!.toLowerCase(), params };
}

/** repositoryScope returns the token scope for actions on a repository, e.g. `repository:a/b:pull,push`. */
export function repositoryScope(repository: string, actions: Array<'pull' | 'push' | 'delete' | '*'>): string {
  return `repository:${repository}:${actions.join(',')}`;
}

/** CATALOG_SCOPE is the scope for listing repositories. */
export const CATALOG_SCOPE = 'registry:catalog:*';

interface CachedToken {
  token: string;
  expiresAt: number;
}

/**
 * Authorizer decides the Authorization header for a request to one registry, answering Basic and
 * Bearer challenges and caching bearer tokens per scope until shortly before they expire.
 */
export class Authorizer {
  private scheme: 'basic' | 'bearer' | undefined;
  private bearer: Challenge | undefined;
  private readonly tokens = new Map<string, CachedToken>();
  private readonly inflight = new Map<string, Promise<string>>();
  private credential: Promise<Credential | undefined> | undefined;

  constructor(
    private readonly host: string,
    private readonly credentials: CredentialProvider,
    private readonly dispatcher: Dispatcher,
    private readonly log: Logger,
    private readonly timeoutMs: number,
  ) {}

  private cred(): Promise<Credential | undefined> {
    this.credential ??= this.credentials(this.host);
    return this.credential;
  }

  /** header returns the Authorization value to send pre-emptively for these scopes, if one is known. */
  async header(scopes: string[]): Promise<string | undefined> {
    if (this.scheme === 'basic') return basicHeader(await this.cred());
    if (this.scheme === 'bearer') {
      const t = this.tokens.get(scopeKey(scopes));
      if (t && t.expiresAt > Date.now()) return `Bearer ${t.token}`;
      if (t) this.tokens.delete(scopeKey(scopes));
      // Pre-emptive only: when the token service fails, send the request as is and let the registry
      // challenge it (a registry may challenge one route, e.g. the catalog, with a realm others never use).
      return this.fetchToken(scopes).catch((err: unknown) => {
        this.log.debug('pre-emptive token request failed; sending without', { error: (err as Error).message });
        return undefined;
      });
    }
    return undefined;
  }

  /** answer handles a 401's challenge and returns the header to retry with; it throws UNAUTHORIZED when nothing can satisfy it. */
  async answer(wwwAuthenticate: string | undefined, scopes: string[], sent: string | undefined): Promise<string> {
    const ch = wwwAuthenticate ? parseChallenge(wwwAuthenticate) : undefined;
    if (!ch) throw new RegfsError('UNAUTHORIZED', `${this.host} requires authentication but sent no usable challenge`, { status: 401 });
    if (ch.scheme === 'basic') {
      const h = basicHeader(await this.cred());
      if (!h) throw new RegfsError('UNAUTHORIZED', `${this.host} requires a login: run regfs login ${this.host}`, { status: 401 });
      if (sent === h) throw new RegfsError('UNAUTHORIZED', `${this.host} rejected the username or password: run regfs login ${this.host}`, { status: 401 });
      this.scheme = 'basic';
      return h;
    }
    if (ch.scheme !== 'bearer' || !ch.params.realm) {
      throw new RegfsError('UNAUTHORIZED', `${this.host} asks for unsupported authentication scheme ${ch.scheme}`, { status: 401 });
    }
    this.scheme = 'bearer';
    this.bearer = ch;
    const all = [...new Set([...scopes, ...(ch.params.scope ? ch.params.scope.split(' ') : [])])];
    if (sent?.startsWith('Bearer ')) {
      // The token we sent was refused: drop it and get a fresh one, once.
      this.tokens.delete(scopeKey(scopes));
      const fresh = await this.fetchToken(all, scopes);
      if (fresh === sent) throw new RegfsError('DENIED', `${this.host} refused access for ${all.join(' ')}`, { status: 401 });
      return fresh;
    }
    return this.fetchToken(all, scopes);
  }

  /** fetchToken asks the token service once per scope set, however many requests wait for it. */
  private fetchToken(scopes: string[], cacheAs: string[] = scopes): Promise<string> {
    const key = scopeKey(cacheAs);
    let p = this.inflight.get(key);
    if (!p) {
      p = this.requestToken(scopes, cacheAs).finally(() => this.inflight.delete(key));
      this.inflight.set(key, p);
    }
    return p;
  }

  private async requestToken(scopes: string[], cacheAs: string[]): Promise<string> {
    const ch = this.bearer;
    if (!ch) throw new RegfsError('UNAUTHORIZED', `${this.host}: no bearer challenge seen yet`);
    const realm = ch.params.realm!;
    let realmUrl: URL;
    try {
      realmUrl = new URL(realm);
    } catch {
      throw new RegfsError('UNAUTHORIZED', `${this.host} sent an invalid token realm`);
    }
    if (realmUrl.protocol !== 'https:' && realmUrl.protocol !== 'http:') throw new RegfsError('UNAUTHORIZED', `${this.host} sent a token realm that is not http(s)`);
    const cred = await this.cred();
    const service = ch.params.service;
    let res: Dispatcher.ResponseData;
    try {
      if (cred?.refreshToken) {
        const form = new URLSearchParams({ grant_type: 'refresh_token', refresh_token: cred.refreshToken, client_id: 'regfs' });
        if (service) form.set('service', service);
        if (scopes.length) form.set('scope', scopes.join(' '));
        res = await request(realmUrl, {
          method: 'POST',
          dispatcher: this.dispatcher,
          headers: { 'content-type': 'application/x-www-form-urlencoded' },
          body: form.toString(),
          headersTimeout: this.timeoutMs,
          bodyTimeout: this.timeoutMs,
        });
      } else {
        if (service) realmUrl.searchParams.set('service', service);
        for (const s of scopes) realmUrl.searchParams.append('scope', s);
        const headers: Record<string, string> = {};
        const basic = basicHeader(cred);
        if (basic) headers.authorization = basic;
        res = await request(realmUrl, { method: 'GET', dispatcher: this.dispatcher, headers, headersTimeout: this.timeoutMs, bodyTimeout: this.timeoutMs });
      }
    } catch (err) {
      throw new RegfsError('NETWORK', `cannot reach the token service of ${this.host} at ${realmUrl.origin}: ${(err as Error).message}`, { cause: err });
    }
    this.log.debug('token request', { realm: realmUrl.origin + realmUrl.pathname, status: res.statusCode, scopes: scopes.join(' ') });
    const text = await readCapped(res.body, 1024 * 1024);
    if (res.statusCode === 401 || res.statusCode === 403) {
      throw new RegfsError('UNAUTHORIZED', `${this.host} rejected the credentials${cred ? '' : ' (none stored)'}: run regfs login ${this.host}`, { status: 401 });
    }
    if (res.statusCode !== 200) {
      throw new RegfsError('REGISTRY_ERROR', `token service of ${this.host} answered HTTP ${res.statusCode}`, { status: res.statusCode });
    }
    let body: { token?: string; access_token?: string; expires_in?: number };
    try {
      body = JSON.parse(text) as typeof body;
    } catch {
      throw new RegfsError('REGISTRY_ERROR', `token service of ${this.host} returned invalid JSON`);
    }
    const token = body.access_token || body.token;
    if (!token) throw new RegfsError('REGISTRY_ERROR', `token service of ${this.host} returned no token`);
    const lifetime = typeof body.expires_in === 'number' && body.expires_in > 0 ? body.expires_in : 60;
    // Renew a little before expiry so a request never goes out with a token about to lapse.
    const margin = Math.min(30, lifetime / 4);
    this.tokens.set(scopeKey(cacheAs), { token, expiresAt: Date.now() + (lifetime - margin) * 1000 });
    return `Bearer ${token}`;
  }
}

function scopeKey(scopes: string[]): string {
  return [...scopes].sort().join(' ');
}

function basicHeader(cred: Credential | undefined): string | undefined {
  if (!cred || cred.refreshToken || cred.username === undefined) return undefined;
  return `Basic ${Buffer.from(`${cred.username}:${cred.password ?? ''}`).toString('base64')}`;
}

/** readCapped reads a response body as text, refusing more than `max` bytes. */
export async function readCapped(body: AsyncIterable<Uint8Array> & { destroy?(err?: Error): unknown }, max: number): Promise<string> {
  return (await readCappedBuffer(body, max)).toString('utf8');
}

/** readCappedBuffer reads a response body, aborting with TOO_LARGE once it passes `max` bytes. */
export async function readCappedBuffer(body: AsyncIterable<Uint8Array> & { destroy?(err?: Error): unknown }, max: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const c of body) {
    n += c.length;
    if (n > max) {
      body.destroy?.();
      throw new RegfsError('TOO_LARGE', `response body exceeds the ${max}-byte limit`);
    }
    chunks.push(Buffer.from(c));
  }
  return Buffer.concat(chunks);
}

import type { Dispatcher } from 'undici';
import { request } from 'undici';
import { credentialGeneration, type Credential, type CredentialProvider } from './credentials.js';
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

/** AuthStats counts what an Authorizer did: token requests sent and credential reads. */
export interface AuthStats {
  /** tokenRequests is how many times the token service was asked for a token. */
  tokenRequests: number;
  /** credentialReads is how many times the credential provider was asked (the first read and every re-read). */
  credentialReads: number;
}

/**
 * Authorizer decides the Authorization header for a request to one registry, answering Basic and
 * Bearer challenges and caching bearer tokens per (realm, service, scope set) until shortly before
 * they expire. It reads the credential once, and again when the registry or its token service
 * refuses it (a `regfs login` meanwhile), when forget() is called, or after invalidateCredentials().
 */
export class Authorizer {
  /** fallback is the challenge of repository and /v2/ requests, used for scope sets without their own. */
  private fallback: Challenge | undefined;
  /** challenges holds the challenge seen per scope set, so a catalog refused with another realm stays with the catalog. */
  private readonly challenges = new Map<string, Challenge>();
  private readonly tokens = new Map<string, CachedToken>();
  private readonly inflight = new Map<string, Promise<string>>();
  private credential: Promise<Credential | undefined> | undefined;
  private generation: string;
  /** stats counts token requests and credential reads. */
  readonly stats: AuthStats = { tokenRequests: 0, credentialReads: 0 };

  constructor(
    private readonly host: string,
    private readonly credentials: CredentialProvider,
    private readonly dispatcher: Dispatcher,
    private readonly log: Logger,
    private readonly timeoutMs: number,
  ) {
    this.generation = credentialGeneration(host);
  }

  /** forget drops the credential read and every token got with it; the next request reads the credential again. */
  forget(): void {
    this.credential = undefined;
    this.tokens.clear();
  }

  private checkGeneration(): void {
    const gen = credentialGeneration(this.host);
    if (gen !== this.generation) {
      this.generation = gen;
      this.forget();
    }
  }

  /** cred returns the credential promise, reading the provider when none is held (a failed read is not kept). */
  private cred(): Promise<Credential | undefined> {
    this.checkGeneration();
    if (!this.credential) {
      this.stats.credentialReads++;
      const p = this.credentials(this.host);
      this.credential = p;
      p.catch(() => {
        if (this.credential === p) this.credential = undefined;
      });
    }
    return this.credential;
  }

  /** reread reads the credential again after `used` (read as `was`) was refused; it tells whether the new one differs. */
  private async reread(used: Promise<Credential | undefined>, was: Credential | undefined): Promise<boolean> {
    if (this.credential === used) this.credential = undefined;
    const now = await this.cred();
    const changed = !sameCredential(was, now);
    if (changed) this.log.info(`${this.host} refused the credentials read earlier; using the ones stored since`);
    else this.log.debug(`${this.host} refused the stored credentials; they have not changed`);
    return changed;
  }

  private record(scopes: string[], ch: Challenge): void {
    this.challenges.set(scopeKey(scopes), ch);
    if (!scopes.includes(CATALOG_SCOPE)) this.fallback = ch;
  }

  /** header returns the Authorization value to send pre-emptively for these scopes, if one is known. */
  async header(scopes: string[]): Promise<string | undefined> {
    this.checkGeneration();
    const ch = this.challenges.get(scopeKey(scopes)) ?? this.fallback;
    if (!ch) return undefined;
    if (ch.scheme === 'basic') return basicHeader(await this.cred());
    const key = tokenKey(ch, scopes);
    const t = this.tokens.get(key);
    if (t && t.expiresAt > Date.now()) return `Bearer ${t.token}`;
    if (t) this.tokens.delete(key);
    // Pre-emptive only: when the token service cannot be used (unreachable, a bad answer), send the
    // request as is and let the registry challenge it. A refused credential is final here too.
    return this.fetchToken(ch, scopes, scopes).catch((err: unknown) => {
      if (err instanceof TokenRefused) throw err;
      this.log.debug('pre-emptive token request failed; sending without', { error: (err as Error).message });
      return undefined;
    });
  }

  /** answer handles a 401's challenge and returns the header to retry with; it throws UNAUTHORIZED when nothing can satisfy it. */
  async answer(wwwAuthenticate: string | undefined, scopes: string[], sent: string | undefined): Promise<string> {
    const ch = wwwAuthenticate ? parseChallenge(wwwAuthenticate) : undefined;
    if (!ch) throw new RegfsError('UNAUTHORIZED', `${this.host} requires authentication but sent no usable challenge`, { status: 401 });
    if (ch.scheme === 'basic') {
      this.record(scopes, ch);
      const used = this.cred();
      const cred = await used;
      let h = basicHeader(cred);
      if (h && sent === h && (await this.reread(used, cred))) h = basicHeader(await this.cred());
      if (!h) throw new RegfsError('UNAUTHORIZED', `${this.host} requires a login: run regfs login ${this.host}`, { status: 401 });
      if (sent === h) throw new RegfsError('UNAUTHORIZED', `${this.host} rejected the username or password: run regfs login ${this.host}`, { status: 401 });
      return h;
    }
    if (ch.scheme !== 'bearer' || !ch.params.realm) {
      throw new RegfsError('UNAUTHORIZED', `${this.host} asks for unsupported authentication scheme ${ch.scheme}`, { status: 401 });
    }
    this.record(scopes, ch);
    const all = [...new Set([...scopes, ...(ch.params.scope ? ch.params.scope.split(' ') : [])])];
    if (sent?.startsWith('Bearer ')) {
      // The token we sent was refused (expired, or not enough): drop it and get a fresh one, once.
      this.tokens.delete(tokenKey(ch, scopes));
      const fresh = await this.fetchToken(ch, all, scopes);
      if (fresh === sent) throw new RegfsError('DENIED', `${this.host} refused access for ${all.join(' ')}`, { status: 401 });
      return fresh;
    }
    return this.fetchToken(ch, all, scopes);
  }

  /** fetchToken asks the token service once per (realm, service, scope set), however many requests wait for it. */
  private fetchToken(ch: Challenge, scopes: string[], cacheAs: string[]): Promise<string> {
    const key = tokenKey(ch, cacheAs);
    let p = this.inflight.get(key);
    if (!p) {
      p = this.requestToken(ch, scopes, key).finally(() => this.inflight.delete(key));
      this.inflight.set(key, p);
    }
    return p;
  }

  /** requestToken gets a token with the held credential; when the token service refuses it, the credential is read again once. */
  private async requestToken(ch: Challenge, scopes: string[], key: string): Promise<string> {
    const used = this.cred();
    const cred = await used;
    try {
      return await this.tokenWith(ch, scopes, key, cred);
    } catch (err) {
      if (!(err instanceof TokenRefused) || !(await this.reread(used, cred))) throw err;
      return this.tokenWith(ch, scopes, key, await this.cred());
    }
  }

  private async tokenWith(ch: Challenge, scopes: string[], key: string, cred: Credential | undefined): Promise<string> {
    const realm = ch.params.realm!;
    let realmUrl: URL;
    try {
      realmUrl = new URL(realm);
    } catch {
      throw new RegfsError('UNAUTHORIZED', `${this.host} sent an invalid token realm`);
    }
    if (realmUrl.protocol !== 'https:' && realmUrl.protocol !== 'http:') throw new RegfsError('UNAUTHORIZED', `${this.host} sent a token realm that is not http(s)`);
    const service = ch.params.service;
    this.stats.tokenRequests++;
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
      throw new TokenRefused(`${this.host} rejected the credentials${cred ? '' : ' (none stored)'}: run regfs login ${this.host}`);
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
    this.tokens.set(key, { token, expiresAt: Date.now() + (lifetime - margin) * 1000 });
    return `Bearer ${token}`;
  }
}

/** TokenRefused is the token service's 401/403: the credential was refused (an UNAUTHORIZED RegfsError). */
class TokenRefused extends RegfsError {
  constructor(message: string) {
    super('UNAUTHORIZED', message, { status: 401 });
  }
}

function sameCredential(a: Credential | undefined, b: Credential | undefined): boolean {
  return a?.username === b?.username && a?.password === b?.password && a?.refreshToken === b?.refreshToken;
}

/** tokenKey names a cached token: the challenge's realm and service and the sorted scope set. */
function tokenKey(ch: Challenge, scopes: string[]): string {
  return `${ch.params.realm ?? ''}\n${ch.params.service ?? ''}\n${scopeKey(scopes)}`;
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

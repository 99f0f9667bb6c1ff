import { readFileSync } from 'node:fs';
import type { Readable } from 'node:stream';
import { rootCertificates } from 'node:tls';
import { request, type Dispatcher } from 'undici';
import { Authorizer, parseChallenge, readCapped } from './auth.js';
import type { CredentialProvider } from './credentials.js';
import { RegfsError } from '../util/errors.js';
import { registryDispatcher } from './origin-pools.js';
import { isLoopbackHost } from './reference.js';
import { nullLogger, redactText, type Logger } from '../util/log.js';
import { Semaphore } from '../util/limit.js';
import { sleep } from '../util/sleep.js';

/** TransportOptions say how to reach a registry: TLS, retries, deadlines, credentials. */
export interface TransportOptions {
  /** plainHttp true forces http://, false forces https:// (also for a loopback host); unset: http only for loopback hosts without caFile. */
  plainHttp?: boolean;
  /** insecure skips TLS certificate verification. */
  insecure?: boolean;
  /** caFile is a PEM bundle of extra trusted CAs. */
  caFile?: string;
  credentials?: CredentialProvider;
  /** retries is the most extra attempts per request (default 4). */
  retries?: number;
  /** retryBudgetMs bounds the total time spent retrying one request (default 30 s). */
  retryBudgetMs?: number;
  /** timeoutMs bounds waiting for response headers and for each body chunk (default 30 s). */
  timeoutMs?: number;
  /** baseDelayMs is the first retry delay before jitter (default 200 ms). */
  baseDelayMs?: number;
  userAgent?: string;
  log?: Logger;
  /**
   * maxConcurrentRequests bounds the requests to this registry waiting for an answer at once
   * (default 16), so a big `ls -lR` cannot trip a rate limit by itself; more wait their turn.
   */
  maxConcurrentRequests?: number;
}

/** RequestSpec is one registry API call. */
export interface RequestSpec {
  method: 'GET' | 'HEAD' | 'PUT' | 'POST' | 'PATCH' | 'DELETE';
  /** path is `/v2/...` (with query) or an absolute URL on the registry (upload locations). */
  path: string;
  headers?: Record<string, string>;
  /** body is bytes, or a factory so a retry can replay a stream. */
  body?: Buffer | string | (() => Readable);
  scopes: string[];
  /** what names the call in error messages, e.g. "manifest localhost:5000/a:1". */
  what: string;
  /** retry allows retrying this call (default: true). */
  retry?: boolean;
  signal?: AbortSignal;
  /** timeoutMs overrides the transport's per-request deadline. */
  timeoutMs?: number;
}

/** TransportStats counts what a transport did since it was opened, for `regfs status`. */
export interface TransportStats {
  /** requests is the number of HTTP attempts sent to the registry (retries and redirects included). */
  requests: number;
  /** retries is the number of attempts repeated after a connection error or a retryable status. */
  retries: number;
  /** rateLimited is the number of 429 answers. */
  rateLimited: number;
  /** unavailable is the number of 503 answers. */
  unavailable: number;
  /** retryWaitMs is the total time spent waiting before retries (Retry-After or backoff). */
  retryWaitMs: number;
  /** tokenRequests is the number of requests to the token service. */
  tokenRequests: number;
}

/** Response is an HTTP response whose body the caller must consume or dump. */
export interface Response {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Dispatcher.ResponseData['body'];
  url: URL;
}

const RETRY_STATUS = new Set([408, 429, 500, 502, 503, 504]);
const MAX_REDIRECTS = 5;

/** header returns one response header as a string. */
export function header(res: { headers: Record<string, string | string[] | undefined> }, name: string): string | undefined {
  const v = res.headers[name.toLowerCase()];
  return Array.isArray(v) ? v[0] : v;
}

/**
 * RegistryTransport sends requests to one registry over a keep-alive pool: it chooses http or https,
 * authorizes (Basic or Bearer), follows redirects without leaking credentials to other origins,
 * and retries transient failures with exponential backoff and jitter.
 */
export class RegistryTransport {
  /** base is the registry's origin, e.g. http://127.0.0.1:5000. */
  readonly base: URL;
  private readonly agent: Dispatcher;
  private readonly auth: Authorizer;
  private readonly log: Logger;
  private readonly retries: number;
  private readonly budgetMs: number;
  private readonly timeoutMs: number;
  private readonly baseDelayMs: number;
  private readonly userAgent: string;
  private readonly slots: Semaphore;
  private readonly counts = { requests: 0, retries: 0, rateLimited: 0, unavailable: 0, retryWaitMs: 0 };

  constructor(readonly host: string, opts: TransportOptions = {}) {
    // As ORAS: a loopback host speaks plain HTTP unless told otherwise (plainHttp false, or a CA file);
    // --insecure only relaxes certificate checks where HTTPS is used.
    const plain = opts.plainHttp ?? (isLoopbackHost(host) && !opts.caFile);
    this.base = new URL(`${plain ? 'http' : 'https'}://${host}`);
    let ca: string | undefined;
    if (opts.caFile) {
      try {
        ca = readFileSync(opts.caFile, 'utf8');
      } catch (err) {
        throw new RegfsError('INVALID_ARGUMENT', `cannot read --ca-file ${opts.caFile}: ${(err as Error).message}`);
      }
    }
    this.timeoutMs = opts.timeoutMs ?? 30_000;
    this.agent = registryDispatcher({
      keepAliveTimeout: 30_000,
      connections: 16,
      connectTimeout: Math.min(this.timeoutMs, 10_000),
      connect: {
        rejectUnauthorized: !opts.insecure,
        ...(ca ? { ca: [...rootCertificates, ca] } : {}),
      },
    });
    this.log = opts.log ?? nullLogger;
    this.auth = new Authorizer(host, opts.credentials ?? (async () => undefined), this.agent, this.log, this.timeoutMs);
    this.retries = opts.retries ?? 4;
    this.budgetMs = opts.retryBudgetMs ?? 30_000;
    this.baseDelayMs = opts.baseDelayMs ?? 200;
    this.userAgent = opts.userAgent ?? 'regfs/0.1';
    this.slots = new Semaphore(opts.maxConcurrentRequests ?? 16);
  }

  /** forgetCredentials makes the next request read the credential again and get fresh tokens. */
  forgetCredentials(): void {
    this.auth.forget();
  }

  /** stats returns the counters of this transport (a copy). */
  stats(): TransportStats {
    return { ...this.counts, tokenRequests: this.auth.stats.tokenRequests };
  }

  /** close releases the connection pool. */
  async close(): Promise<void> {
    await this.agent.close();
  }

  /** send performs a request with auth, redirects and retries; non-2xx/3xx statuses are returned, not thrown. */
  async send(spec: RequestSpec): Promise<Response> {
    const started = Date.now();
    const canRetry = spec.retry !== false;
    let attempt = 0;
    let authHeader = await this.auth.header(spec.scopes);
    let reauthed = false;
    for (;;) {
      let res: Response;
      try {
        res = await this.limited(spec, authHeader);
      } catch (err) {
        if (err instanceof RegfsError && err.code !== 'NETWORK' && err.code !== 'TIMEOUT') throw err;
        if (spec.signal?.aborted) throw err;
        const delay = this.backoff(attempt);
        if (!canRetry || attempt >= this.retries || Date.now() - started + delay > this.budgetMs) throw err;
        this.log.debug('retrying after connection error', { what: spec.what, attempt: attempt + 1, error: (err as Error).message });
        this.counts.retries++;
        this.counts.retryWaitMs += delay;
        await pause(delay, spec.signal);
        attempt++;
        continue;
      }
      if (res.status === 401 && !reauthed) {
        await res.body.dump();
        authHeader = await this.auth.answer(header(res, 'www-authenticate'), spec.scopes, authHeader);
        reauthed = true;
        continue;
      }
      if (res.status === 429) this.counts.rateLimited++;
      if (res.status === 503) this.counts.unavailable++;
      if (canRetry && RETRY_STATUS.has(res.status)) {
        const retryAfter = parseRetryAfter(header(res, 'retry-after'));
        const delay = retryAfter ?? this.backoff(attempt);
        if (attempt < this.retries && Date.now() - started + delay <= this.budgetMs) {
          await res.body.dump();
          this.log.debug('retrying after HTTP status', { what: spec.what, status: res.status, attempt: attempt + 1, delayMs: delay });
          this.counts.retries++;
          this.counts.retryWaitMs += delay;
          await pause(delay, spec.signal);
          attempt++;
          continue;
        }
      }
      return res;
    }
  }

  /** limited sends one attempt holding a slot of the registry's concurrency limit until its answer's headers arrive. */
  private async limited(spec: RequestSpec, authHeader: string | undefined): Promise<Response> {
    const release = await this.slots.acquire(spec.signal).catch((err: unknown) => {
      throw new RegfsError('TIMEOUT', `${spec.what}: aborted`, { cause: err });
    });
    try {
      return await this.once(spec, authHeader);
    } finally {
      release();
    }
  }

  private backoff(attempt: number): number {
    const exp = this.baseDelayMs * 2 ** attempt;
    return Math.min(10_000, exp / 2 + Math.random() * exp / 2);
  }

  /** once sends one attempt, following redirects; credentials go only to the registry's own origin. */
  private async once(spec: RequestSpec, authHeader: string | undefined): Promise<Response> {
    let url = spec.path.startsWith('/') ? new URL(spec.path, this.base) : new URL(spec.path);
    if (!spec.path.startsWith('/') && url.origin !== this.base.origin) {
      // An absolute URL from the registry (an upload Location) on another origin: no credentials there.
      authHeader = undefined;
    }
    const first = url;
    let method: string = spec.method;
    let body = typeof spec.body === 'function' ? spec.body() : spec.body;
    const timeout = spec.timeoutMs ?? this.timeoutMs;
    let askedAgain = false;
    for (let hop = 0; ; hop++) {
      const headers: Record<string, string> = { 'user-agent': this.userAgent, ...spec.headers };
      if (authHeader && url.origin === this.base.origin) headers.authorization = authHeader;
      let r: Dispatcher.ResponseData;
      this.counts.requests++;
      try {
        r = await request(url, {
          method: method as Dispatcher.HttpMethod,
          headers,
          body,
          dispatcher: this.agent,
          // undici closes the connection after a HEAD by default (for servers that wrongly send a body);
          // registries answer HEAD properly and a push is mostly HEADs: keep the connection, as Go clients do.
          reset: false,
          headersTimeout: timeout,
          bodyTimeout: timeout,
          signal: spec.signal,
        });
      } catch (err) {
        throw networkError(err, spec.what, url);
      }
      this.log.debug('http', { method, url: redactText(url.toString()), status: r.statusCode });
      if ((r.statusCode === 403 || r.statusCode === 401) && hop > 0 && url.origin !== first.origin && !askedAgain && (method === 'GET' || method === 'HEAD')) {
        // The storage host the registry redirected to refused (an expired signed URL): ask the registry
        // for a fresh redirect, once.
        await r.body.dump();
        this.log.debug('storage host refused a redirected request; asking the registry again', { what: spec.what, status: r.statusCode });
        askedAgain = true;
        url = first;
        continue;
      }
      const loc = header({ headers: r.headers }, 'location');
      if (r.statusCode >= 300 && r.statusCode < 400 && r.statusCode !== 304 && loc && (method === 'GET' || method === 'HEAD')) {
        await r.body.dump();
        if (hop >= MAX_REDIRECTS) throw new RegfsError('REGISTRY_ERROR', `${spec.what}: too many redirects`);
        const next = new URL(loc, url);
        if (url.protocol === 'https:' && next.protocol !== 'https:') {
          throw new RegfsError('INSECURE_REDIRECT', `${spec.what}: refusing redirect from https to ${next.protocol}//${next.host}`);
        }
        if (next.protocol !== 'https:' && next.protocol !== 'http:') throw new RegfsError('INSECURE_REDIRECT', `${spec.what}: refusing redirect to ${next.protocol}`);
        url = next;
        body = undefined;
        continue;
      }
      return { status: r.statusCode, headers: r.headers, body: r.body, url };
    }
  }

  /** fail turns an unexpected response into a typed error carrying the registry's code and message. */
  async fail(res: Response, what: string): Promise<never> {
    const denied = insufficientScope(res, what, this.host);
    if (denied) {
      await res.body.dump().catch(() => undefined);
      throw denied;
    }
    let text = '';
    try {
      text = res.status === 204 || res.body === undefined ? '' : await readCapped(res.body, 64 * 1024);
    } catch {
      // keep the status alone
    }
    throw errorFromBody(res.status, text, what);
  }
}

/** sortedActions writes `repository:a/b:push,pull` as `repository:a/b:pull,push`. */
function sortedActions(scope: string): string {
  const i = scope.lastIndexOf(':');
  return i < 0 ? scope : `${scope.slice(0, i)}:${scope.slice(i + 1).split(',').sort().join(',')}`;
}

/**
 * insufficientScope recognises a 401 whose challenge says `error="insufficient_scope"` (or a 403
 * DENIED of a token-scoped request): the login works but may not do this. It returns a one-line
 * DENIED error naming the scope, or undefined for any other answer.
 */
export function insufficientScope(res: { status: number; headers: Record<string, string | string[] | undefined> }, what: string, host: string): RegfsError | undefined {
  if (res.status !== 401) return undefined;
  const ch = parseChallenge(header(res, 'www-authenticate') ?? '');
  if (ch?.params.error !== 'insufficient_scope') return undefined;
  // Registries list a scope's actions in any order (distribution varies between requests): sort them so the line is stable.
  const scope = ch.params.scope ? ` (${ch.params.scope.split(' ').map(sortedActions).join(' ')})` : '';
  return new RegfsError('DENIED', `${what}: ${host} refused access${scope}: insufficient_scope; the login for ${host} is not allowed to do this (check its permissions, or run regfs login ${host} as another user)`, { status: 401, registryCode: 'insufficient_scope' });
}

/** errorFromBody maps a registry error response to a RegfsError with a clear sentence. */
export function errorFromBody(status: number, text: string, what: string): RegfsError {
  let regCode: string | undefined;
  let regMsg: string | undefined;
  try {
    const parsed = JSON.parse(text) as { errors?: Array<{ code?: string; message?: string }> };
    regCode = parsed.errors?.[0]?.code;
    regMsg = parsed.errors?.[0]?.message;
  } catch {
    // not JSON: keep the status
  }
  const detail = regCode ? `${regCode}${regMsg ? `: ${redactText(regMsg).slice(0, 200)}` : ''}` : `HTTP ${status}`;
  const opts = { status, registryCode: regCode };
  if (status === 404 || regCode?.endsWith('_UNKNOWN') || regCode === 'NAME_UNKNOWN') {
    return new RegfsError('NOT_FOUND', `${what} not found (${detail})`, opts);
  }
  if (status === 401) return new RegfsError('UNAUTHORIZED', `${what}: authentication required (${detail})`, opts);
  if (status === 403) return new RegfsError('DENIED', `${what}: access denied (${detail})`, opts);
  if (status === 429) return new RegfsError('REGISTRY_ERROR', `${what}: rate limited by the registry (${detail}); try again later`, opts);
  if (status === 416) return new RegfsError('REGISTRY_ERROR', `${what}: requested range not satisfiable (${detail})`, opts);
  if (status === 405 && regCode === 'UNSUPPORTED') return new RegfsError('UNSUPPORTED', `${what}: the registry does not support this operation (${detail})`, opts);
  return new RegfsError('REGISTRY_ERROR', `${what} failed: ${detail}${regCode ? ` (HTTP ${status})` : ''}`, opts);
}

function networkError(err: unknown, what: string, url: URL): RegfsError {
  const e = err as { code?: string; message?: string; name?: string };
  if (e?.name === 'AbortError' || e?.code === 'ABORT_ERR') return new RegfsError('TIMEOUT', `${what}: aborted`, { cause: err });
  if (e?.code === 'UND_ERR_HEADERS_TIMEOUT' || e?.code === 'UND_ERR_BODY_TIMEOUT' || e?.code === 'UND_ERR_CONNECT_TIMEOUT') {
    return new RegfsError('TIMEOUT', `${what}: ${url.host} did not answer in time`, { cause: err });
  }
  const code = e?.code ?? (e as { cause?: { code?: string } })?.cause?.code;
  if (typeof code === 'string' && /CERT|SELF_SIGNED|UNABLE_TO_VERIFY|ERR_TLS/.test(code)) {
    return new RegfsError('NETWORK', `${what}: TLS certificate of ${url.host} is not trusted (${code}); use --ca-file with its CA or --insecure`, { cause: err });
  }
  if (typeof code === 'string' && /EPROTO|ERR_SSL/.test(code)) {
    return new RegfsError('NETWORK', `${what}: TLS handshake with ${url.host} failed; if it serves plain HTTP use --plain-http`, { cause: err });
  }
  return new RegfsError('NETWORK', `${what}: cannot reach ${url.host} (${code ?? e?.message ?? 'connection error'})`, { cause: err });
}

/** parseRetryAfter reads `Retry-After` as seconds or an HTTP date; the result is capped at 30 s. */
export function parseRetryAfter(v: string | undefined): number | undefined {
  if (!v) return undefined;
  const secs = Number(v);
  const ms = Number.isFinite(secs) ? secs * 1000 : Date.parse(v) - Date.now();
  if (!Number.isFinite(ms)) return undefined;
  return Math.max(0, Math.min(ms, 30_000));
}

/** pause waits ms between attempts; an abort ends it as a TIMEOUT. */
function pause(ms: number, signal?: AbortSignal): Promise<void> {
  return sleep(ms, signal).catch(() => {
    throw new RegfsError('TIMEOUT', 'aborted');
  });
}

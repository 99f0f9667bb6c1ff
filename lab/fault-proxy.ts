/**
 * Test support: an HTTP fault-injection proxy on 127.0.0.1 in front of a real (plain HTTP)
 * registry. Requests are streamed both ways (no buffering), and rules decide per request whether
 * to delay, stall, reset, answer an error, corrupt, cut or redirect.
 *
 * Host / Location handling: the client's `Host` header is forwarded unchanged (it names the
 * proxy), so distribution 2.8.2 — which builds absolute upload `Location`s from the request's
 * Host when `http.host` is not configured — already answers with Locations pointing at the proxy.
 * As a safety net, any `Location` whose origin is exactly the upstream's origin is rewritten to the
 * proxy's origin; other origins are left alone.
 */
import http from 'node:http';
import type net from 'node:net';

/** FaultRule describes which requests to disturb and how; the first matching rule (array order) wins. */
export interface FaultRule {
  /** method matches the request method (string: case-insensitive equality). */
  method?: string | RegExp;
  /** path matches the request path+query (string: exact equality; RegExp: test). */
  path?: string | RegExp;
  /** times is how many matching requests it applies to (default: unlimited); skipped once used up. */
  times?: number;
  /**
   * everyNth makes the rule apply only to the Nth, 2Nth, 3Nth... request it matches (counted per rule,
   * from the first match); the others fall through to later rules or are forwarded. With `times`,
   * `times` counts the requests it applied to. E.g. `{ everyNth: 3, status: 429, headers: { 'Retry-After': '1' } }`.
   */
  everyNth?: number;
  /** latencyMs delays the request before it is handled (combinable with every other action). */
  latencyMs?: number;
  /** stall accepts the request (its body is drained) and never answers; the socket dies at close(). */
  stall?: boolean;
  /** cutAfterBytes forwards the response but closes the client socket after N body bytes. */
  cutAfterBytes?: number;
  /** reset destroys the client socket immediately (TCP RST via resetAndDestroy() where available). */
  reset?: boolean;
  /** status answers this status without forwarding, with a distribution-style JSON error body. */
  status?: number;
  /** headers are extra response headers for `status` answers (e.g. Retry-After). */
  headers?: Record<string, string>;
  /** errorCode is the distribution error code in the JSON body of a `status` answer (default "UNAVAILABLE"). */
  errorCode?: string;
  /** flipByteAt forwards the response but XORs 0xff into the body byte at this offset. */
  flipByteAt?: number;
  /** ignoreRange strips Range/If-Range before forwarding, so upstream answers 200 with the whole body. */
  ignoreRange?: boolean;
  /** redirectTo answers 307 with `Location: redirectTo + original path+query`. */
  redirectTo?: string;
  /** appendBytes forwards the response with N junk bytes appended (Content-Length adjusted). */
  appendBytes?: number;
  /** wrongContentLength declares this Content-Length, sends at most that many bytes, then closes the socket. */
  wrongContentLength?: number;
  /** replaceBody answers with upstream's status/headers but this body (Content-Length fixed). */
  replaceBody?: Buffer;
  /** endlessBody answers 200 chunked (OCI manifest media type) with never-ending data until the client leaves. */
  endlessBody?: boolean;
  /**
   * paginateTags makes a tag list paginate the way distribution 3, zot and ACR do (2.8.2 ignores `n`):
   * upstream's full list is sorted, cut after `last` to at most min(n, paginateTags) entries, and a
   * `Link: <...>; rel="next"` header points at the next page.
   */
  paginateTags?: number;
  /** setHeaders sets (a string) or removes (null) headers of a forwarded answer, replaceBody included. */
  setHeaders?: Record<string, string | null>;
  /** chunked forwards the body without Content-Length (chunked framing), so only the body says where it ends. */
  chunked?: boolean;
  /** delayResponseMs forwards the request at once but holds upstream's answer this long (the request has landed). */
  delayResponseMs?: number;
  /** bytesPerSecond paces forwarded bodies to about this rate, shared by every answer the rule matches (one slow link, counted from its first byte). */
  bytesPerSecond?: number;
  /** bytesPerSecondEach paces each forwarded body on its own to about this rate (a per-connection cap, as object stores and CDNs have). */
  bytesPerSecondEach?: number;
}

/** RequestRecord is one request seen by the proxy; status and bytesOut are updated as it progresses. */
export interface RequestRecord {
  /** method is the request method. */
  method: string;
  /** path is the request path+query as received. */
  path: string;
  /** headers are the request headers as received (lower-case names). */
  headers: Record<string, string | string[] | undefined>;
  /** status is the status sent to the client (0 while none was sent: pending, stalled, reset). */
  status: number;
  /** bytesOut counts response body bytes written to the client for this request. */
  bytesOut: number;
  /** time is when the request arrived (Date.now()). */
  time: number;
  /** rule is the index (in `rules` at match time) of the rule that applied, if any. */
  rule?: number;
  /** connection numbers the client's TCP connection (1, 2, ... in the order they were accepted). */
  connection: number;
}

/** FaultProxy is a running fault-injection proxy and its controls. */
export interface FaultProxy {
  /** url is "http://127.0.0.1:PORT". */
  url: string;
  /** host is "127.0.0.1:PORT". */
  host: string;
  /** rules is consulted for every request, in order; mutable at run time. */
  rules: FaultRule[];
  /** requests lists every request seen, in arrival order. */
  requests: RequestRecord[];
  /** bytesOut returns the total response body bytes sent to clients since start (or reset()). */
  bytesOut(): number;
  /** count returns how many recorded requests match the method (case-insensitive) and path regexp. */
  count(method?: string, path?: RegExp): number;
  /** peakInFlight is the most requests the proxy held at once, from arrival until their answer was finished or abandoned (since start or reset()). */
  peakInFlight(): number;
  /** reset clears the request records, the bytesOut total and the in-flight peak (rules are kept, as are `times` used). */
  reset(): void;
  /** close stops the server and destroys every open socket (stalled ones too); idempotent. */
  close(): Promise<void>;
}

const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'proxy-authenticate',
  'proxy-authorization',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
  'expect',
]);

const ENDLESS_CHUNK = Buffer.from('{"schemaVersion":2,"junk":"' + 'x'.repeat(64 * 1024 - 27));

function matches(m: string | RegExp | undefined, value: string, caseInsensitive: boolean): boolean {
  if (m === undefined) return true;
  if (typeof m === 'string') return caseInsensitive ? m.toUpperCase() === value.toUpperCase() : m === value;
  m.lastIndex = 0;
  return m.test(value);
}

function errorBody(message: string, code = 'UNAVAILABLE'): string {
  return JSON.stringify({ errors: [{ code, message }] });
}

/** CATALOG_PATH matches `/v2/_catalog` with or without a query. */
export const CATALOG_PATH = /^\/v2\/_catalog(?:\?|$)/;

/** CatalogRefusal is how a registry refuses the catalog: 404 (Docker Hub, GHCR), 401 without a challenge, 401 with a Bearer challenge. */
export type CatalogRefusal = 'not-found' | 'unauthorized' | 'challenge';

/**
 * refuseCatalog builds a rule that answers every catalog request the way `mode` says. For
 * 'challenge', `challenge` gives the realm and service of the Bearer challenge (default: a realm on
 * the proxy that does not exist); the scope is `registry:catalog:*`, so a client that fetches a
 * token and retries is refused again, as registries do that never grant the catalog.
 */
export function refuseCatalog(mode: CatalogRefusal, challenge: { realm: string; service: string } = { realm: 'http://127.0.0.1:9/token', service: 'regfs-refused-catalog' }): FaultRule {
  const path = CATALOG_PATH;
  if (mode === 'not-found') return { method: 'GET', path, status: 404, errorCode: 'NOT_FOUND' };
  if (mode === 'unauthorized') return { method: 'GET', path, status: 401, errorCode: 'UNAUTHORIZED' };
  return {
    method: 'GET',
    path,
    status: 401,
    errorCode: 'UNAUTHORIZED',
    headers: { 'WWW-Authenticate': `Bearer realm="${challenge.realm}",service="${challenge.service}",scope="registry:catalog:*"` },
  };
}

/** rateLimitEveryNth builds a rule answering 429 with `Retry-After: retryAfterSeconds` to every Nth matching request. */
export function rateLimitEveryNth(n: number, retryAfterSeconds: number, match: { method?: string | RegExp; path?: string | RegExp } = {}): FaultRule {
  return { ...match, everyNth: n, status: 429, errorCode: 'TOOMANYREQUESTS', headers: { 'Retry-After': String(retryAfterSeconds) } };
}

/** Close a client socket after everything already written is flushed (FIN, then destroy). */
function closeAfterFlush(sock: net.Socket | null): void {
  if (!sock || sock.destroyed) return;
  sock.destroySoon();
}

/** startFaultProxy starts a proxy on 127.0.0.1:0 in front of `upstream`; registers t.teardown(close) if t is given. */
export async function startFaultProxy(
  t: { teardown(fn: () => unknown): void } | undefined,
  upstream: string,
): Promise<FaultProxy> {
  const up = new URL(upstream);
  if (up.protocol !== 'http:') throw new Error(`fault proxy: upstream must be plain http, got ${upstream}`);
  const upHost = up.hostname;
  const upPort = Number(up.port || 80);
  const upOrigin = up.origin;

  const agent = new http.Agent({ keepAlive: true, maxSockets: Infinity, maxFreeSockets: 256 });
  const sockets = new Set<net.Socket>();
  const timers = new Set<NodeJS.Timeout>();
  const inflight = new Set<http.ClientRequest>();
  const used = new WeakMap<FaultRule, number>();
  const seen = new WeakMap<FaultRule, number>();
  /** links is the shared slow link of each bytesPerSecond rule: when it started and what it has carried. */
  const links = new WeakMap<FaultRule, { started: number; bytes: number }>();
  let closing = false;
  let closed: Promise<void> | undefined;
  let total = 0;
  let proxyOrigin = '';

  const rules: FaultRule[] = [];
  const requests: RequestRecord[] = [];

  const pickRule = (method: string, p: string): { rule: FaultRule; index: number } | undefined => {
    for (let i = 0; i < rules.length; i++) {
      const r = rules[i]!;
      if (!matches(r.method, method, true) || !matches(r.path, p, false)) continue;
      const n = used.get(r) ?? 0;
      if (r.times !== undefined && n >= r.times) continue;
      if (r.everyNth !== undefined) {
        const k = (seen.get(r) ?? 0) + 1;
        seen.set(r, k);
        if (k % r.everyNth !== 0) continue;
      }
      used.set(r, n + 1);
      return { rule: r, index: i };
    }
    return undefined;
  };

  const countOut = (rec: RequestRecord, n: number): void => {
    rec.bytesOut += n;
    total += n;
  };

  const rewriteLocation = (loc: string): string => {
    try {
      const u = new URL(loc);
      if (u.origin === upOrigin) return proxyOrigin + u.pathname + u.search + u.hash;
    } catch {
      /* relative: leave alone */
    }
    return loc;
  };

  const answer = (res: http.ServerResponse, rec: RequestRecord, status: number, headers: Record<string, string>, body: string | Buffer): void => {
    const buf = typeof body === 'string' ? Buffer.from(body) : body;
    rec.status = status;
    res.writeHead(status, { ...headers, 'Content-Length': String(buf.length) });
    if (rec.method !== 'HEAD' && buf.length > 0) countOut(rec, buf.length);
    res.end(buf);
  };

  const endless = (res: http.ServerResponse, rec: RequestRecord): void => {
    rec.status = 200;
    res.writeHead(200, { 'Content-Type': 'application/vnd.oci.image.manifest.v1+json', 'Transfer-Encoding': 'chunked' });
    let stopped = false;
    res.once('close', () => (stopped = true));
    const pump = (): void => {
      while (!stopped && !closing && !res.destroyed) {
        countOut(rec, ENDLESS_CHUNK.length);
        if (!res.write(ENDLESS_CHUNK)) {
          res.once('drain', pump);
          return;
        }
      }
    };
    pump();
  };

  const handleResponse = (
    req: http.IncomingMessage,
    res: http.ServerResponse,
    rec: RequestRecord,
    rule: FaultRule | undefined,
    upRes: http.IncomingMessage,
  ): void => {
    const status = upRes.statusCode ?? 502;
    const headers: Record<string, string | string[]> = {};
    for (const [k, v] of Object.entries(upRes.headers)) {
      if (v === undefined || HOP_BY_HOP.has(k)) continue;
      headers[k] = k === 'location' && typeof v === 'string' ? rewriteLocation(v) : v;
    }
    for (const [k, v] of Object.entries(rule?.setHeaders ?? {})) {
      if (v === null) delete headers[k.toLowerCase()];
      else headers[k.toLowerCase()] = v;
    }
    const hasBody = req.method !== 'HEAD' && status !== 204 && status !== 304 && status >= 200;
    const declared = upRes.headers['content-length'] !== undefined ? Number(upRes.headers['content-length']) : undefined;

    if (rule?.paginateTags !== undefined && status === 200 && hasBody) {
      const chunks: Buffer[] = [];
      upRes.on('data', (c: Buffer) => chunks.push(c));
      upRes.once('end', () => {
        const full = JSON.parse(Buffer.concat(chunks).toString('utf8')) as { name: string; tags: string[] | null };
        const u = new URL(req.url ?? '/', 'http://proxy');
        const n = Math.min(Number(u.searchParams.get('n') ?? Infinity), rule.paginateTags!);
        const last = u.searchParams.get('last');
        const sorted = [...(full.tags ?? [])].sort();
        const from = last === null ? 0 : sorted.findIndex((x) => x > last);
        const page = from < 0 ? [] : sorted.slice(from, from + n);
        const out: Record<string, string | string[]> = { 'content-type': 'application/json' };
        if (from >= 0 && from + n < sorted.length) {
          out.link = `<${u.pathname}?n=${n}&last=${encodeURIComponent(page[page.length - 1]!)}>; rel="next"`;
        }
        answer(res, rec, 200, out as Record<string, string>, JSON.stringify({ name: full.name, tags: page }));
      });
      return;
    }

    if (rule?.replaceBody !== undefined) {
      upRes.resume();
      if (rule.chunked) delete headers['content-length'];
      else headers['content-length'] = String(rule.replaceBody.length);
      rec.status = status;
      res.writeHead(status, headers);
      if (hasBody) countOut(rec, rule.replaceBody.length);
      res.end(hasBody ? rule.replaceBody : undefined);
      return;
    }

    let limit: number | undefined;
    let closeAfter = false;
    let trailer: Buffer | undefined;
    if (rule?.appendBytes !== undefined && hasBody) {
      trailer = Buffer.alloc(rule.appendBytes, 0x5a); // 'Z'
      if (declared !== undefined) headers['content-length'] = String(declared + rule.appendBytes);
    } else if (rule?.appendBytes !== undefined && declared !== undefined && req.method === 'HEAD') {
      headers['content-length'] = String(declared + rule.appendBytes);
    }
    if (rule?.wrongContentLength !== undefined) {
      headers['content-length'] = String(rule.wrongContentLength);
      if (hasBody) {
        limit = rule.wrongContentLength;
        closeAfter = true;
      }
    }
    if (rule?.cutAfterBytes !== undefined && hasBody) limit = Math.min(limit ?? Infinity, rule.cutAfterBytes);
    if (rule?.chunked) delete headers['content-length'];
    const flipAt = hasBody ? rule?.flipByteAt : undefined;

    rec.status = status;
    res.writeHead(status, headers);
    if (!hasBody) {
      upRes.resume();
      res.end();
      return;
    }
    if (limit === 0) {
      // Nothing of the body may go out: flush the head, then close.
      upRes.destroy();
      res.flushHeaders();
      closeAfterFlush(res.socket);
      return;
    }

    let offset = 0;
    let done = false;
    /** own is this answer's own paced link (bytesPerSecondEach). */
    let own: { started: number; bytes: number } | undefined;
    const onData = (chunk: Buffer): void => {
      if (done) return;
      let c = chunk;
      let cut = false;
      if (limit !== undefined && offset + c.length >= limit) {
        c = c.subarray(0, limit - offset);
        cut = true;
      }
      if (flipAt !== undefined && flipAt >= offset && flipAt < offset + c.length) {
        c = Buffer.from(c); // copy: never mutate upstream's buffer
        c[flipAt - offset] = c[flipAt - offset]! ^ 0xff;
      }
      offset += c.length;
      countOut(rec, c.length);
      const ok = res.write(c);
      if (cut) {
        done = true;
        upRes.off('data', onData);
        upRes.destroy();
        closeAfterFlush(res.socket);
        return;
      }
      const rate = rule?.bytesPerSecond ?? rule?.bytesPerSecondEach;
      let ahead = 0;
      if (rate && rule) {
        let link = rule.bytesPerSecond ? links.get(rule) : own;
        if (!link) {
          link = { started: Date.now(), bytes: 0 };
          if (rule.bytesPerSecond) links.set(rule, link);
          else own = link;
        }
        link.bytes += c.length;
        ahead = (link.bytes / rate) * 1000 - (Date.now() - link.started);
      }
      if (ahead > 5) {
        // Ahead of the paced schedule: hold upstream until the link "has sent" what went out.
        upRes.pause();
        const timer = setTimeout(() => {
          timers.delete(timer);
          if (res.writableNeedDrain) res.once('drain', () => upRes.resume());
          else upRes.resume();
        }, ahead);
        timers.add(timer);
      } else if (!ok) {
        upRes.pause();
        res.once('drain', () => upRes.resume());
      }
    };
    upRes.on('data', onData);
    upRes.once('end', () => {
      if (done) return;
      done = true;
      if (trailer) {
        countOut(rec, trailer.length);
        res.write(trailer);
      }
      if (closeAfter) closeAfterFlush(res.socket);
      else res.end();
    });
    upRes.once('error', () => {
      if (done) return;
      done = true;
      res.destroy();
    });
    upRes.once('aborted', () => {
      if (done) return;
      done = true;
      res.destroy();
    });
  };

  const forward = (req: http.IncomingMessage, res: http.ServerResponse, rec: RequestRecord, rule: FaultRule | undefined): void => {
    const headers: http.OutgoingHttpHeaders = {};
    for (const [k, v] of Object.entries(req.headers)) {
      if (v === undefined || HOP_BY_HOP.has(k)) continue;
      headers[k] = v;
    }
    if (headers.host === undefined) headers.host = new URL(proxyOrigin).host;
    if (rule?.ignoreRange) {
      delete headers.range;
      delete headers['if-range'];
    }
    const te = req.headers['transfer-encoding'];
    if (te !== undefined && headers['content-length'] === undefined) headers['transfer-encoding'] = 'chunked';
    const bodyless = headers['content-length'] === undefined && te === undefined;
    const retryable = bodyless && (req.method === 'GET' || req.method === 'HEAD');

    const attempt = (retriesLeft: number): void => {
      const upReq = http.request({ host: upHost, port: upPort, method: req.method, path: req.url, headers, agent });
      inflight.add(upReq);
      let responded = false;
      upReq.once('close', () => inflight.delete(upReq));
      upReq.once('response', (upRes) => {
        responded = true;
        if (res.destroyed) {
          upRes.destroy();
          return;
        }
        if (!rule?.delayResponseMs) {
          handleResponse(req, res, rec, rule, upRes);
          return;
        }
        const timer = setTimeout(() => {
          timers.delete(timer);
          if (res.destroyed || closing) upRes.destroy();
          else handleResponse(req, res, rec, rule, upRes);
        }, rule.delayResponseMs);
        timers.add(timer);
      });
      upReq.once('error', (err: NodeJS.ErrnoException) => {
        if (responded || closing || res.destroyed) return;
        // A pooled keep-alive socket the upstream closed meanwhile (e.g. after restart): retry once.
        if (retriesLeft > 0 && upReq.reusedSocket && (err.code === 'ECONNRESET' || err.code === 'EPIPE')) {
          attempt(retriesLeft - 1);
          return;
        }
        if (!res.headersSent) answer(res, rec, 502, { 'Content-Type': 'application/json' }, errorBody(`fault-proxy: upstream error: ${err.message}`));
        else res.destroy();
      });
      res.once('close', () => {
        if (!res.writableFinished) upReq.destroy();
      });
      if (bodyless) upReq.end();
      else req.pipe(upReq);
    };
    attempt(retryable ? 1 : 0);
  };

  const handle = (req: http.IncomingMessage, res: http.ServerResponse, rec: RequestRecord, rule: FaultRule | undefined): void => {
    if (closing || req.socket.destroyed) return;
    if (!rule) {
      forward(req, res, rec, undefined);
      return;
    }
    if (rule.reset) {
      const s = req.socket;
      if (typeof s.resetAndDestroy === 'function') s.resetAndDestroy();
      else s.destroy();
      return;
    }
    if (rule.stall) {
      req.resume(); // accept the whole request, then say nothing
      return;
    }
    if (rule.status !== undefined) {
      req.resume();
      answer(res, rec, rule.status, { 'Content-Type': 'application/json', ...(rule.headers ?? {}) }, errorBody('injected', rule.errorCode));
      return;
    }
    if (rule.redirectTo !== undefined) {
      req.resume();
      answer(res, rec, 307, { Location: rule.redirectTo + (req.url ?? '/') }, '');
      return;
    }
    if (rule.endlessBody) {
      req.resume();
      endless(res, rec);
      return;
    }
    forward(req, res, rec, rule);
  };

  let inFlight = 0;
  let peak = 0;
  const server = http.createServer({ requestTimeout: 0 }, (req, res) => {
    inFlight++;
    peak = Math.max(peak, inFlight);
    res.once('close', () => inFlight--);
    const method = req.method ?? 'GET';
    const p = req.url ?? '/';
    const rec: RequestRecord = { method, path: p, headers: { ...req.headers }, status: 0, bytesOut: 0, time: Date.now(), connection: connectionIds.get(req.socket) ?? 0 };
    const picked = pickRule(method, p);
    if (picked) rec.rule = picked.index;
    requests.push(rec);
    const rule = picked?.rule;
    if (rule?.latencyMs !== undefined && rule.latencyMs > 0) {
      const timer = setTimeout(() => {
        timers.delete(timer);
        handle(req, res, rec, rule);
      }, rule.latencyMs);
      timers.add(timer);
      return;
    }
    handle(req, res, rec, rule);
  });
  server.keepAliveTimeout = 30_000;
  const connectionIds = new WeakMap<net.Socket, number>();
  let connectionCount = 0;
  server.on('connection', (s: net.Socket) => {
    if (closing) {
      s.destroy();
      return;
    }
    sockets.add(s);
    connectionIds.set(s, ++connectionCount);
    s.once('close', () => sockets.delete(s));
  });
  server.on('clientError', (_err, s: net.Socket) => {
    if (!s.destroyed) s.destroy();
  });

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });
  const port = (server.address() as net.AddressInfo).port;
  const host = `127.0.0.1:${port}`;
  proxyOrigin = `http://${host}`;

  const proxy: FaultProxy = {
    url: proxyOrigin,
    host,
    rules,
    requests,
    bytesOut: () => total,
    count(method?: string, path?: RegExp): number {
      return requests.filter((r) => matches(method, r.method, true) && matches(path, r.path, false)).length;
    },
    peakInFlight: () => peak,
    reset(): void {
      requests.length = 0;
      total = 0;
      peak = inFlight;
    },
    close(): Promise<void> {
      closed ??= new Promise<void>((resolve) => {
        closing = true;
        for (const tm of timers) clearTimeout(tm);
        timers.clear();
        server.close(() => resolve());
        server.closeAllConnections();
        for (const s of sockets) s.destroy();
        sockets.clear();
        for (const r of inflight) r.destroy();
        inflight.clear();
        agent.destroy();
      });
      return closed;
    },
  };
  t?.teardown(() => proxy.close());
  return proxy;
}

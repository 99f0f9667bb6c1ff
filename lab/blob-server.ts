/**
 * Test support: a tiny second-origin HTTP server for redirect tests. It serves `GET`/`HEAD /v2/...`
 * by fetching the same path anonymously from an upstream (plain-flavour) registry and streaming the
 * answer back, while recording the headers each request arrived with — so a test can assert that a
 * client following a cross-origin redirect sent no `authorization` / `cookie`.
 */
import http from 'node:http';
import type net from 'node:net';

/** RecordedRequest is one request the header recorder received. */
export interface RecordedRequest {
  /** method is the request method. */
  method: string;
  /** path is the request path+query. */
  path: string;
  /** headers are the request headers as received (lower-case names). */
  headers: Record<string, string | string[] | undefined>;
}

/** HeaderRecorder is a running second-origin blob server and its record of requests. */
export interface HeaderRecorder {
  /** url is "http://127.0.0.1:PORT". */
  url: string;
  /** requests lists every request received, in order. */
  requests: RecordedRequest[];
  /** close stops the server and destroys all its sockets; idempotent. */
  close(): Promise<void>;
}

/** Request headers passed on to the upstream; everything else (notably credentials) is dropped. */
const FORWARD_REQUEST = ['accept', 'range', 'if-range', 'if-none-match'];
/** Response headers passed back to the client. */
const FORWARD_RESPONSE = [
  'content-type',
  'content-length',
  'content-range',
  'accept-ranges',
  'docker-content-digest',
  'etag',
  'cache-control',
  'last-modified',
];

/** startHeaderRecorder starts the recorder on 127.0.0.1:0 proxying anonymously to `upstream`; registers t.teardown(close) if t is given. */
export async function startHeaderRecorder(
  t: { teardown(fn: () => unknown): void } | undefined,
  upstream: string,
): Promise<HeaderRecorder> {
  const up = new URL(upstream);
  if (up.protocol !== 'http:') throw new Error(`header recorder: upstream must be plain http, got ${upstream}`);
  const agent = new http.Agent({ keepAlive: true });
  const sockets = new Set<net.Socket>();
  const requests: RecordedRequest[] = [];
  let closing = false;
  let closed: Promise<void> | undefined;

  const server = http.createServer((req, res) => {
    const method = req.method ?? 'GET';
    const p = req.url ?? '/';
    requests.push({ method, path: p, headers: { ...req.headers } });
    req.resume();
    if ((method !== 'GET' && method !== 'HEAD') || !p.startsWith('/v2/')) {
      const body = JSON.stringify({ errors: [{ code: 'UNSUPPORTED', message: 'header recorder serves GET/HEAD /v2/ only' }] });
      res.writeHead(method === 'GET' || method === 'HEAD' ? 404 : 405, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) });
      res.end(body);
      return;
    }
    const headers: http.OutgoingHttpHeaders = { host: up.host };
    for (const h of FORWARD_REQUEST) if (req.headers[h] !== undefined) headers[h] = req.headers[h];
    const upReq = http.request({ host: up.hostname, port: Number(up.port || 80), method, path: p, headers, agent }, (upRes) => {
      const out: http.OutgoingHttpHeaders = {};
      for (const h of FORWARD_RESPONSE) if (upRes.headers[h] !== undefined) out[h] = upRes.headers[h];
      res.writeHead(upRes.statusCode ?? 502, out);
      upRes.pipe(res);
      upRes.once('error', () => res.destroy());
    });
    upReq.once('error', (err) => {
      if (res.headersSent) {
        res.destroy();
        return;
      }
      const body = JSON.stringify({ errors: [{ code: 'UNAVAILABLE', message: `header recorder: upstream error: ${err.message}` }] });
      res.writeHead(502, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) });
      res.end(body);
    });
    res.once('close', () => {
      if (!res.writableFinished) upReq.destroy();
    });
    upReq.end();
  });
  server.on('connection', (s: net.Socket) => {
    if (closing) {
      s.destroy();
      return;
    }
    sockets.add(s);
    s.once('close', () => sockets.delete(s));
  });

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });
  const port = (server.address() as net.AddressInfo).port;

  const rec: HeaderRecorder = {
    url: `http://127.0.0.1:${port}`,
    requests,
    close(): Promise<void> {
      closed ??= new Promise<void>((resolve) => {
        closing = true;
        server.close(() => resolve());
        server.closeAllConnections();
        for (const s of sockets) s.destroy();
        sockets.clear();
        agent.destroy();
      });
      return closed;
    },
  };
  t?.teardown(() => rec.close());
  return rec;
}

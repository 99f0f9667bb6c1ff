/**
 * Test support: a tiny HTTP forward proxy on 127.0.0.1, the kind HTTP_PROXY / HTTPS_PROXY point at.
 * It tunnels CONNECT requests (what undici's proxy agent sends for http and https targets) and
 * forwards plain requests with an absolute URI. Host names in `hosts` resolve to the address given
 * there (e.g. `registry.invalid` → 127.0.0.1), so a test can use a name only the proxy knows. It
 * counts what it served; it never logs headers (Proxy-Authorization included).
 */
import http from 'node:http';
import net from 'node:net';

/** ProxiedRequest is one request the proxy handled. */
export interface ProxiedRequest {
  /** kind is "connect" for a tunnel, "forward" for an absolute-URI request. */
  kind: 'connect' | 'forward';
  /** target is host:port as the client asked for it. */
  target: string;
  /** status is what the proxy answered (200 for an established tunnel, 502 when the target was unreachable). */
  status: number;
}

/** ForwardProxy is a running forward proxy and its record. */
export interface ForwardProxy {
  /** url is "http://127.0.0.1:PORT", the value for HTTP_PROXY / HTTPS_PROXY. */
  url: string;
  /** requests lists every tunnel and forwarded request, in order. */
  requests: ProxiedRequest[];
  /** close stops the server and destroys every tunnel; idempotent. */
  close(): Promise<void>;
}

function splitHostPort(target: string, defaultPort: number): { host: string; port: number } {
  const m = /^\[?([^\]]+?)\]?(?::(\d+))?$/.exec(target);
  return { host: m?.[1] ?? target, port: m?.[2] ? Number(m[2]) : defaultPort };
}

/** startForwardProxy starts the proxy; `hosts` maps names to addresses; registers t.teardown(close) if t is given. */
export async function startForwardProxy(t: { teardown(fn: () => unknown): void } | undefined, opts: { hosts?: Record<string, string> } = {}): Promise<ForwardProxy> {
  const hosts = opts.hosts ?? {};
  const resolve = (h: string): string => hosts[h.toLowerCase()] ?? h;
  const requests: ProxiedRequest[] = [];
  const sockets = new Set<net.Socket>();
  const agent = new http.Agent({ keepAlive: false });

  const server = http.createServer((req, res) => {
    const rec: ProxiedRequest = { kind: 'forward', target: '', status: 0 };
    requests.push(rec);
    let u: URL;
    try {
      u = new URL(req.url ?? '');
    } catch {
      rec.status = 400;
      res.writeHead(400).end('absolute URI required');
      return;
    }
    rec.target = u.host;
    const headers = { ...req.headers };
    delete headers['proxy-connection'];
    delete headers['proxy-authorization'];
    const up = http.request({ host: resolve(u.hostname), port: Number(u.port || 80), method: req.method, path: u.pathname + u.search, headers, agent }, (upRes) => {
      rec.status = upRes.statusCode ?? 502;
      res.writeHead(rec.status, upRes.headers);
      upRes.pipe(res);
    });
    up.on('error', () => {
      rec.status = 502;
      if (!res.headersSent) res.writeHead(502).end();
      else res.destroy();
    });
    req.pipe(up);
  });

  server.on('connect', (req: http.IncomingMessage, client: net.Socket, head: Buffer) => {
    const target = req.url ?? '';
    const rec: ProxiedRequest = { kind: 'connect', target, status: 0 };
    requests.push(rec);
    sockets.add(client);
    client.once('close', () => sockets.delete(client));
    const { host, port } = splitHostPort(target, 443);
    const up = net.connect({ host: resolve(host), port });
    sockets.add(up);
    up.once('close', () => sockets.delete(up));
    up.once('connect', () => {
      rec.status = 200;
      client.write('HTTP/1.1 200 Connection Established\r\n\r\n');
      if (head.length) up.write(head);
      up.pipe(client);
      client.pipe(up);
    });
    up.on('error', () => {
      if (rec.status === 0) {
        rec.status = 502;
        client.end('HTTP/1.1 502 Bad Gateway\r\n\r\n');
      } else client.destroy();
    });
    client.on('error', () => up.destroy());
  });
  server.on('connection', (s: net.Socket) => {
    sockets.add(s);
    s.once('close', () => sockets.delete(s));
  });

  await new Promise<void>((ok, fail) => {
    server.once('error', fail);
    server.listen(0, '127.0.0.1', () => ok());
  });
  const port = (server.address() as net.AddressInfo).port;
  let closed: Promise<void> | undefined;
  const proxy: ForwardProxy = {
    url: `http://127.0.0.1:${port}`,
    requests,
    close(): Promise<void> {
      closed ??= new Promise<void>((done) => {
        server.close(() => done());
        server.closeAllConnections();
        for (const s of sockets) s.destroy();
        agent.destroy();
      });
      return closed;
    },
  };
  t?.teardown(() => proxy.close());
  return proxy;
}

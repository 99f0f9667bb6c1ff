import type { ConnectionOptions } from 'node:tls';
import { Dispatcher, EnvHttpProxyAgent, Pool } from 'undici';

/**
 * OriginPools is an undici dispatcher holding one keep-alive Pool per origin for the life of a
 * transport. undici's Agent drops an origin's whole pool whenever its count of connected sockets
 * reaches zero (every HEAD closes its socket, by undici's choice), and a late disconnect of the old
 * pool then closes the new one: requests ended up on a fresh TCP (and TLS) connection each. Pools
 * here are only closed with the transport.
 */
export class OriginPools extends Dispatcher {
  private readonly pools = new Map<string, Pool>();

  constructor(private readonly opts: Pool.Options) {
    super();
  }

  override dispatch(opts: Dispatcher.DispatchOptions, handler: Dispatcher.DispatchHandler): boolean {
    const origin = String(opts.origin);
    let pool = this.pools.get(origin);
    if (!pool) {
      pool = new Pool(origin, this.opts);
      this.pools.set(origin, pool);
    }
    return pool.dispatch(opts, handler);
  }

  override close(): Promise<void>;
  override close(callback: () => void): void;
  override close(callback?: () => void): Promise<void> | void {
    const pools = [...this.pools.values()];
    this.pools.clear();
    return settle(Promise.all(pools.map((p) => p.close())), callback);
  }

  override destroy(): Promise<void>;
  override destroy(err: Error | null): Promise<void>;
  override destroy(callback: () => void): void;
  override destroy(err: Error | null, callback: () => void): void;
  override destroy(a?: Error | null | (() => void), b?: () => void): Promise<void> | void {
    const err = typeof a === 'function' ? null : (a ?? null);
    const callback = typeof a === 'function' ? a : b;
    const pools = [...this.pools.values()];
    this.pools.clear();
    return settle(Promise.all(pools.map((p) => p.destroy(err))), callback);
  }
}

/** settle returns the promise, or (with a callback, undici's other calling style) calls it when done. */
function settle(p: Promise<unknown>, callback?: () => void): Promise<void> | void {
  const done = p.then(() => undefined);
  if (!callback) return done;
  done.then(callback, callback);
}

/** proxyConfigured tells whether HTTP_PROXY or HTTPS_PROXY (either case, as curl and undici read them) names a proxy. */
export function proxyConfigured(env: NodeJS.ProcessEnv = process.env): boolean {
  return Boolean(env.http_proxy || env.HTTP_PROXY || env.https_proxy || env.HTTPS_PROXY);
}

/**
 * noProxyList is NO_PROXY (or no_proxy) plus the loopback names, which are never proxied (as Go's
 * proxy rules do for docker, skopeo and oras); `*` stays `*`.
 */
export function noProxyList(env: NodeJS.ProcessEnv = process.env): string {
  const given = (env.no_proxy ?? env.NO_PROXY ?? '').trim();
  if (given === '*') return '*';
  return [given, 'localhost', '127.0.0.1', '::1', '[::1]'].filter(Boolean).join(',');
}

/**
 * registryDispatcher returns the dispatcher of one transport: per-origin keep-alive pools, or, when
 * HTTP_PROXY / HTTPS_PROXY is set, undici's EnvHttpProxyAgent (NO_PROXY and loopback bypass it), with
 * the same TLS settings for the registry's connections inside the proxy tunnel.
 */
export function registryDispatcher(opts: Pool.Options & { connect: ConnectionOptions }): Dispatcher {
  if (!proxyConfigured()) return new OriginPools(opts);
  const { connect, ...rest } = opts;
  return new EnvHttpProxyAgent({ ...rest, connect, requestTls: connect, noProxy: noProxyList() });
}

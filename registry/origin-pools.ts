import { Dispatcher, Pool } from 'undici';

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

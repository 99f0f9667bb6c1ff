/** SingleFlight runs at most one call per key at a time; concurrent callers of the same key share its result. */
export class SingleFlight<K, V> {
  private readonly flights = new Map<K, Promise<V>>();

  /** run starts fn for key unless a call for key is already in flight, and returns that call's promise. */
  run(key: K, fn: () => Promise<V>): Promise<V> {
    const existing = this.flights.get(key);
    if (existing) return existing;
    const p = (async () => {
      try {
        return await fn();
      } finally {
        this.flights.delete(key);
      }
    })();
    this.flights.set(key, p);
    return p;
  }

  /** pending returns the in-flight call for key, if any. */
  pending(key: K): Promise<V> | undefined {
    return this.flights.get(key);
  }

  /** settled resolves once every call in flight now has finished (successfully or not). */
  async settled(): Promise<void> {
    await Promise.allSettled([...this.flights.values()]);
  }
}

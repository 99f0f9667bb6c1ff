/** runLimited runs fn over items with at most `n` at a time, failing fast on the first error. */
export async function runLimited<T>(items: T[], n: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  let failed: unknown;
  const worker = async (): Promise<void> => {
    while (next < items.length && failed === undefined) {
      const item = items[next++]!;
      try {
        await fn(item);
      } catch (err) {
        failed ??= err;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(n, items.length)) }, worker));
  if (failed !== undefined) throw failed;
}

/** Semaphore hands out at most `limit` slots at a time; waiters are served in arrival order. */
export class Semaphore {
  private used = 0;
  private readonly waiting: Array<() => void> = [];
  /** peak is the most slots ever held at once. */
  peak = 0;

  constructor(readonly limit: number) {
    if (!Number.isInteger(limit) || limit < 1) throw new RangeError(`semaphore limit must be a positive integer, got ${limit}`);
  }

  /** inUse is the number of slots held now. */
  get inUse(): number {
    return this.used;
  }

  /** acquire waits for a slot and returns its release function (calling it twice is harmless); an abort rejects with the signal's reason. */
  acquire(signal?: AbortSignal): Promise<() => void> {
    if (signal?.aborted) return Promise.reject(signal.reason ?? new Error('aborted'));
    return new Promise((resolve, reject) => {
      const grant = (): void => {
        signal?.removeEventListener('abort', onAbort);
        this.used++;
        this.peak = Math.max(this.peak, this.used);
        let released = false;
        resolve(() => {
          if (released) return;
          released = true;
          this.used--;
          this.waiting.shift()?.();
        });
      };
      const onAbort = (): void => {
        const i = this.waiting.indexOf(grant);
        if (i >= 0) this.waiting.splice(i, 1);
        reject(signal?.reason ?? new Error('aborted'));
      };
      if (this.used < this.limit) grant();
      else {
        this.waiting.push(grant);
        signal?.addEventListener('abort', onAbort, { once: true });
      }
    });
  }
}

import type { Readable } from 'node:stream';

/** abortable settles like p, or rejects as soon as signal aborts (for sources that ignore their signal); a late stream is destroyed. */
export function abortable(p: Promise<Readable>, signal: AbortSignal): Promise<Readable> {
  if (signal.aborted) {
    void p.then((s) => s.destroy(), () => undefined);
    return Promise.reject(new Error('aborted'));
  }
  return new Promise<Readable>((resolve, reject) => {
    const onAbort = (): void => {
      void p.then((s) => s.destroy(), () => undefined);
      reject(new Error('aborted'));
    };
    signal.addEventListener('abort', onAbort, { once: true });
    p.then(
      (s) => {
        signal.removeEventListener('abort', onAbort);
        resolve(s);
      },
      (e: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(e);
      },
    );
  });
}

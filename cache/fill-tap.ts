import { PassThrough, Readable, type Writable } from 'node:stream';

/** FillTap sees the bytes of a whole fetch as they stream into the cache (before they are verified). */
export interface FillTap {
  /** start is called when the whole fetch begins (so the caller knows its tap is in use). */
  start(): void;
  /** write receives each chunk; the fetch waits for it (backpressure). */
  write(chunk: Buffer): Promise<void> | void;
}

/** streamTap is a tap writing into `out` (waiting while it is full; dropping bytes once it is destroyed); `used` tells whether a fetch began with it. */
export function streamTap(out: Writable): FillTap & { used: boolean } {
  const tap = {
    used: false,
    start: () => {
      tap.used = true;
    },
    write: (chunk: Buffer): Promise<void> | void => {
      if (out.destroyed || out.write(chunk)) return;
      return new Promise<void>((resolve) => {
        const go = (): void => {
          out.off('drain', go);
          out.off('close', go);
          resolve();
        };
        out.on('drain', go);
        out.on('close', go);
      });
    },
  };
  return tap;
}

/** tapped passes a fetch's chunks through, handing each to the tap first (the source is destroyed with the result). */
export function tapped(src: Readable, tap: FillTap): Readable {
  tap.start();
  const out = Readable.from(
    (async function* () {
      for await (const c of src) {
        const chunk = typeof c === 'string' ? Buffer.from(c) : (c as Buffer);
        await tap.write(chunk);
        yield chunk;
      }
    })(),
    { objectMode: false },
  );
  out.on('close', () => src.destroy());
  return out;
}


/**
 * teeFill runs `fill` with a tap and returns the bytes it fetches, as they arrive; the stream ends once
 * the fill succeeded (the blob is cached and verified) and errors when it failed. When the fill did not
 * fetch the blob itself (another caller's fill was running, or a partial blob was completed by ranges),
 * the stream gives the cached blob from `cached()` instead.
 */
export function teeFill(fill: (tap: FillTap) => Promise<void>, cached: () => Promise<Readable>): Readable {
  const out = new PassThrough({ highWaterMark: 1024 * 1024 });
  const tap = streamTap(out);
  fill(tap)
    .then(async () => {
      if (tap.used) return void out.end();
      const s = await cached();
      s.on('error', (e) => out.destroy(e));
      s.pipe(out);
    })
    .catch((err: unknown) => out.destroy(err as Error));
  return out;
}

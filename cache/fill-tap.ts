import { Readable, type Writable } from 'node:stream';

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


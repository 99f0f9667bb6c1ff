import type { TransferEvent } from '../registry/transfer.js';
import { shortDigest } from '../registry/digest.js';
import { humanBytes } from './output.js';

/**
 * Progress shows transfers on a TTY as one redrawn status line on stderr, and prints the
 * ORAS-style per-blob lines (`Uploading <12 hex> <name>`) on stdout in text mode.
 */
export class Progress {
  private readonly bytes = new Map<string, number>();
  private readonly sizes = new Map<string, number>();
  private done = 0;
  private lastDraw = 0;
  private drawn = false;

  constructor(
    private readonly verb: { start: string; done: string },
    private readonly lines: (s: string) => void,
    private readonly tty: NodeJS.WriteStream | undefined,
  ) {}

  /** on handles one transfer event. */
  on(e: TransferEvent): void {
    const key = e.desc.digest + e.name;
    if (e.kind === 'start') {
      this.sizes.set(key, e.desc.size);
      this.clear();
      this.lines(`${this.verb.start.padEnd(11)} ${shortDigest(e.desc.digest)} ${e.name}`);
    } else if (e.kind === 'progress') {
      this.bytes.set(key, e.bytes);
      this.draw();
    } else {
      this.done++;
      this.bytes.set(key, e.desc.size);
      this.clear();
      const word = e.result === 'exists' ? 'Exists' : e.result === 'mounted' ? 'Mounted' : this.verb.done;
      this.lines(`${word.padEnd(11)} ${shortDigest(e.desc.digest)} ${e.name}`);
    }
  }

  private draw(): void {
    if (!this.tty) return;
    const now = Date.now();
    if (now - this.lastDraw < 100) return;
    this.lastDraw = now;
    let got = 0;
    let total = 0;
    for (const [k, size] of this.sizes) {
      total += size;
      got += this.bytes.get(k) ?? 0;
    }
    const pct = total ? Math.floor((got / total) * 100) : 100;
    const width = 30;
    const fill = Math.round((pct / 100) * width);
    this.tty.write(`\r\x1b[K[${'#'.repeat(fill)}${'.'.repeat(width - fill)}] ${pct}% ${humanBytes(got)}/${humanBytes(total)} (${this.done}/${this.sizes.size} blobs)`);
    this.drawn = true;
  }

  /** clear removes the status line before other output. */
  clear(): void {
    if (this.tty && this.drawn) {
      this.tty.write('\r\x1b[K');
      this.drawn = false;
    }
  }
}

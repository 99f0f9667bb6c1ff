import type { TransferEvent } from '../registry/transfer.js';
import { shortDigest } from '../registry/digest.js';
import { humanBytes } from './output.js';

/**
 * Progress shows transfers on a TTY as one redrawn status line on stderr, and prints the
 * ORAS-style per-blob lines on stdout in text mode, as ORAS 1.2's status/text.go does: the prompt padded
 * to the longest of its command (push: `Uploading`/`Uploaded `/`Exists   `, pull: `Downloading`/`Downloaded `),
 * the 12-hex short digest, then the title; a blob without a title (the config) is shown, by its media
 * type, only with --verbose.
 */
export class Progress {
  private readonly bytes = new Map<string, number>();
  private readonly sizes = new Map<string, number>();
  private done = 0;
  private lastDraw = 0;
  private drawn = false;
  private started: { at: number; got: number } | undefined;

  constructor(
    private readonly verb: { start: string; done: string },
    private readonly lines: (s: string) => void,
    private readonly tty: NodeJS.WriteStream | undefined,
    private readonly verbose = false,
  ) {}

  private line(word: string, e: TransferEvent): void {
    const title = e.desc.annotations?.['org.opencontainers.image.title'];
    if (title === undefined && !this.verbose) return;
    const width = Math.max(this.verb.start.length, this.verb.done.length);
    this.lines(`${word.padEnd(width)} ${shortDigest(e.desc.digest)} ${title ?? e.desc.mediaType}`);
  }

  /** on handles one transfer event. */
  on(e: TransferEvent): void {
    const key = e.desc.digest + e.name;
    if (e.kind === 'start') {
      this.sizes.set(key, e.desc.size);
      this.clear();
      this.line(this.verb.start, e);
    } else if (e.kind === 'progress') {
      this.bytes.set(key, e.bytes);
      this.draw();
    } else {
      this.done++;
      this.bytes.set(key, e.desc.size);
      this.clear();
      const word = e.result === 'exists' ? 'Exists' : e.result === 'mounted' ? 'Mounted' : this.verb.done;
      this.line(word, e);
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
    this.started ??= { at: now, got };
    const secs = (now - this.started.at) / 1000;
    const rate = secs >= 0.5 ? (got - this.started.got) / secs : undefined;
    this.tty.write(`\r\x1b[K${progressLine({ got, total, done: this.done, blobs: this.sizes.size, rate, columns: this.tty.columns || 80 })}`);
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

/** ProgressState is what one status line shows. */
export interface ProgressState {
  got: number;
  total: number;
  done: number;
  blobs: number;
  /** rate in bytes per second, once known. */
  rate?: number;
  /** columns is the terminal width; the line is kept shorter than it, so a redraw never wraps. */
  columns: number;
}

/** clock renders seconds as m:ss or h:mm:ss. */
function clock(secs: number): string {
  const s = Math.max(0, Math.round(secs));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const ss = String(s % 60).padStart(2, '0');
  return h ? `${h}:${String(m).padStart(2, '0')}:${ss}` : `${m}:${ss}`;
}

/**
 * progressLine renders `[####....] 42% 3.1 MiB/7.4 MiB 1.2 MiB/s ETA 0:04 (1/3 blobs)` in fewer than
 * `columns` characters: the bar takes what the numbers leave (at most 30), and on a narrow terminal the
 * bar goes first, then the blob count, the ETA, the rate and the byte counts.
 */
export function progressLine(p: ProgressState): string {
  const pct = p.total ? Math.min(100, Math.floor((p.got / p.total) * 100)) : 100;
  const max = Math.max(1, p.columns - 1);
  const parts = [`${pct}%`, `${humanBytes(p.got)}/${humanBytes(p.total)}`];
  const rate = p.rate !== undefined && p.rate > 0 ? `${humanBytes(Math.round(p.rate))}/s` : undefined;
  const eta = rate && p.total > p.got ? `ETA ${clock((p.total - p.got) / p.rate!)}` : undefined;
  const blobs = `(${p.done}/${p.blobs} blobs)`;
  const optional = [rate, eta, blobs];
  for (let keep = optional.length; keep >= 0; keep--) {
    const text = [...parts, ...optional.slice(0, keep).filter((x): x is string => Boolean(x))].join(' ');
    const room = max - text.length - 3;
    if (keep === optional.length && room >= 10) {
      const width = Math.min(30, room);
      const fill = Math.round((pct / 100) * width);
      return `[${'#'.repeat(fill)}${'.'.repeat(width - fill)}] ${text}`;
    }
    if (text.length <= max) return text;
  }
  return `${pct}%`.slice(0, max);
}

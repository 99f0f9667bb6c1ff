import { errorMessage } from '../util/errors.js';
import { redactText } from '../util/log.js';

/** OutputFormat is how a command prints its results. */
export type OutputFormat = 'text' | 'json';

/** Output prints results to stdout and messages to stderr, as text or JSON. */
export class Output {
  constructor(readonly format: OutputFormat, private readonly out: NodeJS.WritableStream = process.stdout, private readonly err: NodeJS.WritableStream = process.stderr) {}

  /** line prints a human-readable line on stdout (text format only). */
  line(s: string): void {
    if (this.format === 'text') this.out.write(s + '\n');
  }

  /** json prints a result object (json format only). */
  json(obj: unknown): void {
    if (this.format === 'json') this.out.write(JSON.stringify(obj, null, 2) + '\n');
  }

  /** result prints `obj` as JSON in json format, else the text lines. */
  result(obj: unknown, text: string | string[]): void {
    if (this.format === 'json') this.json(obj);
    else for (const l of Array.isArray(text) ? text : [text]) this.line(l);
  }

  /** raw writes bytes to stdout whatever the format (manifest fetch, blob fetch -o -). */
  raw(data: string | Uint8Array): void {
    this.out.write(data);
  }

  /** warn prints a warning on stderr. */
  warn(s: string): void {
    this.err.write(`WARNING: ${redactText(s)}\n`);
  }

  /** error prints a one-line error on stderr. */
  error(err: unknown): void {
    this.err.write(`Error: ${redactText(errorMessage(err))}\n`);
  }
}

/** humanBytes renders a byte count as B, KiB, MiB or GiB. */
export function humanBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${i === 0 ? v : v.toFixed(1)} ${units[i]}`;
}

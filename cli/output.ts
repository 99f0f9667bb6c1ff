import { errorMessage, RegfsError } from '../util/errors.js';
import { redactText } from '../util/log.js';
import { compileGoTemplate } from './go-template.js';

/** OutputFormat is how a command prints its results: `go-template` renders the JSON model through --format go-template=T. */
export type OutputFormat = 'text' | 'json' | 'go-template';

/** parseFormat checks a --format value: text, json or go-template=TEMPLATE (ORAS 1.2 spellings). */
export function parseFormat(v: string): string {
  if (v === 'text' || v === 'json') return v;
  if (v.startsWith('go-template=')) {
    compileGoTemplate(v.slice('go-template='.length));
    return v;
  }
  if (v === 'go-template') return v; // the template comes with --template (ORAS 1.2)
  throw new RegfsError('INVALID_ARGUMENT', `invalid --format ${JSON.stringify(v)}: expected text, json or go-template=TEMPLATE`);
}

/** Output prints results to stdout and messages to stderr, as text, JSON or a go-template rendering of the JSON. */
export class Output {
  readonly format: OutputFormat;
  private readonly template?: (data: unknown) => string;

  constructor(format: string, private readonly out: NodeJS.WritableStream = process.stdout, private readonly err: NodeJS.WritableStream = process.stderr, template?: string) {
    if (template !== undefined && format !== 'go-template') throw new RegfsError('INVALID_ARGUMENT', '--template must be used with --format go-template');
    if (format === 'go-template') {
      if (template === undefined) throw new RegfsError('INVALID_ARGUMENT', "--format go-template needs a template: --template '{{.digest}}' or --format go-template='{{.digest}}'");
      this.format = 'go-template';
      this.template = compileGoTemplate(template);
    } else if (format.startsWith('go-template=')) {
      this.format = 'go-template';
      this.template = compileGoTemplate(format.slice('go-template='.length));
    } else this.format = format === 'json' ? 'json' : 'text';
  }

  /** line prints a human-readable line on stdout (text format only). */
  line(s: string): void {
    if (this.format === 'text') this.out.write(s + '\n');
  }

  /** json prints a result object (json format only). */
  json(obj: unknown): void {
    if (this.format === 'json') this.out.write(JSON.stringify(obj, null, 2) + '\n');
    else if (this.template) this.out.write(this.template(obj));
  }

  /** result prints `obj` as JSON in json format (or through the go-template), else the text lines. */
  result(obj: unknown, text: string | string[]): void {
    if (this.format !== 'text') this.json(obj);
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

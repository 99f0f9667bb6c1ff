import { RegfsError } from '../util/errors.js';

/**
 * prompt asks on stderr and reads one line from a terminal on stdin; with `hidden` the terminal does
 * not echo it (raw mode: Enter ends it, Backspace edits, Ctrl-C or Ctrl-D cancels). For `login`.
 */
export function prompt(question: string, opts: { hidden?: boolean; input?: NodeJS.ReadStream; output?: NodeJS.WritableStream } = {}): Promise<string> {
  const input = opts.input ?? process.stdin;
  const output = opts.output ?? process.stderr;
  const hidden = opts.hidden === true && input.isTTY === true;
  // Echo goes off before the question shows: a password typed (or pasted) the moment it appears is never echoed.
  if (hidden) input.setRawMode(true);
  output.write(question);
  return new Promise((resolve, reject) => {
    let buf = '';
    const finish = (err?: Error): void => {
      input.off('data', onData);
      if (hidden) {
        input.setRawMode(false);
        output.write('\n');
      }
      input.pause();
      if (err) reject(err);
      else resolve(buf);
    };
    const onData = (d: Buffer | string): void => {
      for (const ch of d.toString()) {
        if (ch === '\r' || ch === '\n') return finish();
        if (ch === '\u0003' || (ch === '\u0004' && !buf)) return finish(new RegfsError('INVALID_ARGUMENT', 'login cancelled'));
        if (ch === '\u007f' || ch === '\b') buf = buf.slice(0, -1);
        else buf += ch;
      }
    };
    input.on('data', onData);
    input.resume();
  });
}

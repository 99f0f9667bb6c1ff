/** Unit test of cli/prompt.ts: the order of echo-off and the question, which a fast typist or a paste races. */
import test from 'ava';
import { PassThrough } from 'node:stream';
import { prompt } from '../cli/prompt.js';

test('a hidden prompt turns echo off before the question shows, and back on after Enter', async (t) => {
  const events: string[] = [];
  const input = Object.assign(new PassThrough(), {
    isTTY: true,
    setRawMode(on: boolean) {
      events.push(`raw:${on}`);
      return this;
    },
  }) as unknown as NodeJS.ReadStream;
  const output = new PassThrough();
  output.on('data', (d: Buffer) => events.push(`out:${JSON.stringify(d.toString())}`));
  const answer = prompt('Password: ', { hidden: true, input, output });
  (input as unknown as PassThrough).write('s3cr\u007fret\r');
  t.is(await answer, 's3cret');
  await new Promise((r) => setImmediate(r));
  t.deepEqual(events, ['raw:true', 'out:"Password: "', 'raw:false', 'out:"\\n"']);
});

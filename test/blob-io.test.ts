import test from 'ava';
import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import { hashing } from '../registry/blob-io.js';

const sha = (b: Buffer): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;

/** source yields `parts` one by one and then ends, the way a file read stream would. */
const source = (parts: Buffer[]): Readable => Readable.from(parts, { objectMode: false });

/** readBytes reads exactly n bytes from a stream, the way a transport sends a Content-Length body. */
async function readBytes(stream: Readable, n: number): Promise<Buffer> {
  const got: Buffer[] = [];
  let have = 0;
  for await (const c of stream) {
    got.push(c as Buffer);
    have += (c as Buffer).length;
    if (have >= n) break; // leaving the loop destroys the stream, as undici does once the server answered
  }
  return Buffer.concat(got);
}

test('a transport that destroys the body after the announced bytes (before EOF) still gets their digest', async (t) => {
  const parts = [Buffer.from('some '), Buffer.from('blob bytes\n')];
  const all = Buffer.concat(parts);
  const h = hashing(source(parts), all.length);
  t.deepEqual(await readBytes(h.stream, all.length), all);
  t.true(h.stream.destroyed);
  t.deepEqual(await h.settled(), { digest: sha(all), size: all.length });
});

test('a body destroyed before all announced bytes passed is an error, never a digest of part of it', async (t) => {
  // The rest of the source never comes (a stalled disk): only 6 of the 13 announced bytes exist.
  const stalled = new Readable({ read() {} });
  stalled.push(Buffer.from('first '));
  const h = hashing(stalled, 13);
  await readBytes(h.stream, 1);
  await t.throwsAsync(h.settled(), { message: /ended before it was read to the end/ });
});

test('a source longer or shorter than announced fails with SIZE_MISMATCH', async (t) => {
  const long = hashing(source([Buffer.from('0123456789')]), 4);
  await t.throwsAsync(readBytes(long.stream, 10), { message: /longer than the 4 bytes announced/ });
  t.is(long.failure()?.code, 'SIZE_MISMATCH');
  const short = hashing(source([Buffer.from('012')]), 4);
  await t.throwsAsync(readBytes(short.stream, 4), { message: /has 3 bytes, 4 were announced/ });
  await t.throwsAsync(short.settled(), { message: /has 3 bytes/ });
});

test('without a size the digest is of everything read to the end; settled drains what a transport left', async (t) => {
  const parts = [Buffer.from('a'), Buffer.from('b'), Buffer.from('c')];
  const h = hashing(source(parts));
  // A transport takes one chunk and stops reading; settled reads the rest.
  await new Promise<void>((resolve) => {
    const onData = (): void => {
      h.stream.pause();
      h.stream.off('data', onData);
      resolve();
    };
    h.stream.on('data', onData);
  });
  t.deepEqual(await h.settled(), { digest: sha(Buffer.from('abc')), size: 3 });
});

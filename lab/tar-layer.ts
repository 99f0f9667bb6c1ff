import { createGzip } from 'node:zlib';
import tar from 'tar-stream';

/** TarEntry is one entry of a hand-built (possibly malicious) tar layer. */
export interface TarEntry {
  name: string;
  type?: 'file' | 'directory' | 'symlink' | 'link';
  linkname?: string;
  content?: string;
}

/** tarGz builds a tar+gzip layer in memory with tar-stream, entries exactly as given (no checks: tests feed hostile ones). */
export async function tarGz(entries: TarEntry[]): Promise<Buffer> {
  const pack = tar.pack();
  const chunks: Buffer[] = [];
  const out = new Promise<Buffer>((resolve, reject) => {
    const gz = pack.pipe(createGzip());
    gz.on('data', (c: Buffer) => chunks.push(c));
    gz.on('end', () => resolve(Buffer.concat(chunks)));
    gz.on('error', reject);
  });
  for (const e of entries) {
    await new Promise<void>((resolve, reject) => {
      const cb = (err?: Error | null): void => (err ? reject(err) : resolve());
      if ((e.type ?? 'file') === 'file') pack.entry({ name: e.name, mode: 0o644 }, e.content ?? 'x', cb);
      else pack.entry({ name: e.name, type: e.type, linkname: e.linkname, mode: 0o755 }, cb);
    });
  }
  pack.finalize();
  return out;
}

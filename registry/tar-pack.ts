import { createReadStream, promises as fsp, constants as C, type Stats } from 'node:fs';
import path from 'node:path';
import { pipeline, Readable } from 'node:stream';
import { createGzip } from 'node:zlib';
import tar from 'tar-stream';
import { RegfsError, ioError } from '../util/errors.js';
import { unpublishableReason } from './publishable.js';
import { checkTitle } from './safe-path.js';

/*
 * Directory layers, the ORAS way: oras-go's file store (content/file/utils.go `tarDirectory`) walks the
 * directory depth-first with entries sorted by name inside each directory (Go's filepath.Walk), names every
 * entry `<prefix>/<path relative to the directory>` where the prefix is the layer's title (the pushed
 * directory's name), starts with an entry for the directory itself named `<prefix>`, and clears
 * uid/gid/uname/gname. On pull it extracts into `<dir>/<title>` after checking each entry (and each link
 * target) lies under `<prefix>`. packDirectory and extractTar(..., { stripPrefix }) follow that layout.
 */

/** PackOptions tunes packDirectory. */
export interface PackOptions {
  /** prefix names the entries `<prefix>/...` (ORAS uses the layer title); default basename(dir). */
  prefix?: string;
  /**
   * publishableOnly packs only what registry/publishable.ts allows (staging's rule): symlinks, special files
   * and names pull would refuse are left out, and dir itself must not be a symlink.
   */
  publishableOnly?: boolean;
  /** omitNames are names left out at every depth: staging's reserved names (its tag marker) are never published. */
  omitNames?: readonly string[];
}

/** HeaderArg is what tar-stream's pack.entry takes. */
type HeaderArg = Parameters<tar.Pack['entry']>[0];

/** Sink is the writable tar-stream returns for one packed entry. */
type Sink = ReturnType<tar.Pack['entry']>;

const MAX_TAR_MTIME = 0o77777777777; // 11 octal digits; tar-stream also truncates to int32 seconds
const MAX_INT32 = 2 ** 31 - 1;

/** byteCompare orders strings by their UTF-8 bytes, as Go sorts directory names. */
function byteCompare(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8'));
}

function tarMtime(st: Stats): Date {
  const secs = Math.min(Math.max(Math.floor(st.mtimeMs / 1000), 0), Math.min(MAX_TAR_MTIME, MAX_INT32));
  return new Date(secs * 1000);
}

/** commonHeader is what every packed entry's header shares: name, mode & 0o7777, whole-second mtime, no owner. */
function commonHeader(name: string, st: Stats): { name: string; mode: number; mtime: Date; uid: number; gid: number; uname: string; gname: string } {
  return { name, mode: st.mode & 0o7777, mtime: tarMtime(st), uid: 0, gid: 0, uname: '', gname: '' };
}

/** waitDrain resolves once w drains, and rejects if it errors or closes first. */
function waitDrain(w: Sink): Promise<void> {
  return new Promise((resolve, reject) => {
    if (w.destroyed) {
      reject(new Error('tar entry closed early'));
      return;
    }
    const cleanup = (): void => {
      w.removeListener('drain', onDrain);
      w.removeListener('error', onError);
      w.removeListener('close', onClose);
    };
    const onDrain = (): void => {
      cleanup();
      resolve();
    };
    const onError = (err: unknown): void => {
      cleanup();
      reject(err);
    };
    const onClose = (): void => {
      cleanup();
      reject(new Error('tar entry closed early'));
    };
    w.on('drain', onDrain);
    w.on('error', onError);
    w.on('close', onClose);
  });
}

/** addEntry adds one header-only entry (directory, symlink) and waits until the packer accepted it. */
function addEntry(pack: tar.Pack, header: HeaderArg): Promise<void> {
  return new Promise((resolve, reject) => {
    // Errors reach the callback; the listener keeps a destroyed entry from crashing the process.
    pack.entry(header, (err) => (err ? reject(err) : resolve())).on('error', () => undefined);
  });
}

/** addFile streams one regular file into the packer, opened without following symlinks. */
async function addFile(pack: tar.Pack, abs: string, name: string): Promise<void> {
  const fh = await fsp.open(abs, C.O_RDONLY | C.O_NOFOLLOW);
  try {
    const st = await fh.stat();
    if (!st.isFile()) return; // replaced since the walk saw it
    const header: HeaderArg = { ...commonHeader(name, st), type: 'file', size: st.size };
    let sink!: Sink;
    const done = new Promise<void>((resolve, reject) => {
      sink = pack.entry(header, (err) => (err ? reject(err) : resolve()));
    });
    sink.on('error', () => undefined); // reported through the entry callback and waitDrain
    done.catch(() => undefined); // awaited below; this only keeps an early throw from leaving it unhandled
    if (st.size > 0) {
      const rs = createReadStream('', { fd: fh.fd, autoClose: false, start: 0, end: st.size - 1, highWaterMark: 64 * 1024 });
      for await (const chunk of rs as AsyncIterable<Buffer>) {
        if (!sink.write(chunk)) await waitDrain(sink);
      }
    }
    sink.end(undefined);
    await done;
  } finally {
    await fh.close().catch(() => undefined);
  }
}

/** walk adds dir's children depth-first, names sorted bytewise within each directory (Go's filepath.Walk order). */
async function walk(pack: tar.Pack, absDir: string, nameDir: string, opts: PackOptions): Promise<void> {
  const names = (
    await fsp.readdir(absDir).catch((err: unknown) => {
      throw ioError(`cannot pack ${JSON.stringify(absDir)}`, err);
    })
  ).sort(byteCompare);
  for (const child of names) {
    if (opts.omitNames?.includes(child)) continue;
    const abs = path.join(absDir, child);
    const name = `${nameDir}/${child}`;
    let st: Stats;
    try {
      st = await fsp.lstat(abs);
    } catch (err) {
      throw ioError(`cannot pack ${JSON.stringify(abs)}`, err);
    }
    if (opts.publishableOnly && unpublishableReason(child, st) !== undefined) continue;
    const common = commonHeader(name, st);
    if (st.isDirectory()) {
      await addEntry(pack, { ...common, type: 'directory', size: 0 });
      await walk(pack, abs, name, opts);
    } else if (st.isSymbolicLink()) {
      const linkname = await fsp.readlink(abs).catch((err: unknown) => {
        throw ioError(`cannot pack ${JSON.stringify(abs)}`, err);
      });
      await addEntry(pack, { ...common, type: 'symlink', size: 0, linkname });
    } else if (st.isFile()) {
      await addFile(pack, abs, name).catch((err: unknown) => {
        throw ioError(`cannot pack ${JSON.stringify(abs)}`, err);
      });
    }
    // sockets, fifos and devices are skipped
  }
}

/**
 * packDirectory streams a deterministic tar (ustar, pax where names need it) of dir the way ORAS packs a
 * pushed directory: a first entry `<prefix>` for dir itself, then `<prefix>/...` depth-first with names sorted
 * bytewise per directory; regular files (streamed), directories and symlinks (not followed); uid/gid 0, empty
 * uname/gname, mode & 0o7777, mtime in whole seconds. dir itself is followed if it is a symlink.
 */
export function packDirectory(dir: string, opts: PackOptions = {}): Readable {
  const pack = tar.pack();
  const run = async (): Promise<void> => {
    const root = path.resolve(dir);
    const prefix = checkTitle(opts.prefix ?? path.basename(root));
    const st = opts.publishableOnly ? await fsp.lstat(root) : await fsp.stat(root);
    if (!st.isDirectory()) throw new RegfsError('INVALID_ARGUMENT', `cannot pack ${JSON.stringify(dir)}: not a directory`);
    await addEntry(pack, { ...commonHeader(prefix, st), type: 'directory', size: 0 });
    await walk(pack, root, prefix, opts);
    pack.finalize();
  };
  run().catch((err: unknown) => {
    if (!pack.destroyed) pack.destroy(ioError(`cannot pack ${JSON.stringify(dir)}`, err));
  });
  return Readable.from(pack, { objectMode: false });
}

/** packDirectoryGzip is packDirectory piped through gzip; Node's gzip header carries mtime 0, so the output is deterministic. */
export function packDirectoryGzip(dir: string, opts: PackOptions = {}): Readable {
  return pipeline(packDirectory(dir, opts), createGzip(), () => undefined);
}

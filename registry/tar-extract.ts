import { createHash, randomBytes } from 'node:crypto';
import { promises as fsp, constants as C, type Stats } from 'node:fs';
import path from 'node:path';
import { pipeline, Readable, Transform, type TransformCallback } from 'node:stream';
import { createGunzip } from 'node:zlib';
import tar from 'tar-stream';
import { digestAlgorithm, type Digest } from './digest.js';
import { RegfsError, ioError, isRegfsError } from '../util/errors.js';
import { checkTitle, mkdirInside, resolveInside } from './safe-path.js';
import { fsyncDir, tempPathFor, writeAll, writeAtomic } from '../util/fs-atomic.js';

/*
 * Extracting directory layers the ORAS way (see tar-pack.ts for the layout): every entry, and every link
 * target, must lie under the layer's `<prefix>`; nothing is written through a symlink.
 */

/** ExtractOptions tunes extractTar and extractTarAtomic. */
export interface ExtractOptions {
  /** gzip gunzips the source first. */
  gzip?: boolean;
  /** stripPrefix requires every entry to be `<prefix>` or under `<prefix>/` and removes that prefix. */
  stripPrefix?: string;
  /** tarDigest, when set, is checked against the uncompressed tar stream (ORAS's `io.deis.oras.content.digest`). */
  tarDigest?: Digest;
  /**
   * onUnsafeEntry, when set, makes an unsafe entry (a name or link target that would leave dest, an
   * unknown hard-link target, a path through a symlink) skipped instead of aborting the extraction:
   * nothing of it is written, the rest is extracted, and it is reported here (name, reason). The mount
   * uses it; pull does not (it refuses the layer, as oras does).
   */
  onUnsafeEntry?: (name: string, reason: string) => void;
}

/** ExtractResult counts what an extraction wrote. */
export interface ExtractResult {
  /** files counts regular files written (hard links, which are copied, included). */
  files: number;
  /** bytes counts the content bytes of those files. */
  bytes: number;
}

/** EntrySource is one entry tar-stream's extractor yields (header plus content stream). */
type EntrySource = tar.Extract extends AsyncIterable<infer S> ? S : never;

function unsafeEntry(name: string, reason: string): RegfsError {
  const shown = JSON.stringify(name.length > 80 ? name.slice(0, 80) + '…' : name);
  return new RegfsError('UNSAFE_PATH', `unsafe tar entry ${shown}: ${reason}`);
}

/** reasonOf strips the `unsafe path "<name>": ` lead from an UNSAFE_PATH message, leaving the reason. */
function reasonOf(err: RegfsError): string {
  return err.message.replace(/^unsafe (?:path|tar entry) "(?:[^"\\]|\\.)*": /, '');
}

/** stripDotSlash removes leading `./` from an entry name (`tar -C dir .` style archives). */
function stripDotSlash(name: string): string {
  let n = name;
  while (n.startsWith('./')) n = n.slice(2);
  return n;
}

/**
 * entryPath maps a raw entry name to a checked path relative to dest, or '' for dest itself.
 * It throws UNSAFE_PATH for names checkTitle refuses or (with a prefix) names outside it.
 */
function entryPath(raw: string, prefix: string | undefined): string {
  const stripped = stripDotSlash(raw);
  let rel: string;
  if (stripped === '' || stripped === '.' || /^\/*$/.test(stripped)) {
    if (raw.startsWith('/')) throw unsafeEntry(raw, 'absolute path');
    rel = '';
  } else {
    try {
      rel = checkTitle(stripped);
    } catch (err) {
      if (isRegfsError(err, 'UNSAFE_PATH')) throw unsafeEntry(raw, reasonOf(err));
      throw err;
    }
  }
  if (prefix === undefined || rel === '') return rel;
  if (rel === prefix) return '';
  if (rel.startsWith(prefix + '/')) return rel.slice(prefix.length + 1);
  throw unsafeEntry(raw, `not under the layer prefix ${JSON.stringify(prefix)}`);
}

/**
 * checkSymlinkTarget allows only a relative target that stays inside dest when resolved against the link's
 * directory. `..` may only lead the target: after a name component it could climb out through a symlink
 * (`s -> .`, `t -> s/../x`), which a lexical check cannot see.
 */
function checkSymlinkTarget(raw: string, rel: string, target: string): void {
  if (target === '') throw unsafeEntry(raw, 'symlink with an empty target');
  if (/[\u0000-\u001f\u007f-\u009f\\]/.test(target)) throw unsafeEntry(raw, 'symlink target contains a control character or backslash');
  if (target.startsWith('/')) throw unsafeEntry(raw, `symlink target ${JSON.stringify(target)} is absolute`);
  let seenName = false;
  for (const seg of target.split('/')) {
    if (seg === '' || seg === '.') continue;
    if (seg === '..') {
      if (seenName) throw unsafeEntry(raw, `symlink target ${JSON.stringify(target)} has '..' after a name`);
    } else {
      seenName = true;
    }
  }
  const resolved = path.posix.normalize(path.posix.join(path.posix.dirname(rel === '' ? '.' : rel), target));
  if (resolved === '..' || resolved.startsWith('../') || path.posix.isAbsolute(resolved)) {
    throw unsafeEntry(raw, `symlink target ${JSON.stringify(target)} points outside the destination`);
  }
}

/** chunks views a tar entry's content as the Buffers tar-stream yields. */
function chunks(entry: AsyncIterable<unknown>): AsyncIterable<Buffer> {
  return entry as AsyncIterable<Buffer>;
}

/** drain reads an entry to its end. */
async function drain(entry: AsyncIterable<unknown>): Promise<void> {
  for await (const _chunk of entry) {
    // discard
  }
}

/** placeFile writes a new regular file at abs: exclusive, no-follow temp file beside it, then rename (not fsynced: extractTarAtomic syncs the directory once). */
async function placeFile(abs: string, mode: number, mtime: Date | undefined, fill: (fh: fsp.FileHandle) => Promise<void>): Promise<void> {
  await writeAtomic(
    abs,
    async (fh) => {
      await fill(fh);
      await fh.chmod(mode & 0o777);
      if (mtime) await fh.utimes(mtime, mtime).catch(() => undefined);
    },
    { durable: false },
  );
}

/**
 * extractTar safely unpacks a tar (optionally gzipped) into dest, creating dest if missing. Every entry name
 * is checked with checkTitle (leading `./` removed) and, with stripPrefix, must be `<prefix>` or under
 * `<prefix>/`, which is removed. Directories are made with mkdirInside; files go to an O_EXCL|O_NOFOLLOW temp
 * file renamed into place, mode & 0o777; symlinks must be relative and stay inside dest; hard links must name
 * a file this extraction already wrote and are copied; devices and fifos are skipped; nothing is ever written
 * through an existing symlink (resolveInside on every entry). The first unsafe entry aborts with UNSAFE_PATH,
 * and what was extracted so far stays in dest: callers needing all-or-nothing use extractTarAtomic, which
 * extracts into a fresh temp directory and renames it over the target only on success.
 */
export async function extractTar(src: Readable, dest: string, opts: ExtractOptions = {}): Promise<ExtractResult> {
  let prefix: string | undefined;
  if (opts.stripPrefix !== undefined) {
    try {
      prefix = checkTitle(opts.stripPrefix);
    } catch (err) {
      src.destroy();
      throw new RegfsError('INVALID_ARGUMENT', `invalid stripPrefix: ${(err as Error).message}`, { cause: err });
    }
  }
  const root = path.resolve(dest);
  try {
    await fsp.mkdir(root, { recursive: true });
  } catch (err) {
    src.destroy();
    throw ioError(`cannot create ${JSON.stringify(dest)}`, err);
  }

  const hash = opts.tarDigest ? createHash(digestAlgorithm(opts.tarDigest)) : undefined;
  const hasher = new Transform({
    transform(chunk: Buffer, _enc, cb: TransformCallback) {
      hash?.update(chunk);
      cb(null, chunk);
    },
  });
  const ex = tar.extract();
  let input!: Readable;
  const inputDone = new Promise<void>((resolve, reject) => {
    const onDone = (err: NodeJS.ErrnoException | null | undefined): void => {
      if (err) {
        if (!ex.destroyed) ex.destroy(err);
        reject(err);
      } else {
        resolve();
      }
    };
    input = opts.gzip ? pipeline(src, createGunzip(), hasher, onDone) : pipeline(src, hasher, onDone);
  });
  inputDone.catch(() => undefined); // awaited on success; on failure the extractor's own error is reported
  // Take the iterator before any data flows: tar-stream only queues entries for an iterator that exists.
  const entries = ex[Symbol.asyncIterator]();
  input.pipe(ex);

  const result: ExtractResult = { files: 0, bytes: 0 };
  const written = new Set<string>(); // regular files this extraction wrote, relative to root
  const dirs: { abs: string; mode: number; mtime?: Date }[] = [];
  const links: { abs: string; mtime: Date }[] = [];
  const extractEntry = async (entry: EntrySource): Promise<void> => {
    const h = entry.header;
    const raw = h.name;
    const rel = entryPath(raw, prefix);
    const mode = h.mode ?? 0o644;
    switch (h.type) {
      case 'directory': {
        const abs = await mkdirInside(root, rel);
        dirs.push({ abs, mode, mtime: h.mtime });
        await drain(entry);
        break;
      }
      case 'file':
      case 'contiguous-file': {
        if (rel === '') throw unsafeEntry(raw, 'a file entry in place of the destination directory');
        await mkdirInside(root, path.posix.dirname(rel));
        const abs = await resolveInside(root, rel);
        let n = 0;
        await placeFile(abs, mode, h.mtime, async (fh) => {
          for await (const chunk of chunks(entry)) {
            await writeAll(fh, chunk);
            n += chunk.length;
          }
        });
        written.add(rel);
        result.files++;
        result.bytes += n;
        break;
      }
      case 'symlink': {
        if (rel === '') throw unsafeEntry(raw, 'a symlink in place of the destination directory');
        checkSymlinkTarget(raw, rel, h.linkname ?? '');
        await mkdirInside(root, path.posix.dirname(rel));
        const abs = await resolveInside(root, rel);
        await drain(entry);
        await fsp.symlink(h.linkname ?? '', abs);
        written.delete(rel);
        if (h.mtime) links.push({ abs, mtime: h.mtime });
        break;
      }
      case 'link': {
        if (rel === '') throw unsafeEntry(raw, 'a hard link in place of the destination directory');
        const linkRaw = h.linkname ?? '';
        let srcRel: string;
        try {
          srcRel = entryPath(linkRaw, prefix);
        } catch (err) {
          if (isRegfsError(err, 'UNSAFE_PATH')) throw unsafeEntry(raw, `hard link target ${JSON.stringify(linkRaw)}: ${reasonOf(err)}`);
          throw err;
        }
        if (!written.has(srcRel)) {
          throw unsafeEntry(raw, `hard link target ${JSON.stringify(linkRaw)} is not a file extracted earlier from this archive`);
        }
        const srcAbs = await resolveInside(root, srcRel);
        await mkdirInside(root, path.posix.dirname(rel));
        const abs = await resolveInside(root, rel);
        await drain(entry);
        const sfh = await fsp.open(srcAbs, C.O_RDONLY | C.O_NOFOLLOW);
        let n = 0;
        try {
          const st = await sfh.stat();
          if (!st.isFile()) throw unsafeEntry(raw, 'hard link target is not a regular file');
          const buf = Buffer.allocUnsafe(64 * 1024);
          await placeFile(abs, st.mode, st.mtime, async (fh) => {
            for (;;) {
              const { bytesRead } = await sfh.read(buf, 0, buf.length, n);
              if (bytesRead === 0) break;
              await writeAll(fh, buf.subarray(0, bytesRead));
              n += bytesRead;
            }
          });
        } finally {
          await sfh.close().catch(() => undefined);
        }
        written.add(rel);
        result.files++;
        result.bytes += n;
        break;
      }
      default:
        // character/block devices, fifos and unknown type flags (GNU sparse, volume labels...) are skipped
        await drain(entry);
    }
  };

  try {
    for await (const entry of { [Symbol.asyncIterator]: () => entries }) {
      const raw = entry.header.name;
      try {
        await extractEntry(entry);
      } catch (err) {
        if (isRegfsError(err, 'UNSAFE_PATH') && opts.onUnsafeEntry) {
          // Every unsafe check runs before the entry's content is read or anything of it is written.
          await drain(entry);
          opts.onUnsafeEntry(raw, reasonOf(err));
          continue;
        }
        // Name the tar entry, not the intermediate path mkdirInside/resolveInside saw.
        if (isRegfsError(err, 'UNSAFE_PATH') && !err.message.startsWith('unsafe tar entry')) throw unsafeEntry(raw, reasonOf(err));
        throw err;
      }
    }
    await inputDone;
    // Directory modes and times last: children are in place, and deeper directories go first.
    for (const d of dirs.sort((a, b) => b.abs.length - a.abs.length)) {
      await fsp.chmod(d.abs, (d.mode & 0o777) | 0o700);
      if (d.mtime) await fsp.utimes(d.abs, d.mtime, d.mtime).catch(() => undefined);
    }
    for (const l of links) await fsp.lutimes(l.abs, l.mtime, l.mtime).catch(() => undefined);
    if (hash && opts.tarDigest) {
      const actual = `${digestAlgorithm(opts.tarDigest)}:${hash.digest('hex')}`;
      if (actual !== opts.tarDigest) {
        throw new RegfsError('DIGEST_MISMATCH', `tar digest mismatch: expected ${opts.tarDigest}, got ${actual}`);
      }
    }
    return result;
  } catch (err) {
    input.unpipe(ex);
    if (!ex.destroyed) ex.destroy();
    if (!input.destroyed) input.destroy();
    throw ioError(`cannot extract into ${JSON.stringify(dest)}`, err);
  }
}

/**
 * extractTarAtomic extracts into a fresh sibling `.<name>.<random>.part` directory, then renames it over
 * target (an existing target directory is first moved aside to `.<name>.<random>.old` and removed after).
 * On any failure the temp directory is removed and target is left untouched. A target that exists but is not
 * a directory is refused. Between the two renames target is briefly absent.
 */
export async function extractTarAtomic(src: Readable, target: string, opts: ExtractOptions = {}): Promise<ExtractResult> {
  const abs = path.resolve(target);
  const parent = path.dirname(abs);
  const tmp = tempPathFor(abs);
  try {
    await fsp.mkdir(tmp);
  } catch (err) {
    src.destroy();
    throw ioError(`cannot create ${JSON.stringify(tmp)}`, err);
  }
  let result: ExtractResult;
  try {
    result = await extractTar(src, tmp, opts);
    await replaceDir(tmp, abs, target);
  } catch (err) {
    await fsp.rm(tmp, { recursive: true, force: true }).catch(() => undefined);
    throw ioError(`cannot extract into ${JSON.stringify(target)}`, err);
  }
  await fsyncDir(parent).catch(() => undefined);
  return result;
}

/**
 * replaceDir renames the directory tmp to abs (same file system): an existing directory at abs is moved
 * aside first and removed after; a symlink or non-directory at abs is refused (tmp is left for the caller).
 */
export async function replaceDir(tmp: string, abs: string, shown: string = abs): Promise<void> {
  let existing: Stats | undefined;
  try {
    existing = await fsp.lstat(abs);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw ioError(`cannot inspect ${JSON.stringify(shown)}`, err);
  }
  if (existing === undefined) {
    await fsp.rename(tmp, abs);
  } else if (existing.isSymbolicLink()) {
    throw new RegfsError('UNSAFE_PATH', `refusing to replace ${JSON.stringify(shown)}: it is a symbolic link`);
  } else if (!existing.isDirectory()) {
    throw new RegfsError('IO', `refusing to replace ${JSON.stringify(shown)}: it exists and is not a directory`);
  } else {
    const old = path.join(path.dirname(abs), `.${path.basename(abs)}.${randomBytes(6).toString('hex')}.old`);
    await fsp.rename(abs, old);
    try {
      await fsp.rename(tmp, abs);
    } catch (err) {
      await fsp.rename(old, abs).catch(() => undefined);
      throw err;
    }
    await fsp.rm(old, { recursive: true, force: true }).catch(() => undefined);
  }
}

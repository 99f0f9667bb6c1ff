import { createHash } from 'node:crypto';
import { constants as C, createReadStream, promises as fsp } from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import { digestOf, type Digest } from './digest.js';
import { isMediaType, type Descriptor } from './descriptor.js';
import { RegfsError } from '../util/errors.js';
import { Annotation, EMPTY_CONFIG, MediaType } from './media-types.js';
import { checkTitle } from './safe-path.js';
import type { BlobSource } from './storage.js';
import { packDirectory, packDirectoryGzip } from './tar-pack.js';

/** FileArg is one `FILE[:TYPE]` argument of push. */
export interface FileArg {
  path: string;
  mediaType?: string;
}

/**
 * parseFileArg splits `path:media/type`; the suffix counts as a type only when it looks like one. A trailing
 * colon means an empty media type (ORAS's way to push a file whose name has a colon: `hi:txt:` is `hi:txt`).
 */
export function parseFileArg(arg: string): FileArg {
  const i = arg.lastIndexOf(':');
  if (i > 0 && i === arg.length - 1) return { path: arg.slice(0, i) };
  if (i > 0) {
    const t: string = arg.slice(i + 1);
    if (t.includes('/')) {
      if (isMediaType(t)) return { path: arg.slice(0, i), mediaType: t };
      throw new RegfsError('INVALID_ARGUMENT', `invalid media type ${JSON.stringify(t)} in ${JSON.stringify(arg)}: expected type/subtype`);
    }
  }
  return { path: arg };
}

/** PreparedBlob is a blob ready to upload: its descriptor, a display name and a way to (re)open its bytes. */
export interface PreparedBlob {
  name: string;
  desc: Descriptor;
  open: BlobSource;
}

/** PackedArtifact is everything push uploads: config, layers and the manifest bytes. */
export interface PackedArtifact {
  config: PreparedBlob;
  layers: PreparedBlob[];
  manifest: Buffer;
  mediaType: string;
  artifactType?: string;
}

/** PackOptions are push's inputs, following ORAS's flags. */
export interface PackOptions {
  files: FileArg[];
  /** config is `--config FILE[:TYPE]` (also spelled `--manifest-config`). */
  config?: FileArg;
  artifactType?: string;
  /** annotations are `-a KEY=VALUE` manifest annotations. */
  annotations?: Record<string, string>;
  /** annotationFile is ORAS's JSON file: `$manifest`, `$config` and per-title keys. */
  annotationFile?: string;
  /** cwd resolves relative file paths (default process.cwd()). */
  cwd?: string;
  /** allowAbsolute is ORAS's --disable-path-validation: an absolute file path is kept as its title. */
  allowAbsolute?: boolean;
}

type AnnotationFile = Record<string, Record<string, string>>;

async function readAnnotationFile(file: string): Promise<AnnotationFile> {
  let raw: unknown;
  try {
    raw = JSON.parse(await fsp.readFile(file, 'utf8'));
  } catch (err) {
    throw new RegfsError('INVALID_ARGUMENT', `annotation file ${file} is not readable JSON: ${(err as Error).message}`);
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new RegfsError('INVALID_ARGUMENT', `annotation file ${file} must be a JSON object`);
  const out: AnnotationFile = {};
  for (const [k, v] of Object.entries(raw)) {
    if (typeof v !== 'object' || v === null || Array.isArray(v) || Object.values(v).some((x) => typeof x !== 'string')) {
      throw new RegfsError('INVALID_ARGUMENT', `annotation file ${file}: "${k}" must map keys to string values`);
    }
    out[k] = v as Record<string, string>;
  }
  return out;
}

/** hashStream returns the sha256 digest and length of a stream. */
export async function hashStream(s: Readable): Promise<{ digest: Digest; size: number }> {
  const h = createHash('sha256');
  let size = 0;
  for await (const c of s) {
    h.update(c as Buffer);
    size += (c as Buffer).length;
  }
  return { digest: `sha256:${h.digest('hex')}`, size };
}

/** titleFor turns a push path into its ORAS title: cleaned, slash-separated, relative; absolute or escaping paths are refused. */
export function titleFor(p: string, allowAbsolute = false): string {
  const cleaned = path.posix.normalize(p.split(path.sep).join('/')).replace(/\/+$/, '');
  if (allowAbsolute && path.posix.isAbsolute(cleaned) && cleaned !== '/') return cleaned;
  if (path.posix.isAbsolute(cleaned)) {
    throw new RegfsError('UNSAFE_PATH', `file ${JSON.stringify(p)} is absolute: push it from its directory with a relative path (titles are relative paths)`);
  }
  return checkTitle(cleaned);
}

/** OpenedFile is a regular file opened once (openRegularFile): every read of its bytes goes through this descriptor. */
export interface OpenedFile {
  handle: fsp.FileHandle;
  /** size, mtimeMs, ctimeMs, dev and ino are fstat's, taken when it was opened. */
  size: number;
  mtimeMs: number;
  ctimeMs: number;
  dev: number;
  ino: number;
  /** open streams its bytes from offset 0 (through the descriptor, which stays open), as often as asked. */
  open(): Readable;
  close(): Promise<void>;
}

/**
 * openRegularFile opens abs with O_NOFOLLOW (a symlink swapped in is refused, never followed), checks with fstat
 * that it is a regular file and, when `expect` is given, the very file a scan saw (same device and inode).
 * It throws RegfsError('CONFLICT') when the path now names something else.
 */
export async function openRegularFile(abs: string, expect?: { dev: number; ino: number }): Promise<OpenedFile> {
  let handle: fsp.FileHandle;
  try {
    handle = await fsp.open(abs, C.O_RDONLY | C.O_NOFOLLOW | C.O_NONBLOCK);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ELOOP') throw new RegfsError('CONFLICT', `${JSON.stringify(abs)} is now a symlink; it is not followed`);
    if (code === 'ENOENT') throw new RegfsError('CONFLICT', `${JSON.stringify(abs)} vanished`);
    throw err;
  }
  try {
    const st = await handle.stat();
    if (!st.isFile()) throw new RegfsError('CONFLICT', `${JSON.stringify(abs)} is no longer a regular file`);
    if (expect && (st.dev !== expect.dev || st.ino !== expect.ino)) throw new RegfsError('CONFLICT', `${JSON.stringify(abs)} was replaced since it was scanned`);
    return {
      handle,
      size: st.size,
      mtimeMs: st.mtimeMs,
      ctimeMs: st.ctimeMs,
      dev: st.dev,
      ino: st.ino,
      open: () => handle.createReadStream({ start: 0, autoClose: false, highWaterMark: 1024 * 1024 }),
      close: () => handle.close().catch(() => undefined),
    };
  } catch (err) {
    await handle.close().catch(() => undefined);
    throw err;
  }
}

/** prepareFile hashes one file or directory (a directory becomes a tar+gzip layer with the unpack annotation; `pack` tunes its tar). */
export async function prepareFile(arg: FileArg, cwd: string, extra?: Record<string, string>, pack: { publishableOnly?: boolean; allowAbsolute?: boolean; omitNames?: readonly string[] } = {}): Promise<PreparedBlob> {
  const title = titleFor(arg.path, pack.allowAbsolute);
  const abs = path.resolve(cwd, arg.path);
  let st;
  try {
    st = await fsp.stat(abs);
  } catch {
    throw new RegfsError('NOT_FOUND', `file ${JSON.stringify(arg.path)} not found`);
  }
  if (st.isDirectory()) {
    if (!pack.publishableOnly) await refuseUnsafeLinks(abs, arg.path);
    const tarInfo = await hashStream(packDirectory(abs, { prefix: title, ...pack }));
    const gz = await hashStream(packDirectoryGzip(abs, { prefix: title, ...pack }));
    return {
      name: title,
      desc: {
        mediaType: arg.mediaType ?? MediaType.ociLayerTarGzip,
        digest: gz.digest,
        size: gz.size,
        annotations: { [Annotation.title]: title, [Annotation.digestAnnotation]: tarInfo.digest, [Annotation.unpack]: 'true', ...extra },
      },
      open: () => packDirectoryGzip(abs, { prefix: title, ...pack }),
    };
  }
  if (!st.isFile()) throw new RegfsError('INVALID_ARGUMENT', `${JSON.stringify(arg.path)} is not a regular file or directory`);
  const { digest, size } = await hashStream(createReadStream(abs));
  return {
    name: title,
    desc: { mediaType: arg.mediaType ?? MediaType.ociLayerTar, digest, size, annotations: { [Annotation.title]: title, ...extra } },
    open: () => createReadStream(abs),
  };
}

/** packArtifact builds an ORAS-compatible artifact from files: one layer per file, the empty config unless one is given. */
export async function packArtifact(opts: PackOptions): Promise<PackedArtifact> {
  const cwd = opts.cwd ?? process.cwd();
  const af = opts.annotationFile ? await readAnnotationFile(opts.annotationFile) : {};
  const seen = new Set<string>();
  const layers: PreparedBlob[] = [];
  for (const f of opts.files) {
    const title = titleFor(f.path, opts.allowAbsolute);
    if (seen.has(title)) throw new RegfsError('INVALID_ARGUMENT', `file ${JSON.stringify(title)} is given twice`);
    seen.add(title);
    layers.push(await prepareFile(f, cwd, af[title], { allowAbsolute: opts.allowAbsolute }));
  }
  for (const key of Object.keys(af)) {
    if (key !== '$manifest' && key !== '$config' && !seen.has(key)) {
      throw new RegfsError('INVALID_ARGUMENT', `annotation file names ${JSON.stringify(key)}, which is not among the files pushed`);
    }
  }
  let config: PreparedBlob;
  let artifactType = opts.artifactType;
  if (opts.config) {
    const abs = path.resolve(cwd, opts.config.path);
    let bytes: Buffer;
    try {
      bytes = await fsp.readFile(abs);
    } catch {
      throw new RegfsError('NOT_FOUND', `config file ${JSON.stringify(opts.config.path)} not found`);
    }
    config = {
      name: opts.config.path,
      desc: { mediaType: opts.config.mediaType ?? MediaType.unknownConfig, digest: digestOf(bytes), size: bytes.length, ...(af.$config ? { annotations: af.$config } : {}) },
      open: () => Readable.from([bytes]),
    };
  } else {
    const bytes = Buffer.from('{}');
    config = {
      name: 'config',
      desc: { ...EMPTY_CONFIG_DESCRIPTOR, ...(af.$config ? { annotations: af.$config } : {}) },
      open: () => Readable.from([bytes]),
    };
    artifactType ??= MediaType.unknownArtifact;
  }
  if (artifactType !== undefined && !isMediaType(artifactType)) {
    throw new RegfsError('INVALID_ARGUMENT', `invalid --artifact-type ${JSON.stringify(artifactType)}: expected type/subtype`);
  }
  const manifest = buildManifest({ config: config.desc, layers: layers.map((l) => l.desc), artifactType, annotations: { ...af.$manifest, ...opts.annotations } });
  return { config, layers, manifest, mediaType: MediaType.ociManifest, artifactType };
}

/** EMPTY_CONFIG_DESCRIPTOR is the ORAS empty config, with its bytes inline. */
export const EMPTY_CONFIG_DESCRIPTOR: Descriptor = { mediaType: EMPTY_CONFIG.mediaType, digest: EMPTY_CONFIG.digest, size: EMPTY_CONFIG.size, data: EMPTY_CONFIG.data };

/** buildManifest serialises an OCI image manifest the way ORAS does; no layers gives the one empty layer ORAS uses. */
export function buildManifest(m: { config: Descriptor; layers: Descriptor[]; artifactType?: string; annotations?: Record<string, string> }): Buffer {
  const annotations = m.annotations ?? {};
  const manifest: Record<string, unknown> = {
    schemaVersion: 2,
    mediaType: MediaType.ociManifest,
    ...(m.artifactType ? { artifactType: m.artifactType } : {}),
    config: m.config,
    layers: m.layers.length ? m.layers : [EMPTY_CONFIG_DESCRIPTOR],
    ...(Object.keys(annotations).length ? { annotations } : {}),
  };
  return Buffer.from(JSON.stringify(manifest));
}

/** parseAnnotationArgs turns `KEY=VALUE` strings into a map, refusing a missing `=`. */
export function parseAnnotationArgs(args: string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const a of args) {
    const i = a.indexOf('=');
    if (i <= 0) throw new RegfsError('INVALID_ARGUMENT', `invalid annotation ${JSON.stringify(a)}: expected KEY=VALUE`);
    out[a.slice(0, i)] = a.slice(i + 1);
  }
  return out;
}

/**
 * refuseUnsafeLinks walks a directory about to be pushed and refuses (UNSAFE_PATH) a symlink whose target is
 * absolute or leaves the directory: pull (oras's and regfs's) refuses such a layer, and the mount hides the entry.
 */
async function refuseUnsafeLinks(absDir: string, shown: string, rel = ''): Promise<void> {
  for (const ent of await fsp.readdir(path.join(absDir, rel), { withFileTypes: true })) {
    const relPath = rel ? `${rel}/${ent.name}` : ent.name;
    if (ent.isDirectory()) await refuseUnsafeLinks(absDir, shown, relPath);
    else if (ent.isSymbolicLink()) {
      const target = await fsp.readlink(path.join(absDir, relPath));
      const resolved = path.posix.normalize(path.posix.join(path.posix.dirname(relPath), target));
      if (path.posix.isAbsolute(target) || resolved === '..' || resolved.startsWith('../')) {
        const entry = path.posix.join(shown.replace(/\/+$/, ''), relPath);
        throw new RegfsError('UNSAFE_PATH', `${entry} is a symlink to ${JSON.stringify(target)}, outside the pushed directory; pull would refuse it: replace it with a relative link inside the directory or remove it`);
      }
    }
  }
}

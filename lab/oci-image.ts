import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { gzipSync } from 'node:zlib';
import tar from 'tar-stream';

const exec = promisify(execFile);

/** ImageEntry is one tar entry of a hand-built image layer, headers as given (tests feed whiteouts and hostile names). */
export interface ImageEntry {
  name: string;
  type?: 'file' | 'directory' | 'symlink' | 'link';
  linkname?: string;
  content?: Buffer | string;
  mode?: number;
  uid?: number;
  gid?: number;
  mtime?: Date;
}

/** BuiltLayer is a layer's compressed bytes, its digest and its diff_id. */
export interface BuiltLayer {
  gz: Buffer;
  digest: string;
  diffId: string;
  /** annotations go on the layer's descriptor (an eStargz layer's TOC digest). */
  annotations?: Record<string, string>;
}

const sha = (b: Buffer | string): string => createHash('sha256').update(b).digest('hex');

/** TarHeader is a tar-stream entry header. */
export type TarHeader = Partial<tar.Header> & { name: string };

/** entryTar is an image entry as tar-stream takes it: the header (with the lab's defaults) and a file's content. */
export function entryTar(e: ImageEntry): { header: TarHeader & { mode: number; mtime: Date }; content?: Buffer } {
  const type = e.type ?? 'file';
  const header = {
    name: e.name,
    type,
    linkname: e.linkname,
    mode: e.mode ?? (type === 'directory' ? 0o755 : 0o644),
    uid: e.uid ?? 0,
    gid: e.gid ?? 0,
    mtime: e.mtime ?? new Date('2024-01-02T03:04:05Z'),
  };
  if (type !== 'file') return { header };
  return { header, content: typeof e.content === 'string' ? Buffer.from(e.content) : (e.content ?? Buffer.alloc(0)) };
}

/** packTar packs entries (header and optional content each) into one tar with tar-stream, end-of-archive blocks included. */
export async function packTar(items: Iterable<{ header: TarHeader; content?: Buffer }>): Promise<Buffer> {
  const pack = tar.pack();
  const chunks: Buffer[] = [];
  const done = new Promise<Buffer>((resolve, reject) => {
    pack.on('data', (c: unknown) => void chunks.push(c as Buffer));
    pack.on('end', () => resolve(Buffer.concat(chunks)));
    pack.on('error', reject);
  });
  for (const { header, content } of items) {
    await new Promise<void>((resolve, reject) => {
      const cb = (err?: Error | null): void => (err ? reject(err) : resolve());
      if (content) pack.entry(header, content, cb);
      else pack.entry(header, cb);
    });
  }
  pack.finalize();
  return done;
}

/** tarLayer packs entries into a tar with tar-stream and gzips it (level 1 by default: fast, fine for compressible data). */
export async function tarLayer(entries: Iterable<ImageEntry>, level = 1): Promise<BuiltLayer> {
  const raw = await packTar([...entries].map(entryTar));
  const gz = gzipSync(raw, { level });
  return { gz, digest: `sha256:${sha(gz)}`, diffId: `sha256:${sha(raw)}` };
}

/**
 * writeOciImage writes (or adds to) an OCI image layout at dir with one image tagged `tag` made of layers
 * (lowest first): blobs, a config with the diff_ids, a manifest and index.json; returns the manifest digest.
 */
export async function writeOciImage(dir: string, tag: string, layers: BuiltLayer[], prior: { tag: string; manifest: Buffer }[] = []): Promise<{ digest: string; manifest: Buffer }> {
  await mkdir(path.join(dir, 'blobs/sha256'), { recursive: true });
  const put = async (b: Buffer): Promise<string> => {
    const hex = sha(b);
    await writeFile(path.join(dir, 'blobs/sha256', hex), b);
    return `sha256:${hex}`;
  };
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', config: {}, rootfs: { type: 'layers', diff_ids: layers.map((l) => l.diffId) } }));
  const configDigest = await put(config);
  for (const l of layers) await put(l.gz);
  const manifest = Buffer.from(JSON.stringify({
    schemaVersion: 2,
    mediaType: 'application/vnd.oci.image.manifest.v1+json',
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: configDigest, size: config.length },
    layers: layers.map((l) => ({ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: l.digest, size: l.gz.length, ...(l.annotations ? { annotations: l.annotations } : {}) })),
  }));
  const digest = await put(manifest);
  const all = [...prior, { tag, manifest }];
  const index = {
    schemaVersion: 2,
    manifests: all.map((m) => ({ mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: `sha256:${sha(m.manifest)}`, size: m.manifest.length, annotations: { 'org.opencontainers.image.ref.name': m.tag } })),
  };
  await writeFile(path.join(dir, 'index.json'), JSON.stringify(index));
  await writeFile(path.join(dir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  return { digest, manifest };
}

/** skopeoPush copies `oci:dir:tag` to `host/ref` over plain HTTP. */
export async function skopeoPush(dir: string, tag: string, host: string, ref: string): Promise<void> {
  await exec('skopeo', ['--insecure-policy', 'copy', '--all', '--quiet', '--dest-tls-verify=false', `oci:${dir}:${tag}`, `docker://${host}/${ref}`], { maxBuffer: 16 * 1024 * 1024 });
}

/** umociUnpack unpacks `dir:tag` into bundle (the tree lands in bundle/rootfs). */
export async function umociUnpack(dir: string, tag: string, bundle: string): Promise<void> {
  await exec('umoci', ['unpack', '--image', `${dir}:${tag}`, bundle], { maxBuffer: 16 * 1024 * 1024 });
}

/** writeOciIndex adds an image index (one linux/amd64 entry per given manifest) tagged `tag` to the layout; `all` are every tag's entries for index.json. */
export async function writeOciIndex(dir: string, tag: string, manifest: Buffer, prior: { tag: string; manifest: Buffer }[]): Promise<void> {
  const index = Buffer.from(JSON.stringify({
    schemaVersion: 2,
    mediaType: 'application/vnd.oci.image.index.v1+json',
    manifests: [{ mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: `sha256:${sha(manifest)}`, size: manifest.length, platform: { os: 'linux', architecture: 'amd64' } }],
  }));
  await writeFile(path.join(dir, 'blobs/sha256', sha(index)), index);
  const top = {
    schemaVersion: 2,
    manifests: [
      ...prior.map((m) => ({ mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: `sha256:${sha(m.manifest)}`, size: m.manifest.length, annotations: { 'org.opencontainers.image.ref.name': m.tag } })),
      { mediaType: 'application/vnd.oci.image.index.v1+json', digest: `sha256:${sha(index)}`, size: index.length, annotations: { 'org.opencontainers.image.ref.name': tag } },
    ],
  };
  await writeFile(path.join(dir, 'index.json'), JSON.stringify(top));
}

import type { Command } from 'commander';
import { readFile } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { writeStreamAtomic } from '../../util/fs-atomic.js';
import { RegfsError } from '../../util/errors.js';
import { isDigest } from '../../registry/digest.js';
import { parsePlatform, platformMatches, type Descriptor } from '../../registry/descriptor.js';
import { MANIFEST_MEDIA_TYPES } from '../../registry/media-types.js';
import { entryFor, editIndex, indexBytes } from '../../registry/index-build.js';
import { isTag, referenceString, type Reference } from '../../registry/reference.js';
import type { FetchedManifest, Repository } from '../../registry/storage.js';
import { addRemoteOptions, requireTagOrDigest, type Context } from '../context.js';
import { alsoText, deleteManifestConfirmed } from '../confirm.js';
import { action } from '../run.js';

const REF_HELP = 'host[:port]/repo:tag or @digest, or oci:DIR:tag';

/** readInput reads a file, or standard input for `-`. */
export async function readInput(file: string): Promise<Buffer> {
  if (file !== '-') return readFile(file);
  const parts: Buffer[] = [];
  for await (const c of process.stdin) parts.push(c as Buffer);
  return Buffer.concat(parts);
}

/** writeOutput writes bytes to a file atomically, or to standard output for `-`. */
export async function writeOutput(ctx: Context, body: Buffer, output: string | undefined): Promise<void> {
  if (output && output !== '-') await writeStreamAtomic(Readable.from([body]), output);
  else ctx.out.raw(body);
}

/** splitTags splits `REF:a,b,c` into the reference and its tags (validated). */
export function splitTags(ctx: Context, input: string): { ref: Reference; tags: string[] } {
  const [first, ...extra] = input.split(',');
  const ref = ctx.reference(first!);
  for (const t of extra) if (!isTag(t)) throw new RegfsError('INVALID_REFERENCE', `invalid tag ${JSON.stringify(t)} in ${input}: tags are [A-Za-z0-9_][A-Za-z0-9._-]{0,127}`);
  return { ref, tags: ref.tag ? [ref.tag, ...extra] : extra };
}

async function fetchForPlatform(r: Repository, reference: string, platform: string | undefined): Promise<FetchedManifest> {
  const m = await r.fetchManifest(reference);
  if (!platform) return m;
  if (m.manifest.kind !== 'index') throw new RegfsError('INVALID_ARGUMENT', `--platform ${platform}: ${reference} is not an index`);
  const want = parsePlatform(platform);
  const hit = m.manifest.manifests.find((d) => platformMatches(d, want));
  if (!hit) throw new RegfsError('NOT_FOUND', `no manifest for platform ${platform} in ${reference}`);
  return r.fetchManifest(hit);
}

function collect(v: string, prev: string[]): string[] {
  return [...prev, v];
}

/** parseAnnotationFlags turns `--annotation key=value` flags into a map. */
export function parseAnnotationFlags(list: string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const a of list) {
    const i = a.indexOf('=');
    if (i <= 0) throw new RegfsError('INVALID_ARGUMENT', `invalid --annotation ${JSON.stringify(a)}: expected key=value`);
    out[a.slice(0, i)] = a.slice(i + 1);
  }
  return out;
}

async function pushIndexAndReport(ctx: Context, r: Repository, ref: Reference, tags: string[], body: Buffer, descriptor: boolean | undefined): Promise<void> {
  const desc = await r.pushManifest(body, 'application/vnd.oci.image.index.v1+json', tags);
  if (descriptor) return ctx.out.raw(JSON.stringify(desc) + '\n');
  const shown = referenceString({ ...ref, tag: tags[0], digest: tags.length ? undefined : desc.digest });
  ctx.out.result({ reference: shown, tags, ...desc }, [`Pushed [${ref.kind === 'remote' ? 'registry' : 'oci-layout'}] ${shown}`, ...tags.slice(1).map((t) => `Tagged ${t}`), `Digest: ${desc.digest}`]);
}

/** registerManifest adds `regfs manifest fetch|fetch-config|push|delete|index create|index update`. */
export function registerManifest(program: Command): void {
  const manifest = program.command('manifest').description('manifest operations');

  const fetch = manifest
    .command('fetch')
    .description('print a manifest exactly as stored (its bytes hash to its digest)')
    .argument('<reference>', REF_HELP)
    .option('--descriptor', 'print the manifest descriptor instead')
    .option('--pretty', 'indent the JSON')
    .option('--platform <os/arch[/variant]>', 'from an index, fetch the manifest for this platform')
    .option('-o, --output <file>', 'write the manifest to a file, or - for standard output');
  addRemoteOptions(fetch, { layout: true });
  fetch.addHelpText('after', '\nExample:\n  regfs manifest fetch localhost:5000/samples/artifact:1.0 --pretty\n');
  fetch.action(
    action(async (ctx, input: string) => {
      const o = ctx.opts as typeof ctx.opts & { descriptor?: boolean; pretty?: boolean; output?: string; platform?: string };
      const ref = ctx.reference(input);
      const m = await fetchForPlatform(ctx.repository(ref), requireTagOrDigest(ref, input), o.platform);
      if (o.descriptor) return writeOutput(ctx, Buffer.from(JSON.stringify(m.descriptor, null, o.pretty ? 2 : undefined) + '\n'), o.output);
      const body = o.pretty ? Buffer.from(JSON.stringify(JSON.parse(m.bytes.toString('utf8')), null, 2) + '\n') : m.bytes;
      await writeOutput(ctx, body, o.output);
    }),
  );

  const fcfg = manifest
    .command('fetch-config')
    .description("print the config blob of an image manifest (ORAS's manifest fetch-config)")
    .argument('<reference>', REF_HELP)
    .option('--descriptor', 'print the config descriptor instead')
    .option('--platform <os/arch[/variant]>', 'from an index, use the manifest for this platform')
    .option('-o, --output <file>', 'write the config to a file, or - for standard output');
  addRemoteOptions(fcfg, { layout: true });
  fcfg.addHelpText('after', '\nExample:\n  regfs manifest fetch-config localhost:5000/samples/image:1.0 -o config.json\n');
  fcfg.action(
    action(async (ctx, input: string) => {
      const o = ctx.opts as typeof ctx.opts & { descriptor?: boolean; output?: string; platform?: string };
      const ref = ctx.reference(input);
      const r = ctx.repository(ref);
      const m = await fetchForPlatform(r, requireTagOrDigest(ref, input), o.platform);
      if (m.manifest.kind !== 'manifest') throw new RegfsError('INVALID_ARGUMENT', `${input} is an index, which has no config; add --platform os/arch`);
      const cfg = m.manifest.config;
      if (o.descriptor) return writeOutput(ctx, Buffer.from(JSON.stringify(cfg) + '\n'), o.output);
      const parts: Buffer[] = [];
      for await (const c of await r.fetchBlob(cfg)) parts.push(c as Buffer);
      await writeOutput(ctx, Buffer.concat(parts), o.output);
    }),
  );

  const push = manifest
    .command('push')
    .description('push a manifest file (or - for standard input) as is; REF:a,b gives several tags')
    .argument('<reference>', 'host[:port]/repo[:tag[,tag...]] or oci:DIR[:tag]')
    .argument('<file>', 'manifest JSON file, or - for standard input')
    .option('--media-type <type>', "manifest media type (default: the manifest's mediaType field)")
    .option('--descriptor', 'print the pushed descriptor');
  addRemoteOptions(push, { layout: true });
  push.addHelpText('after', '\nExample:\n  regfs manifest push localhost:5000/samples/artifact:copy manifest.json\n');
  push.action(
    action(async (ctx, input: string, file: string) => {
      const o = ctx.opts as typeof ctx.opts & { mediaType?: string; descriptor?: boolean };
      const { ref, tags } = splitTags(ctx, input);
      const bytes = await readInput(file);
      let doc: unknown;
      try {
        doc = JSON.parse(bytes.toString('utf8'));
      } catch (err) {
        throw new RegfsError('INVALID_ARGUMENT', `${file} is not valid JSON (${(err as Error).message}); give a manifest document`);
      }
      const field = typeof doc === 'object' && doc !== null ? (doc as { mediaType?: unknown }).mediaType : undefined;
      const mediaType = o.mediaType ?? (typeof field === 'string' ? field : undefined);
      if (!mediaType) throw new RegfsError('INVALID_ARGUMENT', `${file} has no mediaType field; give --media-type, e.g. --media-type application/vnd.oci.image.manifest.v1+json`);
      if (!MANIFEST_MEDIA_TYPES.includes(mediaType)) throw new RegfsError('INVALID_ARGUMENT', `unsupported manifest media type ${mediaType}: expected one of ${MANIFEST_MEDIA_TYPES.join(', ')}`);
      if (ref.digest) throw new RegfsError('INVALID_REFERENCE', `manifest push ${input}: give a tag or no tag, not a digest`);
      const r = ctx.repository(ref, { create: true });
      let desc: Descriptor;
      try {
        desc = await r.pushManifest(bytes, mediaType, tags);
      } catch (err) {
        if ((err as { code?: string }).code === 'INVALID_MANIFEST') throw new RegfsError('INVALID_ARGUMENT', `${file}: ${(err as Error).message}`);
        throw err;
      }
      if (o.descriptor) return ctx.out.raw(JSON.stringify(desc) + '\n');
      const shown = referenceString({ ...ref, tag: tags[0], digest: tags.length ? undefined : desc.digest });
      ctx.out.result({ reference: shown, tags, ...desc }, [`Pushed [${ref.kind === 'remote' ? 'registry' : 'oci-layout'}] ${shown}`, `Digest: ${desc.digest}`]);
    }),
  );

  const del = manifest
    .command('delete')
    .description('delete a manifest and every tag on it (names the other tags that go with it; asks first)')
    .argument('<reference>', REF_HELP)
    .option('-f, --force', 'delete without asking (needed when standard input is not a terminal)');
  addRemoteOptions(del, { layout: true });
  del.addHelpText('after', '\nExample:\n  regfs manifest delete localhost:5000/samples/artifact:1.0 --force\n');
  del.action(action((ctx, input: string) => runManifestDelete(ctx, input)));

  const index = manifest.command('index').description('create and update image indexes');
  const create = index
    .command('create')
    .description('create an image index of manifests already in the repository (tags or digests)')
    .argument('<reference>', 'host[:port]/repo[:tag[,tag...]] or oci:DIR[:tag]')
    .argument('<sources...>', 'tags or digests of manifests in the same repository')
    .option('-a, --annotation <key=value>', 'index annotation (repeatable)', collect, [])
    .option('--artifact-type <type>', 'artifactType of the index')
    .option('--descriptor', 'print the pushed descriptor');
  addRemoteOptions(create, { layout: true });
  create.addHelpText('after', '\nExample:\n  regfs manifest index create localhost:5000/samples/app:multi v1-amd64 v1-arm64\n');
  create.action(
    action(async (ctx, input: string, sources: string[]) => {
      const o = ctx.opts as typeof ctx.opts & { annotation: string[]; artifactType?: string; descriptor?: boolean };
      const { ref, tags } = splitTags(ctx, input);
      const r = ctx.repository(ref);
      const manifests: Descriptor[] = [];
      for (const s of sources) {
        const src = s.startsWith('@') ? s.slice(1) : s;
        if (!isDigest(src) && !isTag(src)) throw new RegfsError('INVALID_REFERENCE', `source ${JSON.stringify(s)}: give a tag or digest of ${r.display}`);
        const d = await entryFor(r, src);
        if (!manifests.some((m) => m.digest === d.digest)) manifests.push(d);
      }
      const body = indexBytes({ manifests, annotations: parseAnnotationFlags(o.annotation), artifactType: o.artifactType });
      await pushIndexAndReport(ctx, r, ref, tags, body, o.descriptor);
    }),
  );

  const update = index
    .command('update')
    .description('add, merge or remove manifests of an index and push the result (other tags keep the old index)')
    .argument('<reference>', 'host[:port]/repo:tag[,tag...] or @digest of an index')
    .option('--add <ref>', 'tag or digest of a manifest to add (repeatable)', collect, [])
    .option('--merge <ref>', "tag or digest of an index whose manifests to add (repeatable)", collect, [])
    .option('--remove <ref>', 'tag or digest of a manifest to remove (repeatable)', collect, [])
    .option('-a, --annotation <key=value>', 'set an index annotation (repeatable)', collect, [])
    .option('-t, --tag <tag>', 'also tag the updated index (repeatable)', collect, [])
    .option('--descriptor', 'print the pushed descriptor');
  addRemoteOptions(update, { layout: true });
  update.addHelpText('after', '\nExample:\n  regfs manifest index update localhost:5000/samples/app:multi --add v1-s390x --remove v1-arm64\n');
  update.action(
    action(async (ctx, input: string) => {
      const o = ctx.opts as typeof ctx.opts & { add: string[]; merge: string[]; remove: string[]; annotation: string[]; tag: string[]; descriptor?: boolean };
      const { ref, tags } = splitTags(ctx, input);
      if (!o.add.length && !o.merge.length && !o.remove.length && !o.annotation.length) throw new RegfsError('INVALID_ARGUMENT', 'manifest index update: nothing to do; give --add, --merge, --remove or --annotation');
      for (const t of o.tag) if (!isTag(t)) throw new RegfsError('INVALID_REFERENCE', `invalid --tag ${JSON.stringify(t)}`);
      const r = ctx.repository(ref);
      const body = await editIndex(r, requireTagOrDigest(ref, input), { add: o.add, merge: o.merge, remove: o.remove, annotations: parseAnnotationFlags(o.annotation) });
      await pushIndexAndReport(ctx, r, { ...ref, digest: undefined }, [...tags, ...o.tag], indexBytes(body), o.descriptor);
    }),
  );
}

/** runManifestDelete is `manifest delete` and `repo delete`: name the co-deleted tags, ask, delete. */
export async function runManifestDelete(ctx: Context, input: string): Promise<void> {
  const o = ctx.opts as typeof ctx.opts & { force?: boolean };
  const ref = ctx.reference(input);
  const shown = referenceString(ref);
  const done = await deleteManifestConfirmed(ctx.repository(ref), requireTagOrDigest(ref, input), { force: o.force, shown, tag: ref.tag });
  if (!done.deleted) {
    process.stderr.write('Operation cancelled.\n');
    return;
  }
  ctx.out.result({ deleted: shown, digest: done.descriptor.digest, alsoRemovesTags: done.alsoRemoves }, `Deleted ${shown} (${done.descriptor.digest})${alsoText(done.alsoRemoves)}`);
}

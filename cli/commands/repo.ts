import type { Command } from 'commander';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { writeStreamAtomic } from '../../util/fs-atomic.js';
import { RegfsError } from '../../util/errors.js';
import { Annotation } from '../../registry/media-types.js';
import { artifactTypeOf } from '../../registry/manifest.js';
import { parseMountSource, referenceString } from '../../registry/reference.js';
import { addRemoteOptions, requireTagOrDigest } from '../context.js';
import { parseIntInRange } from '../parse.js';
import { action } from '../run.js';

function pageSize(v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  return parseIntInRange(v, '--page-size', 1, 10000);
}

/** registerRepo adds `regfs repo ls|tags|show|delete`. */
export function registerRepo(program: Command): void {
  const repo = program.command('repo').description('list, inspect and delete repositories and tags');

  const ls = repo
    .command('ls')
    .description('list the repositories of a registry (or of a folder of OCI layouts, oci:DIR); HOST/NAMESPACE lists those below NAMESPACE/, without the prefix, as oras does')
    .argument('<registry>', 'registry host[:port], HOST/NAMESPACE, or oci:DIR')
    .option('--page-size <n>', 'repositories asked per catalog page');
  addRemoteOptions(ls, { layout: true });
  ls.addHelpText('after', '\nExamples:\n  regfs repo ls localhost:5000\n  regfs repo ls localhost:5000/team     # app, app/web (for team/app, team/app/web)\n');
  ls.action(
    action(async (ctx, registry: string) => {
      const o = ctx.opts as typeof ctx.opts & { pageSize?: string };
      let host = registry;
      let namespace = '';
      if (!registry.startsWith('oci:') && !ctx.opts.ociLayout) {
        const src = parseMountSource(registry);
        if (src.kind === 'artifact') throw new RegfsError('INVALID_REFERENCE', `repo ls ${registry}: give a registry or a namespace, not a tag or digest`);
        if (src.kind === 'path') {
          host = src.registry;
          // A namespace keeps its spelling (docker.io/bitnami is bitnami/, not library/bitnami/).
          namespace = `${src.path}/`;
        }
      }
      const all = await ctx.registry(host).listRepositories({ pageSize: pageSize(o.pageSize) });
      const names = namespace ? all.filter((n) => n.startsWith(namespace)).map((n) => n.slice(namespace.length)) : all;
      ctx.out.result(namespace ? { namespace: namespace.slice(0, -1), repositories: names } : { repositories: names }, names);
    }),
  );

  const tags = repo
    .command('tags')
    .description('list the tags of a repository')
    .argument('<repository>', 'host[:port]/repo or oci:DIR')
    .option('--page-size <n>', 'tags asked per page');
  addRemoteOptions(tags, { layout: true });
  tags.addHelpText('after', '\nExample:\n  regfs repo tags localhost:5000/samples/artifact\n');
  tags.action(
    action(async (ctx, input: string) => {
      const o = ctx.opts as typeof ctx.opts & { pageSize?: string };
      const ref = ctx.reference(input);
      const list = await ctx.repository(ref).listTags({ pageSize: pageSize(o.pageSize) });
      ctx.out.result({ tags: list }, list);
    }),
  );

  const show = repo
    .command('show')
    .description('show a tag or manifest as JSON, like `az acr repository show`')
    .argument('<reference>', 'host[:port]/repo:tag or @digest, or oci:DIR:tag');
  addRemoteOptions(show, { layout: true });
  show.addHelpText('after', '\nExample:\n  regfs repo show localhost:5000/samples/artifact:1.0\n');
  show.action(
    action(async (ctx, input: string) => {
      const ref = ctx.reference(input);
      const r = ctx.repository(ref);
      if (!ref.tag && !ref.digest) {
        const list = await r.listTags();
        const info = { registry: ref.kind === 'remote' ? ref.registry : `oci:${ref.path}`, imageName: r.name, tagCount: list.length };
        ctx.out.result(info, JSON.stringify(info, null, 2));
        return;
      }
      const m = await r.fetchManifest(requireTagOrDigest(ref, input));
      const created = m.manifest.annotations?.[Annotation.created] ?? null;
      const info = {
        registry: ref.kind === 'remote' ? ref.registry : `oci:${ref.path}`,
        name: ref.tag ? `${r.name}:${ref.tag}` : r.name,
        digest: m.descriptor.digest,
        mediaType: m.descriptor.mediaType,
        size: m.descriptor.size,
        artifactType: artifactTypeOf(m.manifest) ?? null,
        createdTime: created,
        lastUpdateTime: created,
        layers: m.manifest.kind === 'manifest' ? m.manifest.layers.length : undefined,
        manifests: m.manifest.kind === 'index' ? m.manifest.manifests.length : undefined,
      };
      ctx.out.result(info, JSON.stringify(info, null, 2));
    }),
  );

  const del = repo
    .command('delete')
    .description('delete a manifest (by tag or digest) and every tag on it')
    .argument('<reference>', 'host[:port]/repo:tag or @digest, or oci:DIR:tag');
  addRemoteOptions(del, { layout: true });
  del.addHelpText('after', '\nExample:\n  regfs repo delete localhost:5000/samples/artifact:1.0\n');
  del.action(
    action(async (ctx, input: string) => {
      const ref = ctx.reference(input);
      const r = ctx.repository(ref);
      const desc = await r.resolve(requireTagOrDigest(ref, input));
      await r.deleteManifest(desc);
      ctx.out.result({ deleted: referenceString(ref), digest: desc.digest }, `Deleted ${referenceString(ref)} (${desc.digest})`);
    }),
  );
}

/** registerInspect adds `regfs manifest fetch`, `regfs resolve` and `regfs blob fetch`. */
export function registerInspect(program: Command): void {
  const manifest = program.command('manifest').description('manifest operations');
  const fetch = manifest
    .command('fetch')
    .description('print a manifest exactly as stored (its bytes hash to its digest)')
    .argument('<reference>', 'host[:port]/repo:tag or @digest, or oci:DIR:tag')
    .option('--descriptor', 'print the manifest descriptor instead')
    .option('--pretty', 'indent the JSON')
    .option('-o, --output <file>', 'write the manifest to a file');
  addRemoteOptions(fetch, { layout: true });
  fetch.addHelpText('after', '\nExample:\n  regfs manifest fetch localhost:5000/samples/artifact:1.0 --pretty\n');
  fetch.action(
    action(async (ctx, input: string) => {
      const o = ctx.opts as typeof ctx.opts & { descriptor?: boolean; pretty?: boolean; output?: string };
      const ref = ctx.reference(input);
      const m = await ctx.repository(ref).fetchManifest(requireTagOrDigest(ref, input));
      if (o.descriptor) {
        ctx.out.raw(JSON.stringify(m.descriptor, null, o.pretty ? 2 : undefined) + '\n');
        return;
      }
      const body = o.pretty ? Buffer.from(JSON.stringify(JSON.parse(m.bytes.toString('utf8')), null, 2) + '\n') : m.bytes;
      if (o.output) await writeStreamAtomic(Readable.from([body]), o.output);
      else ctx.out.raw(body);
    }),
  );

  const resolve = program
    .command('resolve')
    .description('print the digest a tag points at')
    .argument('<reference>', 'host[:port]/repo:tag or oci:DIR:tag')
    .option('-l, --full-reference', 'print host/repo@digest');
  addRemoteOptions(resolve, { layout: true });
  resolve.addHelpText('after', '\nExample:\n  regfs resolve localhost:5000/samples/artifact:1.0\n');
  resolve.action(
    action(async (ctx, input: string) => {
      const o = ctx.opts as typeof ctx.opts & { fullReference?: boolean };
      const ref = ctx.reference(input);
      const desc = await ctx.repository(ref).resolve(requireTagOrDigest(ref, input));
      const full = referenceString({ ...ref, tag: undefined, digest: desc.digest });
      ctx.out.result({ reference: referenceString(ref), ...desc }, o.fullReference ? full : desc.digest);
    }),
  );

  const blob = program.command('blob').description('blob operations');
  const bfetch = blob
    .command('fetch')
    .description('download one blob by digest, verified against the digest (nothing is written on mismatch)')
    .argument('<reference>', 'host[:port]/repo@sha256:... or oci:DIR@sha256:...')
    .requiredOption('-o, --output <file>', 'file to write, or - for standard output')
    .option('--size <n>', 'expected size (default: asked from the registry)');
  addRemoteOptions(bfetch, { layout: true });
  bfetch.addHelpText('after', '\nExample:\n  regfs blob fetch localhost:5000/samples/artifact@sha256:<hex> -o artifact.txt\n');
  bfetch.action(
    action(async (ctx, input: string) => {
      const o = ctx.opts as typeof ctx.opts & { output: string; size?: string };
      const ref = ctx.reference(input);
      if (!ref.digest) throw new RegfsError('INVALID_REFERENCE', `blob fetch needs a digest: ${input}@sha256:<hex>`);
      const r = ctx.repository(ref);
      const size = o.size !== undefined ? Number(o.size) : (await r.statBlob(ref.digest)).size;
      if (!Number.isSafeInteger(size) || size < 0) throw new RegfsError('INVALID_ARGUMENT', `invalid --size ${o.size}: expected a byte count`);
      const src = await r.fetchBlob({ mediaType: 'application/octet-stream', digest: ref.digest, size });
      if (o.output === '-') await pipeline(src, process.stdout);
      else await writeStreamAtomic(src, o.output);
      if (o.output !== '-') ctx.out.result({ digest: ref.digest, size, output: o.output }, `Downloaded ${ref.digest} to ${o.output}`);
    }),
  );
}


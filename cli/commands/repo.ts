import type { Command } from 'commander';
import { RegfsError } from '../../util/errors.js';
import { Annotation } from '../../registry/media-types.js';
import { artifactTypeOf } from '../../registry/manifest.js';
import { parseMountSource, referenceString } from '../../registry/reference.js';
import { addRemoteOptions, requireTagOrDigest } from '../context.js';
import { parseIntInRange } from '../parse.js';
import { action } from '../run.js';
import { runManifestDelete } from './manifest.js';
import { tagsSharingManifest } from '../../registry/tag-ops.js';

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
    .argument('<repository>', 'host[:port]/repo or oci:DIR; with :TAG or @DIGEST, only the tags on that manifest')
    .option('--page-size <n>', 'tags asked per page')
    .option('--last <tag>', 'only tags after this one (lexically, kept in the order the registry returns)')
    .option('--exclude-digest-tags', "hide digest-like tags such as 'sha256-<hex>' (referrers fallback tags)");
  addRemoteOptions(tags, { layout: true });
  tags.addHelpText('after', '\nExample:\n  regfs repo tags localhost:5000/samples/artifact\n');
  tags.action(
    action(async (ctx, input: string) => {
      const o = ctx.opts as typeof ctx.opts & { pageSize?: string; last?: string; excludeDigestTags?: boolean };
      const ref = ctx.reference(input);
      const r = ctx.repository(ref);
      let list = await r.listTags({ pageSize: pageSize(o.pageSize) });
      if (o.last !== undefined) list = list.filter((t) => t > o.last!);
      if (o.excludeDigestTags) list = list.filter((t) => !/^sha(256|512)-[0-9a-f]{32,}$/.test(t));
      if (ref.tag || ref.digest) {
        const digest = ref.digest ?? (await r.resolve(ref.tag!)).digest;
        if (ctx.out.format === 'text') ctx.out.warn(`querying tags associated to ${digest}, it may take a while...`);
        const on = new Set(await tagsSharingManifest(r, '', { mediaType: 'application/octet-stream', digest, size: 0 }));
        list = list.filter((t) => on.has(t));
      }
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
    .description('delete a manifest (by tag or digest) and every tag on it; names the other tags and asks first')
    .argument('<reference>', 'host[:port]/repo:tag or @digest, or oci:DIR:tag')
    .option('-f, --force', 'delete without asking (needed when standard input is not a terminal)');
  addRemoteOptions(del, { layout: true });
  del.addHelpText('after', '\nExample:\n  regfs repo delete localhost:5000/samples/artifact:1.0 --force\n');
  del.action(action((ctx, input: string) => runManifestDelete(ctx, input)));
}

/** registerInspect adds `regfs resolve` (manifest and blob commands are in manifest.ts and blob.ts). */
export function registerInspect(program: Command): void {
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
}

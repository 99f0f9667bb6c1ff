import type { Command } from 'commander';
import { createReadStream, promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { RegfsError } from '../../util/errors.js';
import { writeStreamAtomic } from '../../util/fs-atomic.js';
import { copyGraph, type CopyStats } from '../../registry/copy.js';
import { parsePlatform } from '../../registry/descriptor.js';
import { OciLayoutRepository } from '../../registry/oci-layout.js';
import { isTag, referenceString, type Reference } from '../../registry/reference.js';
import type { ReadableRepository } from '../../registry/storage.js';
import { extractTar } from '../../registry/tar-extract.js';
import { packDirectory } from '../../registry/tar-pack.js';
import { addRemoteOptions, requireTagOrDigest, type Context } from '../context.js';
import { parseIntInRange } from '../parse.js';
import { action } from '../run.js';

/** REFERRERS_TAG is the referrers tag schema's tag shape; backup leaves those tags out (they are rebuilt on restore). */
const REFERRERS_TAG = /^sha256-[0-9a-f]{64}$/;

/** splitTags parses `REF[,tag2,...]` into the reference and the extra tags. */
function splitTags(ctx: Context, arg: string): { ref: Reference; extra: string[] } {
  const [first, ...extra] = arg.split(',');
  for (const t of extra) if (!isTag(t)) throw new RegfsError('INVALID_REFERENCE', `invalid tag ${JSON.stringify(t)} in ${JSON.stringify(arg)}`);
  return { ref: ctx.reference(first!), extra };
}

function statsLine(s: CopyStats): string {
  return `Copied ${s.manifests} manifest(s): ${s.blobsPushed} blob(s) copied (${s.bytesPushed} bytes), ${s.blobsMounted} mounted, ${s.blobsExisting} already there${s.referrers ? `, ${s.referrers} referrer(s)` : ''}`;
}

/** registerCopy adds `regfs cp` (alias `copy`, oras cp): registry and OCI-layout to registry and OCI-layout, digests preserved. */
export function registerCopy(program: Command): void {
  const cmd = program
    .command('cp')
    .alias('copy')
    .description('copy an artifact or image (index children, blobs, optionally referrers) between registries and OCI layouts; digests are preserved')
    .argument('<from>', 'host[:port]/repo:tag, host[:port]/repo@sha256:... or oci:DIR[:tag]')
    .argument('<to>', 'host[:port]/repo[:tag][,tag2...] or oci:DIR[:tag] (no tag: the source tag)')
    .option('-r, --recursive', 'copy the referrers too, recursively')
    .option('--platform <os/arch[/variant]>', 'copy only the manifest of this platform out of an index')
    .option('--force', 'move a destination tag that points at a different digest')
    .option('--concurrency <n>', 'blobs copied at once', '4');
  addRemoteOptions(cmd, { layout: false });
  cmd.addHelpText('after', '\nExamples:\n  regfs cp localhost:5000/hello:v1 localhost:6000/hello:v1\n  regfs cp -r localhost:5000/hello:v1 oci:./backup:v1\n');
  cmd.action(
    action(async (ctx, fromArg: string, toArg: string) => {
      const o = ctx.opts as typeof ctx.opts & { recursive?: boolean; platform?: string; force?: boolean; concurrency: string };
      const src = ctx.reference(fromArg);
      const reference = requireTagOrDigest(src, fromArg);
      const { ref: dst, extra } = splitTags(ctx, toArg);
      if (dst.digest) throw new RegfsError('INVALID_REFERENCE', `cannot copy to a digest reference ${JSON.stringify(toArg)}; give a tag or none`);
      const tags = [...(dst.tag ? [dst.tag] : src.tag ? [src.tag] : []), ...extra];
      const concurrency = parseIntInRange(o.concurrency, '--concurrency', 1, 64);
      const platform = o.platform ? parsePlatform(o.platform) : undefined;
      const sameRegistry = src.kind === 'remote' && dst.kind === 'remote' && src.registry === dst.registry && src.repository !== dst.repository;
      const from = ctx.repository(src);
      const to = ctx.repository(dst, { create: true });
      const res = await copyGraph(from, to, reference, tags, { recursive: o.recursive, platform, force: o.force, concurrency, ...(sameRegistry ? { mountFrom: src.repository } : {}) });
      const shown = referenceString({ ...dst, tag: tags[0], digest: tags.length ? undefined : res.desc.digest });
      ctx.out.result(
        { reference: shown, mediaType: res.desc.mediaType, digest: res.desc.digest, size: res.desc.size, tags, ...res.stats },
        [statsLine(res.stats), `Copied [${src.kind === 'remote' ? 'registry' : 'oci-layout'}] ${referenceString(src)} => [${dst.kind === 'remote' ? 'registry' : 'oci-layout'}] ${shown}`, `Digest: ${res.desc.digest}`],
      );
    }),
  );
}

/** tagsToCopy is the tags named on the command line, else every tag of the repository but referrers-schema tags. */
async function tagsToCopy(repo: ReadableRepository, ref: Reference, extra: string[]): Promise<string[]> {
  const named = [...(ref.tag ? [ref.tag] : []), ...extra];
  if (named.length) return named;
  const all = (await repo.listTags()).filter((t) => !REFERRERS_TAG.test(t));
  if (!all.length) throw new RegfsError('NOT_FOUND', `${repo.display} has no tags to copy`);
  return all;
}

/** findLayoutRoot is the folder holding `oci-layout` in an extracted tarball: its top, or its one subfolder. */
async function findLayoutRoot(dir: string, input: string): Promise<string> {
  if (await fsp.stat(path.join(dir, 'oci-layout')).catch(() => undefined)) return dir;
  const entries = (await fsp.readdir(dir, { withFileTypes: true })).filter((e) => e.isDirectory());
  if (entries.length === 1 && (await fsp.stat(path.join(dir, entries[0]!.name, 'oci-layout')).catch(() => undefined))) return path.join(dir, entries[0]!.name);
  throw new RegfsError('INVALID_ARGUMENT', `${input} is not a tarball of an OCI layout (no oci-layout file at its top)`);
}

const isTarPath = (p: string): boolean => /\.tar$/i.test(p);

/** registerBackup adds `regfs backup` (oras backup): a repository's tags to an OCI layout folder or a .tar of one. */
export function registerBackup(program: Command): void {
  const cmd = program
    .command('backup')
    .description('back up tags of a repository (default: all) into an OCI layout folder, or a tarball of one when --output ends in .tar')
    .argument('<from>', 'host[:port]/repo[:tag][,tag2...]')
    .requiredOption('-o, --output <path>', 'OCI layout folder, or FILE.tar')
    .option('-r, --include-referrers', 'back up the referrers of each manifest too, recursively')
    .option('--concurrency <n>', 'blobs copied at once', '4');
  addRemoteOptions(cmd, { layout: false });
  cmd.addHelpText('after', '\nExamples:\n  regfs backup localhost:5000/hello --output hello.tar --include-referrers\n');
  cmd.action(
    action(async (ctx, fromArg: string) => {
      const o = ctx.opts as typeof ctx.opts & { output: string; includeReferrers?: boolean; concurrency: string };
      const { ref, extra } = splitTags(ctx, fromArg);
      if (ref.digest) throw new RegfsError('INVALID_REFERENCE', `backup takes tags, not a digest: ${JSON.stringify(fromArg)}`);
      const concurrency = parseIntInRange(o.concurrency, '--concurrency', 1, 64);
      const src = ctx.repository(ref);
      const tags = await tagsToCopy(src, ref, extra);
      const tar = isTarPath(o.output);
      const dir = tar ? await fsp.mkdtemp(path.join(os.tmpdir(), 'regfs-backup-')) : o.output;
      try {
        const layout = new OciLayoutRepository(dir, 'backup', { create: true });
        let manifests = 0;
        for (const tag of tags) manifests += (await copyGraph(src, layout, tag, [tag], { recursive: o.includeReferrers, concurrency, force: true })).stats.manifests;
        if (tar) {
          const base = path.basename(o.output).replace(/\.tar$/i, '') || 'layout';
          await writeStreamAtomic(packDirectory(dir, { prefix: base }), path.resolve(o.output));
        }
        ctx.out.result({ reference: referenceString(ref), output: o.output, tags, manifests }, [`Backed up ${referenceString({ ...ref, tag: undefined })} (${tags.length} tag(s), ${manifests} manifest(s)) to ${o.output}`]);
      } finally {
        if (tar) await fsp.rm(dir, { recursive: true, force: true });
      }
    }),
  );
}

/** registerRestore adds `regfs restore` (oras restore): an OCI layout folder or tarball into a repository. */
export function registerRestore(program: Command): void {
  const cmd = program
    .command('restore')
    .description('restore tags (default: all) of an OCI layout folder or .tar into a repository, with their referrers; digests are preserved')
    .argument('[input]', 'OCI layout folder or FILE.tar (or give --input)')
    .argument('[to]', 'host[:port]/repo[:tag][,tag2...]')
    .option('-i, --input <path>', 'OCI layout folder or FILE.tar (oras restore spelling)')
    .option('--exclude-referrers', 'do not restore referrers')
    .option('--force', 'move a destination tag that points at a different digest')
    .option('--concurrency <n>', 'blobs copied at once', '4');
  addRemoteOptions(cmd, { layout: false });
  cmd.addHelpText('after', '\nExamples:\n  regfs restore hello.tar localhost:6000/hello\n  regfs restore --input ./hello-layout localhost:6000/hello:v1\n');
  cmd.action(
    action(async (ctx, a: string | undefined, b: string | undefined) => {
      const o = ctx.opts as typeof ctx.opts & { input?: string; excludeReferrers?: boolean; force?: boolean; concurrency: string };
      const input = o.input ?? a;
      const toArg = o.input ? a : b;
      if (!input || !toArg) throw new RegfsError('INVALID_ARGUMENT', 'restore needs an input (folder or .tar) and a destination host/repo[:tag]');
      const { ref, extra } = splitTags(ctx, toArg);
      if (ref.kind !== 'remote' || ref.digest) throw new RegfsError('INVALID_REFERENCE', `restore destination ${JSON.stringify(toArg)} must be host[:port]/repo[:tag]`);
      const concurrency = parseIntInRange(o.concurrency, '--concurrency', 1, 64);
      const st = await fsp.stat(input).catch(() => undefined);
      if (!st) throw new RegfsError('NOT_FOUND', `restore input ${input} not found`);
      const tar = st.isFile();
      const tmp = tar ? await fsp.mkdtemp(path.join(os.tmpdir(), 'regfs-restore-')) : undefined;
      try {
        let dir = input;
        if (tmp) {
          await extractTar(createReadStream(input), tmp).catch((err: unknown) => {
            throw new RegfsError('INVALID_ARGUMENT', `${input} is not a readable tarball: ${(err as Error).message}`, { cause: err });
          });
          dir = await findLayoutRoot(tmp, input);
        }
        const layout = new OciLayoutRepository(dir, 'restore');
        const tags = await tagsToCopy(layout, { kind: 'layout', path: dir, tag: ref.tag }, extra);
        const dst = ctx.repository(ref);
        let manifests = 0;
        for (const tag of tags) manifests += (await copyGraph(layout, dst, tag, [tag], { recursive: !o.excludeReferrers, force: o.force, concurrency })).stats.manifests;
        ctx.out.result({ reference: referenceString({ ...ref, tag: undefined }), input, tags, manifests }, [`Restored ${tags.length} tag(s), ${manifests} manifest(s) from ${input} to ${referenceString({ ...ref, tag: undefined })}`]);
      } finally {
        if (tmp) await fsp.rm(tmp, { recursive: true, force: true });
      }
    }),
  );
}

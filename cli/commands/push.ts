import path from 'node:path';
import type { Command } from 'commander';
import { writeFileAtomic } from '../../util/fs-atomic.js';
import { Annotation, MediaType } from '../../registry/media-types.js';
import { errnoOf, isRegfsError, RegfsError } from '../../util/errors.js';
import { packArtifact, parseAnnotationArgs, parseFileArg } from '../../registry/pack.js';
import { isTag, referenceString } from '../../registry/reference.js';
import { pullArtifact, pushArtifact } from '../../registry/transfer.js';
import { addRemoteOptions } from '../context.js';
import { Progress } from '../progress.js';
import { parseIntInRange } from '../parse.js';
import { action } from '../run.js';

function collect(v: string, prev: string[] = []): string[] {
  return [...prev, v];
}

/** TtyFlags are -q/--quiet and --no-tty (commander sets `tty: false` for the latter). */
interface TtyFlags {
  format?: string;
  quiet?: boolean;
  tty?: boolean;
  verbose?: boolean;
}

function stderrTty(o: TtyFlags): NodeJS.WriteStream | undefined {
  return o.format === 'text' && !o.quiet && o.tty !== false && process.stderr.isTTY ? process.stderr : undefined;
}

/** addOutputOptions adds -q/--quiet (only the result) and --no-tty (no progress bar, even on a terminal). */
function addOutputOptions(cmd: Command): Command {
  return cmd.option('-q, --quiet', 'print only the result: no per-blob lines, no progress bar').option('-v, --verbose', 'also list blobs without a title (the config), by media type').option('--no-tty', 'never draw the progress bar (it is drawn only when stderr is a terminal)');
}

/** blobLines is where the per-blob lines go: stdout, or nowhere with --quiet. */
function blobLines(ctx: { out: { line(s: string): void } }, o: TtyFlags): (l: string) => void {
  return o.quiet ? () => undefined : (l) => ctx.out.line(l);
}

/** registerPush adds `regfs push` (ORAS file-to-layer conventions). */
export function registerPush(program: Command): void {
  const cmd = program
    .command('push')
    .description('push files as an artifact: one layer per file (title annotation), a directory as one tar+gzip layer')
    .argument('<reference>', 'host[:port]/repo[:tag][,tag2...] or oci:DIR[:tag]')
    .argument('[files...]', 'FILE[:TYPE] to push; TYPE defaults to application/vnd.oci.image.layer.v1.tar')
    .option('--config <file[:type]>', 'config file and its media type (default: the empty config, with an artifactType)')
    .option('--manifest-config <file[:type]>', 'older ORAS spelling of --config')
    .option('--artifact-type <type>', 'artifactType of the manifest (default application/vnd.unknown.artifact.v1 when no config is given)')
    .option('-a, --annotation <key=value>', 'manifest annotation (repeatable)', collect, [])
    .option('--annotation-file <file>', 'JSON annotations: {"$manifest": {...}, "$config": {...}, "<file title>": {...}}')
    .option('--concurrency <n>', 'blobs uploaded at once', '5')
    .option('--export-manifest <file>', 'also write the pushed manifest to this file')
    .option('--disable-path-validation', 'allow absolute file paths (the title keeps the path as given, as ORAS does)');
  addOutputOptions(cmd);
  addRemoteOptions(cmd, { layout: true });
  cmd.addHelpText('after', '\nExamples:\n  regfs push localhost:5000/samples/artifact:1.0 ./artifact.txt:application/vnd.unknown.layer.v1+txt\n  regfs push localhost:5000/docs:v1,latest README.md docs/\n  regfs push oci:./store/samples/artifact:1.0 artifact.txt\n');
  cmd.action(
    action(async (ctx, refArg: string, files: string[]) => {
      const o = ctx.opts as typeof ctx.opts & TtyFlags & { config?: string; manifestConfig?: string; artifactType?: string; annotation: string[]; annotationFile?: string; concurrency: string; exportManifest?: string; disablePathValidation?: boolean };
      const [first, ...extraTags] = refArg.split(',');
      const ref = ctx.reference(first!);
      for (const t of extraTags) if (!isTag(t)) throw new RegfsError('INVALID_REFERENCE', `invalid tag ${JSON.stringify(t)} in ${JSON.stringify(refArg)}`);
      if (ref.digest) throw new RegfsError('INVALID_REFERENCE', `cannot push to a digest reference ${JSON.stringify(first)}; give a tag`);
      if (o.config && o.manifestConfig) throw new RegfsError('INVALID_ARGUMENT', '--config and --manifest-config are the same flag; give one');
      const concurrency = parseIntInRange(o.concurrency, '--concurrency', 1, 64);
      const cfg = o.config ?? o.manifestConfig;
      const packed = await packArtifact({
        files: files.map(parseFileArg),
        config: cfg ? parseFileArg(cfg) : undefined,
        artifactType: o.artifactType,
        annotations: parseAnnotationArgs(o.annotation),
        annotationFile: o.annotationFile,
        allowAbsolute: o.disablePathValidation,
      }).catch((err: unknown) => {
        // An absolute or `..` file argument is bad local input (exit 2, as README says); the same
        // check on titles a registry serves to pull is a runtime failure and stays UNSAFE_PATH (exit 1).
        if (isRegfsError(err, 'UNSAFE_PATH')) throw new RegfsError('INVALID_ARGUMENT', err.message, { cause: err });
        throw err;
      });
      const tags = [ref.tag ?? 'latest', ...extraTags];
      const repo = ctx.repository(ref, { create: true });
      const progress = new Progress({ start: 'Uploading', done: 'Uploaded' }, blobLines(ctx, o), stderrTty(o), o.verbose);
      const desc = await pushArtifact(repo, packed, tags, { concurrency, onEvent: (e) => progress.on(e) });
      progress.clear();
      if (o.exportManifest) await writeFileAtomic(o.exportManifest, packed.manifest, 0o644);
      const shown = referenceString({ ...ref, tag: tags[0] });
      const base = referenceString({ ...ref, tag: undefined, digest: undefined });
      const manifestAnnotations = (JSON.parse(packed.manifest.toString('utf8')) as { annotations?: Record<string, string> }).annotations;
      // ORAS 1.2's model.push: the root descriptor with a digest reference, then every tag as host/repo:tag.
      // The artifactType is the manifest's, else its config media type (what oras-go puts in the descriptor).
      const artifactType = packed.artifactType ?? (packed.config.desc.mediaType !== MediaType.empty ? packed.config.desc.mediaType : undefined);
      ctx.out.result(
        {
          reference: `${base}@${desc.digest}`,
          mediaType: desc.mediaType,
          digest: desc.digest,
          size: desc.size,
          ...(manifestAnnotations ? { annotations: manifestAnnotations } : {}),
          ...(artifactType ? { artifactType } : {}),
          referenceAsTags: tags.map((t) => `${base}:${t}`),
        },
        [
          `Pushed [${ref.kind === 'remote' ? 'registry' : 'oci-layout'}] ${shown}`,
          ...extraTags.map((t) => `Tagged ${t}`),
          ...(artifactType ? [`ArtifactType: ${artifactType}`] : []),
          `Digest: ${desc.digest}`,
        ],
      );
    }),
  );
}

/**
 * checkWritableOutput asks the nearest existing folder of the output directory for write access
 * first, so a read-only file system or a folder of another user is said as such (Node reports a
 * recursive mkdir on a read-only file system as ENOENT).
 */
async function checkWritableOutput(output: string): Promise<void> {
  const { constants, promises: fsp } = await import('node:fs');
  const path = await import('node:path');
  let dir = path.resolve(output);
  for (;;) {
    const st = await fsp.stat(dir).catch(() => undefined);
    if (st) {
      if (!st.isDirectory()) throw new RegfsError('INVALID_ARGUMENT', `cannot pull into ${path.resolve(output)}: ${dir} is not a directory`);
      break;
    }
    const up = path.dirname(dir);
    if (up === dir) return;
    dir = up;
  }
  try {
    await fsp.access(dir, constants.W_OK);
  } catch (err) {
    const code = errnoOf(err);
    const why = code === 'EROFS' ? 'read-only file system' : code === 'EACCES' || code === 'EPERM' ? 'permission denied' : (code ?? String(err));
    throw new RegfsError('IO', `cannot pull into ${path.resolve(output)}: ${dir} is not writable (${why})`);
  }
}

/** registerPull adds `regfs pull`. */
export function registerPull(program: Command): void {
  const cmd = program
    .command('pull')
    .description('pull the titled files of an artifact into a directory (verified, written atomically, never outside it)')
    .argument('<reference>', 'host[:port]/repo:tag, host[:port]/repo@sha256:... or oci:DIR[:tag]')
    .option('-o, --output <dir>', 'output directory', '.')
    .option('--media-type <types>', 'only pull layers of these media types (comma-separated)')
    .option('--keep-old-files', 'refuse to replace files that already exist')
    .option('--platform <os/arch[/variant]>', 'pull the manifest of an index for this platform')
    .option('--export-manifest <file>', 'also write the pulled manifest to this file')
    .option('--include-subject', 'also pull the subject of the artifact, and its subject, recursively (same output dir)')
    .option('--concurrency <n>', 'blobs downloaded at once', '3');
  addOutputOptions(cmd);
  addRemoteOptions(cmd, { layout: true });
  cmd.addHelpText('after', '\nExamples:\n  regfs pull localhost:5000/samples/artifact:1.0 -o out/\n  regfs pull localhost:5000/samples/artifact:1.0 --media-type application/vnd.unknown.layer.v1+txt\n');
  cmd.action(
    action(async (ctx, refArg: string) => {
      const o = ctx.opts as typeof ctx.opts & TtyFlags & { output: string; mediaType?: string; keepOldFiles?: boolean; concurrency: string; platform?: string; exportManifest?: string; includeSubject?: boolean };
      const ref = ctx.reference(refArg);
      const reference = ref.digest ?? ref.tag ?? 'latest';
      const concurrency = parseIntInRange(o.concurrency, '--concurrency', 1, 64);
      await checkWritableOutput(o.output);
      const repo = ctx.repository(ref);
      const progress = new Progress({ start: 'Downloading', done: 'Downloaded' }, blobLines(ctx, o), stderrTty(o), o.verbose);
      const res = await pullArtifact(repo, reference, o.output, {
        platform: o.platform,
        mediaTypes: o.mediaType?.split(',').map((s) => s.trim()).filter(Boolean),
        keepOldFiles: o.keepOldFiles,
        concurrency,
        onEvent: (e) => progress.on(e),
      });
      // --include-subject (ORAS): the subject chain, each pulled the same way into the same directory.
      const pulled = [...res.pulled];
      const visited = new Set<string>([res.manifest.descriptor.digest]);
      let subject = o.includeSubject && res.manifest.manifest.kind === 'manifest' ? res.manifest.manifest.subject : undefined;
      while (subject && !visited.has(subject.digest)) {
        visited.add(subject.digest);
        const sub = await pullArtifact(repo, subject.digest, o.output, { keepOldFiles: o.keepOldFiles, concurrency, onEvent: (e) => progress.on(e) });
        pulled.push(...sub.pulled);
        subject = sub.manifest.manifest.kind === 'manifest' ? sub.manifest.manifest.subject : undefined;
      }
      progress.clear();
      if (o.exportManifest) await writeFileAtomic(o.exportManifest, res.manifest.bytes, 0o644);
      if (res.skipped && !o.quiet) ctx.out.line(`Skipped pulling ${res.skipped} layer(s) without file name in "org.opencontainers.image.title"`);
      const shown = referenceString({ ...ref, tag: ref.digest ? undefined : reference });
      const base = referenceString({ ...ref, tag: undefined, digest: undefined });
      const outAbs = path.resolve(o.output);
      // ORAS 1.2's model.pull: the root's digest reference, and per file its absolute path (a directory
      // ends in "/") with the layer's descriptor and digest reference.
      ctx.out.result(
        {
          reference: `${base}@${res.manifest.descriptor.digest}`,
          files: pulled.map((f) => ({
            path: path.join(outAbs, f.title) + (f.desc.annotations?.[Annotation.unpack] === 'true' ? path.sep : ''),
            reference: `${base}@${f.desc.digest}`,
            mediaType: f.desc.mediaType,
            digest: f.desc.digest,
            size: f.desc.size,
            ...(f.desc.annotations ? { annotations: f.desc.annotations } : {}),
            ...(f.desc.artifactType ? { artifactType: f.desc.artifactType } : {}),
          })),
        },
        [`Pulled [${ref.kind === 'remote' ? 'registry' : 'oci-layout'}] ${shown}`, `Digest: ${res.manifest.descriptor.digest}`],
      );
    }),
  );
}

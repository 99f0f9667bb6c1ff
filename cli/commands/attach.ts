import type { Command } from 'commander';
import { isRegfsError, RegfsError } from '../../util/errors.js';
import type { Descriptor } from '../../registry/descriptor.js';
import { packArtifact, parseAnnotationArgs, parseFileArg } from '../../registry/pack.js';
import { referenceString, type Reference } from '../../registry/reference.js';
import { referrerTree, withSubject, type ReferrerNode } from '../../registry/referrers.js';
import { pushArtifact } from '../../registry/transfer.js';
import { addRemoteOptions, requireTagOrDigest } from '../context.js';
import { parseIntInRange } from '../parse.js';
import { action } from '../run.js';

function collect(v: string, prev: string[] = []): string[] {
  return [...prev, v];
}

/** digestRef is `host/repo@sha256:...` (or `oci:DIR@sha256:...`), how ORAS names a subject and its referrers. */
function digestRef(ref: Reference, digest: string): string {
  return referenceString({ ...ref, tag: undefined, digest: digest as Reference['digest'] });
}

/** registerAttach adds `regfs attach` (oras attach): an artifact whose subject is REF's manifest. */
export function registerAttach(program: Command): void {
  const cmd = program
    .command('attach')
    .description('attach files to an existing manifest as a referrer artifact (OCI 1.1 subject; referrers API or the sha256-<hex> tag schema)')
    .argument('<reference>', 'the subject: host[:port]/repo:tag, host[:port]/repo@sha256:... or oci:DIR[:tag]')
    .argument('[files...]', 'FILE[:TYPE] to attach; TYPE defaults to application/vnd.oci.image.layer.v1.tar')
    .requiredOption('--artifact-type <type>', 'artifactType of the referrer (required), e.g. application/vnd.example.sig')
    .option('-a, --annotation <key=value>', 'manifest annotation (repeatable)', collect, [])
    .option('--annotation-file <file>', 'JSON annotations: {"$manifest": {...}, "<file title>": {...}}')
    .option('--concurrency <n>', 'blobs uploaded at once', '5');
  addRemoteOptions(cmd, { layout: true });
  cmd.addHelpText('after', '\nExamples:\n  regfs attach --artifact-type application/vnd.example.sig localhost:5000/hello:v1 sig.json:application/json\n');
  cmd.action(
    action(async (ctx, refArg: string, files: string[]) => {
      const o = ctx.opts as typeof ctx.opts & { artifactType: string; annotation: string[]; annotationFile?: string; concurrency: string };
      const ref = ctx.reference(refArg);
      const reference = requireTagOrDigest(ref, refArg);
      const concurrency = parseIntInRange(o.concurrency, '--concurrency', 1, 64);
      const repo = ctx.repository(ref);
      const subject = await repo.resolve(reference);
      const packed = await packArtifact({ files: files.map(parseFileArg), artifactType: o.artifactType, annotations: parseAnnotationArgs(o.annotation), annotationFile: o.annotationFile }).catch((err: unknown) => {
        if (isRegfsError(err, 'UNSAFE_PATH')) throw new RegfsError('INVALID_ARGUMENT', err.message, { cause: err });
        throw err;
      });
      const attached = withSubject(packed, subject);
      const desc = await pushArtifact(repo, attached, [], { concurrency });
      const shown = digestRef(ref, desc.digest);
      ctx.out.result(
        { reference: shown, mediaType: desc.mediaType, digest: desc.digest, size: desc.size, artifactType: o.artifactType, subject: { reference: digestRef(ref, subject.digest), mediaType: subject.mediaType, digest: subject.digest, size: subject.size } },
        [`Attached to [${ref.kind === 'remote' ? 'registry' : 'oci-layout'}] ${digestRef(ref, subject.digest)}`, `Digest: ${desc.digest}`],
      );
    }),
  );
}

interface JsonReferrer {
  reference: string;
  mediaType: string;
  digest: string;
  size: number;
  artifactType: string;
  annotations?: Record<string, string>;
  manifests?: JsonReferrer[];
}

function toJson(ref: Reference, nodes: ReferrerNode[]): JsonReferrer[] {
  return nodes.map((n) => ({
    reference: digestRef(ref, n.desc.digest),
    mediaType: n.desc.mediaType,
    digest: n.desc.digest,
    size: n.desc.size,
    artifactType: n.desc.artifactType ?? '',
    ...(n.desc.annotations ? { annotations: n.desc.annotations } : {}),
    manifests: toJson(ref, n.referrers),
  }));
}

/** treeLines renders referrers the way oras discover's tree does: grouped by artifact type, then digests. */
export function treeLines(nodes: ReferrerNode[], indent = ''): string[] {
  const groups = new Map<string, ReferrerNode[]>();
  for (const n of nodes) {
    const t = n.desc.artifactType ?? '<unknown>';
    groups.set(t, [...(groups.get(t) ?? []), n]);
  }
  const out: string[] = [];
  const types = [...groups.keys()];
  types.forEach((t, i) => {
    const lastT = i === types.length - 1;
    out.push(`${indent}${lastT ? '└── ' : '├── '}${t}`);
    const inT = indent + (lastT ? '    ' : '│   ');
    const members = groups.get(t)!;
    members.forEach((n, j) => {
      const last = j === members.length - 1;
      out.push(`${inT}${last ? '└── ' : '├── '}${n.desc.digest}`);
      out.push(...treeLines(n.referrers, inT + (last ? '    ' : '│   ')));
    });
  });
  return out;
}

function flatten(nodes: ReferrerNode[]): Descriptor[] {
  return nodes.flatMap((n) => [n.desc, ...flatten(n.referrers)]);
}

/** registerDiscover adds `regfs discover` (oras discover): the referrers of a manifest, as a tree, table or JSON. */
export function registerDiscover(program: Command): void {
  const cmd = program
    .command('discover')
    .description('list the referrers of a manifest (referrers API, else the sha256-<hex> tag schema), recursively')
    .argument('<reference>', 'host[:port]/repo:tag, host[:port]/repo@sha256:... or oci:DIR[:tag]')
    .option('--artifact-type <type>', 'only referrers of this artifactType (first level)')
    .option('--depth <n>', 'levels of referrers to follow (default: all)');
  addRemoteOptions(cmd, { layout: true });
  // discover's --format also knows tree (the default) and table, as oras discover does: widen the shared option in place.
  const fmt = cmd.options.find((x) => x.long === '--format');
  if (fmt) fmt.choices(['tree', 'table', 'json']).default('tree');
  cmd.addHelpText('after', '\nExamples:\n  regfs discover localhost:5000/hello:v1\n  regfs discover localhost:5000/hello:v1 --format json --artifact-type application/vnd.example.sig\n');
  cmd.action(
    action(async (ctx, refArg: string) => {
      const o = ctx.opts as Omit<typeof ctx.opts, 'format'> & { artifactType?: string; depth?: string; format: string };
      const ref = ctx.reference(refArg);
      const reference = requireTagOrDigest(ref, refArg);
      const depth = o.depth === undefined ? 0 : parseIntInRange(o.depth, '--depth', 1, 1000);
      const repo = ctx.repository(ref);
      const subject = await repo.resolve(reference);
      const nodes = await referrerTree(repo, subject, { artifactType: o.artifactType, depth });
      if (o.format === 'json') {
        const root = { reference: digestRef(ref, subject.digest), mediaType: subject.mediaType, digest: subject.digest, size: subject.size, manifests: toJson(ref, nodes) };
        ctx.out.raw(JSON.stringify(root, null, 2) + '\n');
      } else if (o.format === 'table') {
        const rows = flatten(nodes).map((d) => [d.digest, d.artifactType ?? '<unknown>']);
        ctx.out.raw(['Digest' + ' '.repeat(66) + 'Artifact Type', ...rows.map(([d, t]) => `${d!.padEnd(72)}${t}`)].join('\n') + '\n');
      } else {
        ctx.out.raw([digestRef(ref, subject.digest), ...treeLines(nodes)].join('\n') + '\n');
      }
    }),
  );
}

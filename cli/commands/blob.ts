import type { Command } from 'commander';
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { pipeline } from 'node:stream/promises';
import { writeStreamAtomic } from '../../util/fs-atomic.js';
import { RegfsError } from '../../util/errors.js';
import { isMediaType, type Descriptor } from '../../registry/descriptor.js';
import { referenceString } from '../../registry/reference.js';
import { addRemoteOptions } from '../context.js';
import { confirm } from '../confirm.js';
import { action } from '../run.js';

function sizeFlag(v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!/^\d+$/.test(v) || !Number.isSafeInteger(n)) throw new RegfsError('INVALID_ARGUMENT', `invalid --size ${JSON.stringify(v)}: expected a byte count`);
  return n;
}

/** registerBlob adds `regfs blob fetch|push|delete`. */
export function registerBlob(program: Command): void {
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
      const size = sizeFlag(o.size) ?? (await r.statBlob(ref.digest)).size;
      const src = await r.fetchBlob({ mediaType: 'application/octet-stream', digest: ref.digest, size });
      if (o.output === '-') await pipeline(src, process.stdout);
      else await writeStreamAtomic(src, o.output);
      if (o.output !== '-') ctx.out.result({ digest: ref.digest, size, output: o.output }, `Downloaded ${ref.digest} to ${o.output}`);
    }),
  );

  const bpush = blob
    .command('push')
    .description('upload a file (or - for standard input, with --size) as a blob; prints its digest')
    .argument('<reference>', 'host[:port]/repo or host[:port]/repo@sha256:... (then the bytes must match it)')
    .argument('<file>', 'file to upload, or - for standard input')
    .option('--media-type <type>', 'media type shown in the descriptor', 'application/octet-stream')
    .option('--size <n>', 'byte count (required for standard input; checked for a file)')
    .option('--descriptor', 'print the blob descriptor instead');
  addRemoteOptions(bpush, { layout: true });
  bpush.addHelpText('after', '\nExample:\n  regfs blob push localhost:5000/samples/blobs ./data.bin --descriptor\n');
  bpush.action(
    action(async (ctx, input: string, file: string) => {
      const o = ctx.opts as typeof ctx.opts & { mediaType: string; size?: string; descriptor?: boolean };
      if (!isMediaType(o.mediaType)) throw new RegfsError('INVALID_ARGUMENT', `invalid --media-type ${JSON.stringify(o.mediaType)}: expected type/subtype`);
      const ref = ctx.reference(input);
      if (ref.tag) throw new RegfsError('INVALID_REFERENCE', `blob push ${input}: blobs have no tags; give ${referenceString({ ...ref, tag: undefined })}`);
      let size = sizeFlag(o.size);
      if (file === '-') {
        if (size === undefined) throw new RegfsError('INVALID_ARGUMENT', 'blob push from standard input needs --size <bytes>');
      } else {
        const st = await stat(file).catch(() => {
          throw new RegfsError('INVALID_ARGUMENT', `blob push: cannot read ${file}: no such file`);
        });
        if (size !== undefined && size !== st.size) throw new RegfsError('INVALID_ARGUMENT', `--size ${size} does not match ${file} (${st.size} bytes)`);
        size = st.size;
      }
      const open = () => (file === '-' ? process.stdin : createReadStream(file));
      const r = ctx.repository(ref, { create: true });
      let desc: Descriptor;
      let result: string;
      if (ref.digest) {
        desc = { mediaType: o.mediaType, digest: ref.digest, size: size! };
        result = await r.pushBlob(desc, open);
      } else {
        const got = await r.pushStream(open(), size);
        desc = { mediaType: o.mediaType, digest: got.digest, size: got.size };
        result = 'pushed';
      }
      if (o.descriptor) return ctx.out.raw(JSON.stringify(desc) + '\n');
      const shown = referenceString({ ...ref, digest: desc.digest });
      ctx.out.result({ reference: shown, result, ...desc }, [`${result === 'exists' ? 'Exists' : 'Pushed'} [${ref.kind === 'remote' ? 'registry' : 'oci-layout'}] ${shown}`, `Digest: ${desc.digest}`]);
    }),
  );

  const bdel = blob
    .command('delete')
    .description('delete a blob by digest (asks first)')
    .argument('<reference>', 'host[:port]/repo@sha256:...')
    .option('-f, --force', 'delete without asking (needed when standard input is not a terminal)');
  addRemoteOptions(bdel, { layout: true });
  bdel.addHelpText('after', '\nExample:\n  regfs blob delete localhost:5000/samples/blobs@sha256:<hex> --force\n');
  bdel.action(
    action(async (ctx, input: string) => {
      const o = ctx.opts as typeof ctx.opts & { force?: boolean };
      const ref = ctx.reference(input);
      if (!ref.digest) throw new RegfsError('INVALID_REFERENCE', `blob delete needs a digest: ${input}@sha256:<hex>`);
      const r = ctx.repository(ref);
      const desc = await r.statBlob(ref.digest);
      const shown = referenceString(ref);
      if (!(await confirm(`Are you sure you want to delete the blob ${JSON.stringify(ref.digest)}?`, { force: o.force, what: `blob delete ${shown}` }))) {
        process.stderr.write('Operation cancelled.\n');
        return;
      }
      await r.deleteBlob(desc);
      ctx.out.result({ deleted: shown, digest: ref.digest, size: desc.size }, `Deleted ${shown}`);
    }),
  );
}

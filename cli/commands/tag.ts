import type { Command } from 'commander';
import { RegfsError } from '../../util/errors.js';
import { isTag, referenceString } from '../../registry/reference.js';
import { addFormatOption, addRemoteOptions, requireTagOrDigest } from '../context.js';
import { action } from '../run.js';
import { VERSION } from '../version.js';

/** registerTag adds `regfs tag SRC TAG...`: push the same manifest bytes under new tags. */
export function registerTag(program: Command): void {
  const tag = program
    .command('tag')
    .description('tag a manifest under more tags (the same bytes, so the same digest)')
    .argument('<source>', 'host[:port]/repo:tag or @digest, or oci:DIR:tag')
    .argument('<tags...>', 'new tags (a,b or several arguments)');
  addRemoteOptions(tag, { layout: true });
  tag.addHelpText('after', '\nExample:\n  regfs tag localhost:5000/samples/artifact:1.0 stable latest\n');
  tag.action(
    action(async (ctx, input: string, raw: string[]) => {
      const tags = raw.flatMap((t) => t.split(',')).filter(Boolean);
      for (const t of tags) if (!isTag(t)) throw new RegfsError('INVALID_REFERENCE', `invalid tag ${JSON.stringify(t)}: tags are [A-Za-z0-9_][A-Za-z0-9._-]{0,127}`);
      const ref = ctx.reference(input);
      const r = ctx.repository(ref);
      const m = await r.fetchManifest(requireTagOrDigest(ref, input));
      if (ctx.out.format === 'text') process.stderr.write(`Tagging [${ref.kind === 'remote' ? 'registry' : 'oci-layout'}] ${referenceString(ref)}\n`);
      await r.pushManifest(m.bytes, m.descriptor.mediaType, tags);
      ctx.out.result({ source: referenceString(ref), digest: m.descriptor.digest, tags }, tags.map((t) => `Tagged ${t}`));
    }),
  );
}

/** registerVersion adds `regfs version`. */
export function registerVersion(program: Command): void {
  const cmd = program.command('version').description('print the regfs version, Node.js version and platform');
  addFormatOption(cmd);
  cmd.action(
    action(async (ctx) => {
      const info = { version: VERSION, node: process.version, platform: `${process.platform}/${process.arch}` };
      ctx.out.result(info, [`Version:  ${info.version}`, `Node:     ${info.node}`, `Platform: ${info.platform}`]);
    }),
  );
}

import type { Command } from 'commander';
import path from 'node:path';
import { RegfsError } from '../../util/errors.js';
import { ExitCode } from '../exit-codes.js';
import { action, exitState } from '../run.js';
import type { RoundReport, RoundsReply, SyncPairStatus } from '../../daemon/protocol.js';
import { client, renderSyncPair, socketOption } from './daemon.js';
import { parseSeconds } from '../parse.js';

function renderRound(r: RoundReport): string {
  const parts = [
    r.pulled.length ? `pulled ${r.pulled.join(', ')}` : '',
    r.queued.length ? `queued for push ${r.queued.join(', ')}` : '',
    r.conflicts.length ? `conflicts on ${r.conflicts.join(', ')}` : '',
    r.deletedLocal.length ? `deleted locally ${r.deletedLocal.join(', ')}` : '',
    r.deletedRemote.length ? `deleted in the registry ${r.deletedRemote.join(', ')}` : '',
  ].filter(Boolean);
  return `${r.local} <-> ${r.repository}: ${parts.length ? parts.join('; ') : 'in step'}${r.error ? `; error: ${r.error}` : ''}`;
}

/** registerSync adds `regfs sync add|ls|rm|now`: two-way sync pairs of the running daemon. */
export function registerSync(program: Command): void {
  const sync = program.command('sync').description('pair local folders with repositories in the running daemon: LOCAL_DIR/<tag>/<files> <-> REPO:<tag>');
  sync.addHelpText('after', '\nSee docs/sync.md for the rules (base, conflicts, deletions).\n');

  const add = socketOption(
    sync
      .command('add')
      .description('sync LOCAL_DIR with REPO (saved in the daemon\'s --config file, when it has one)')
      .argument('<local_dir>', 'local folder holding one folder per tag (created if missing)')
      .argument('<repo>', 'host[:port]/repository, or oci:DIR/NAME for the OCI layout DIR/NAME')
      .option('--tags <pattern>', 'only tags matching this glob (* and ?; alternatives separated by commas)', '*')
      .option('--direction <dir>', 'both, up (local to registry only) or down (registry to local only)', 'both')
      .option('--interval <seconds>', 'seconds between rounds (at least 1)', '30')
      .option('--propagate-deletes', 'a tag deleted on one side is deleted on the other (default: it is restored)')
      .option('--plain-http', 'use plain HTTP for a non-loopback registry')
      .option('--no-plain-http', 'use HTTPS even for a loopback registry')
      .option('--insecure', 'use HTTPS but skip TLS certificate verification')
      .option('--ca-file <file>', 'trust the CA certificates in this PEM file')
      .option('--registry-config <file>', 'docker-compatible credentials file'),
  );
  add.addHelpText('after', '\nExamples:\n  regfs sync add ~/models localhost:5000/team/models\n  regfs sync add /srv/releases registry.example.com/app/releases --tags "v*" --direction down --interval 60\n');
  add.action(
    action(async (ctx, local: string, repo: string) => {
      const o = ctx.opts as typeof ctx.opts & { socket?: string; tags: string; direction: string; interval: string; propagateDeletes?: boolean; caFile?: string; registryConfig?: string };
      if (!['both', 'up', 'down'].includes(o.direction)) throw new RegfsError('INVALID_ARGUMENT', `invalid --direction ${JSON.stringify(o.direction)}: expected both, up or down`);
      const interval = parseSeconds(o.interval, '--interval');
      const body = {
        local: path.resolve(local),
        repository: repo.startsWith('oci:') ? `oci:${path.resolve(repo.slice(4))}` : repo,
        tags: o.tags,
        direction: o.direction,
        intervalSeconds: interval,
        propagateDeletes: o.propagateDeletes === true,
        ...(o.plainHttp !== undefined ? { plainHttp: o.plainHttp } : {}),
        ...(o.insecure ? { insecure: true } : {}),
        ...(o.caFile ? { caFile: path.resolve(o.caFile) } : {}),
        ...(o.registryConfig ? { registryConfig: path.resolve(o.registryConfig) } : {}),
      };
      const r = await (await client(o.socket)).request<{ added: string; repository: string; savedTo: string | null }>('POST', '/syncs', body);
      ctx.out.result(r, `Syncing ${r.added} <-> ${r.repository}${r.savedTo ? ` (saved in ${r.savedTo})` : ' (not saved: the daemon runs without --config)'}`);
    }),
  );

  const ls = socketOption(sync.command('ls').description('list the sync pairs with their last round, last error and recent conflicts'));
  ls.addHelpText('after', '\nExamples:\n  regfs sync ls\n  regfs sync ls --format json\n');
  ls.action(
    action(async (ctx) => {
      const o = ctx.opts as typeof ctx.opts & { socket?: string };
      const r = await (await client(o.socket)).request<{ syncs: SyncPairStatus[] }>('GET', '/syncs');
      ctx.out.result(r, r.syncs.length ? r.syncs.flatMap((p) => renderSyncPair(p, '')) : ['(no sync pairs)']);
    }),
  );

  const rm = socketOption(sync.command('rm').description('stop syncing LOCAL_DIR and forget its base (files on both sides stay)').argument('<local_dir>', 'the local folder of a pair'));
  rm.addHelpText('after', '\nExample:\n  regfs sync rm ~/models\n');
  rm.action(
    action(async (ctx, local: string) => {
      const o = ctx.opts as typeof ctx.opts & { socket?: string };
      const r = await (await client(o.socket)).request<{ removed: string; savedTo: string | null }>('POST', '/syncs/remove', { local: path.resolve(local) });
      ctx.out.result(r, `Stopped syncing ${r.removed}${r.savedTo ? ` (removed from ${r.savedTo})` : ''}`);
    }),
  );

  const now = socketOption(sync.command('now').description('run a round now (of LOCAL_DIR, or of every pair) and print what it did; pushes finish in the queue').argument('[local_dir]', 'the local folder of a pair'));
  now.addHelpText('after', '\nExamples:\n  regfs sync now\n  regfs sync now ~/models\n');
  now.action(
    action(async (ctx, local?: string) => {
      const o = ctx.opts as typeof ctx.opts & { socket?: string };
      const r = await (await client(o.socket)).request<RoundsReply>('POST', '/syncs/now', local ? { local: path.resolve(local) } : {});
      ctx.out.result(r, r.rounds.length ? r.rounds.map(renderRound) : ['(no sync pairs)']);
      if (r.rounds.some((x) => x.error)) exitState.code = ExitCode.failure;
    }),
  );
}

import type { Command } from 'commander';
import { RegfsError } from '../../util/errors.js';
import { installFatalHandlers } from '../../util/fatal.js';
import { createLogger, guardStdio, openLogFile } from '../../util/log.js';
import { ExitCode } from '../exit-codes.js';
import type { DaemonStatus, SyncPairStatus } from '../../daemon/protocol.js';
import { humanBytes } from '../output.js';
import { addFormatOption } from '../context.js';
import { loadFuseModule } from '../fuse-binding.js';
import { action } from '../run.js';
import { parseIntInRange, parseSeconds, parseSize } from '../parse.js';
import { accessFromFlags, addAccessOptions, type AccessFlags } from './mount.js';

/** registerDaemon adds `regfs daemon` (foreground service) and the commands that control it over its socket. */
export function registerDaemon(program: Command): void {
  const d = program
    .command('daemon')
    .description('run mounts, staging watchers and the push queue in the foreground (what the systemd unit starts)')
    .option('--config <file>', 'JSON config with any number of mounts (see systemd/config.example.json)')
    .option('--source <source>', 'HOST, HOST/NAMESPACE, HOST/REPO, HOST/REPO:TAG or oci:DIR for a single mount')
    .option('--mountpoint <dir>', 'where to mount --source')
    .option('--repository <name...>', 'show these repositories at the root of --source even when the registry does not list them')
    .option('--staging <dir>', 'staging folder: STAGING/<repository>/<tag>/<files> is pushed as <repository>:<tag>; makes the mount writable')
    .option('--allow-delete', 'let rm and rmdir through the mount remove published files and delete tags (needs --staging)')
    .option('--cache-dir <dir>', 'shared blob cache (default $XDG_CACHE_HOME/regfs, /var/cache/regfs for root)')
    .option('--state-dir <dir>', 'push journal and state (default $XDG_STATE_HOME/regfs, /var/lib/regfs for root)')
    .option('--socket <path>', 'control socket (default $XDG_RUNTIME_DIR/regfs/control.sock, /run/regfs/control.sock for root)')
    .option('--plain-http', 'use plain HTTP for a non-loopback --source')
    .option('--no-plain-http', 'use HTTPS even for a loopback --source')
    .option('--registry-config <file>', 'docker-compatible credentials file for --source')
    .option('--metadata-ttl <seconds>', 'how long tag and repository listings are trusted (default 30)')
    .option('--cache-max-size <size>', 'evict least recently used blobs above this size, e.g. 10G')
    .option('--quiet-period <seconds>', 'how long staged files must be unchanged before they are pushed (default 2)')
    .option('--log-format <format>', 'text or json (for journald pipelines)', 'text')
    .option('--read-streams <n>', 'range fetches of one file that may stream ahead of a sequential reader at once (1-16; default 4)')
    .option('--log-level <level>', 'debug, info, warn or error', 'info')
    .option('--log-file <file>', 'append the log to FILE (created 0600) instead of stderr');
  // Access flags are defaults for every mount of the daemon (a mount's own config keys win).
  addAccessOptions(d);
  d.addHelpText('after', '\nExamples:\n  regfs daemon --source localhost:5000 --mountpoint /srv/registry --staging /srv/staging\n  regfs daemon --config /etc/regfs/config.json --log-format json --allow-other\n');
  d.action(
    action(async (ctx) => {
      const opts = ctx.opts as unknown as AccessFlags & { logFile?: string;
        config?: string; source?: string; repository?: string[]; mountpoint?: string; staging?: string; allowDelete?: boolean; cacheDir?: string; stateDir?: string; socket?: string;
        plainHttp?: boolean; registryConfig?: string; metadataTtl?: string; cacheMaxSize?: string; readStreams?: string; quietPeriod?: string; logFormat: string; logLevel: string;
      };
      if (opts.logFormat !== 'text' && opts.logFormat !== 'json') throw new RegfsError('INVALID_ARGUMENT', `invalid --log-format ${opts.logFormat}: expected text or json`);
      if (!['debug', 'info', 'warn', 'error'].includes(opts.logLevel)) throw new RegfsError('INVALID_ARGUMENT', `invalid --log-level ${opts.logLevel}: expected debug, info, warn or error`);
      const { loadConfigFile, resolveConfig } = await import('../../daemon/settings.js');
      const { Daemon } = await loadFuseModule(() => import('../../daemon/daemon.js'));
      const file = opts.config ? await loadConfigFile(opts.config) : undefined;
      if (!opts.config && !opts.source) throw new RegfsError('INVALID_ARGUMENT', 'give --config FILE, or --source with --mountpoint');
      const config = resolveConfig(file, {
        ...(opts.source ? { source: opts.source } : {}),
        ...(opts.repository?.length ? { repositories: opts.repository } : {}),
        ...(opts.mountpoint ? { mountpoint: opts.mountpoint } : {}),
        ...(opts.staging ? { staging: opts.staging } : {}),
        ...(opts.allowDelete ? { allowDelete: true } : {}),
        ...(opts.cacheDir ? { cacheDir: opts.cacheDir } : {}),
        ...(opts.stateDir ? { stateDir: opts.stateDir } : {}),
        ...(opts.socket ? { socket: opts.socket } : {}),
        ...(opts.plainHttp !== undefined ? { plainHttp: opts.plainHttp } : {}),
        ...(opts.registryConfig ? { registryConfig: opts.registryConfig } : {}),
        ...(opts.metadataTtl ? { metadataTtlSeconds: parseSeconds(opts.metadataTtl, '--metadata-ttl') } : {}),
        ...(opts.cacheMaxSize ? { cacheMaxSize: parseSize(opts.cacheMaxSize, '--cache-max-size') } : {}),
        ...(opts.readStreams ? { readStreams: parseIntInRange(opts.readStreams, '--read-streams', 1, 16) } : {}),
        ...(opts.quietPeriod ? { quietSeconds: parseSeconds(opts.quietPeriod, '--quiet-period') } : {}),
        logFormat: opts.logFormat,
        logLevel: opts.logLevel as 'info',
        ...accessFromFlags(opts),
      } as never);
      // A service outlives its log reader: EPIPE/EIO on stdout or stderr only silences the log.
      guardStdio();
      const log = createLogger({ level: config.logLevel, format: config.logFormat, ...(opts.logFile ? { stream: openLogFile(opts.logFile) } : {}) });
      let started: { stop(): Promise<void> } | undefined;
      // A bug that escapes every handler still unmounts every mount before the exit (status 1).
      installFatalHandlers(log, { cleanup: async () => started?.stop(), exitCode: ExitCode.failure });
      const { ServiceNotifier } = await import('../../daemon/notify.js');
      const notifier = new ServiceNotifier(log);
      const daemon = await Daemon.start(config, { configFile: opts.config, log });
      started = daemon;
      let stopping = false;
      const stopped = new Promise<void>((resolve) => {
        const onStop = (sig: NodeJS.Signals): void => {
          if (stopping) return log.info(`received ${sig} again; still stopping`);
          stopping = true;
          log.info(`received ${sig}: finishing, unmounting`);
          void notifier.send({ stopping: true, status: `stopping (${sig}): finishing pushes, unmounting` });
          daemon.stop().then(resolve, (e: unknown) => {
            log.error(`stop: ${(e as Error).message}`);
            resolve();
          });
        };
        process.on('SIGINT', onStop);
        process.on('SIGTERM', onStop);
        process.on('SIGHUP', () => {
          void daemon.reload().then((r) => notifier.send({ status: r.ok ? `reloaded at ${r.time}: ${r.mounts} mounts` : `reload at ${r.time} failed: ${r.error ?? 'unknown error'}` }));
        });
      });
      // Ready (systemd's READY=1 for Type=notify) once every mount answers a stat, not merely once
      // mount(2) returned: units ordered After=regfs.service may read the mounts at once.
      for (;;) {
        const silent = await daemon.answering(30_000);
        if (stopping) break;
        if (!silent.length) {
          log.info('regfs daemon ready: every mount answers', { mounts: daemon.mountCount });
          await notifier.send({ ready: true, status: `serving ${daemon.mountCount} mount${daemon.mountCount === 1 ? '' : 's'}; control socket ${config.socket}` });
          break;
        }
        log.warn(`not ready yet: ${silent.join(', ')} do not answer`);
        await notifier.send({ status: `waiting for ${silent.join(', ')} to answer` });
      }
      await stopped;
      setTimeout(() => process.exit(process.exitCode ?? 0), 500).unref();
    }),
  );
}

type Client = { request<T>(method: string, path: string, body?: unknown): Promise<T> };

/** client opens the control client for --socket (or $REGFS_SOCKET, or the default). */
export async function client(socket: string | undefined): Promise<Client> {
  const { ControlClient, socketPathFrom } = await import('../daemon-client.js');
  return new ControlClient(socketPathFrom({ socket }));
}

/** socketOption adds --socket and --format to a command that talks to the daemon. */
export function socketOption(cmd: Command): Command {
  return addFormatOption(cmd.option('--socket <path>', 'control socket of the daemon (default: $REGFS_SOCKET, then the per-user default)'));
}

/** renderSyncPair is one pair in text: its settings, then its last round and recent conflicts, indented. */
export function renderSyncPair(p: SyncPairStatus, indent = '  '): string[] {
  const lines = [`${indent}${p.local} <-> ${p.repository}  (${p.direction}, every ${p.intervalSeconds}s, tags ${p.tags ?? '*'}${p.propagateDeletes ? ', deletes propagate' : ''})`];
  lines.push(`${indent}  ${p.syncedTags} tags in step; last round ${p.lastRound ?? 'not yet'}${p.lastError ? `; last error: ${p.lastError}` : ''}`);
  for (const c of p.conflicts) lines.push(`${indent}  conflict ${c.at}: ${c.tag} -> other version kept as ${c.kept}`);
  return lines;
}

function renderStatus(s: DaemonStatus): string[] {
  const lines = [`regfs daemon pid ${s.pid}`, 'Mounts:'];
  for (const m of s.mounts) {
    lines.push(`  ${m.source} -> ${m.mountpoint}${m.staging ? `  (staging ${m.staging})` : ''}`);
    const cat = m.catalog;
    if (cat && cat.state !== 'listed' && cat.state !== 'unknown') lines.push(`    catalog ${cat.state}: ${cat.reason ?? ''}; ${m.configured ?? 0} configured and ${m.found ?? 0} found repositories shown (${m.probes ?? 0} probes)`);
    const r = m.registry;
    if (r) lines.push(`    registry: ${r.requests} requests, ${r.tokenRequests} token requests; 429: ${r.rateLimited}, 503: ${r.unavailable}; ${r.retries} retries, waited ${(r.retryWaitMs / 1000).toFixed(1)} s`);
  }
  if (!s.mounts.length) lines.push('  (none)');
  const c = s.cache;
  lines.push(`Cache: ${c.blobs ?? 0} blobs, ${humanBytes(c.bytesOnDisk ?? 0)} on disk; hits ${c.hits ?? 0}, misses ${c.misses ?? 0}, fetched ${humanBytes(c.bytesFetched ?? 0)}, served ${humanBytes(c.bytesServed ?? 0)}, evictions ${c.evictions ?? 0}`);
  lines.push('Queue:');
  for (const q of s.queue) {
    lines.push(`  ${q.state.padEnd(9)} ${q.repository}:${q.tag}  (${q.target}, attempts ${q.attempts})${q.lastError ? `  ${q.lastError}` : ''}`);
    for (const k of q.skipped ?? []) lines.push(`    skipped ${JSON.stringify(k.path)}: ${k.reason}`);
  }
  if (!s.queue.length) lines.push('  (empty)');
  if (s.sync?.length) {
    lines.push('Sync:');
    for (const p of s.sync) lines.push(...renderSyncPair(p));
  }
  if (s.lastReload) lines.push(`Last reload (SIGHUP): ${s.lastReload.time} ${s.lastReload.ok ? `ok, ${s.lastReload.mounts} mounts` : `FAILED: ${s.lastReload.error ?? 'unknown error'}`}`);
  if (s.recentErrors.length) {
    lines.push('Recent errors:');
    for (const e of s.recentErrors.slice(-5)) lines.push(`  ${e.time} ${e.level} ${e.msg}`);
  }
  return lines;
}

/** registerControl adds status, mounts, refresh, rescan, retry and cache commands (they ask the running daemon). */
export function registerControl(program: Command): void {
  const status = socketOption(program.command('status').description('show mounts, cache statistics, the push queue and recent errors of the running daemon').option('-w, --watch', 'redraw every second until Ctrl-C (on a TTY)'));
  status.addHelpText('after', '\nExamples:\n  regfs status\n  regfs status --format json\n  regfs status --watch\n  regfs status --watch --format json   # one JSON object per line (NDJSON), every second\n');
  status.action(
    action(async (ctx) => {
      const o = ctx.opts as typeof ctx.opts & { socket?: string; watch?: boolean };
      const c = await client(o.socket);
      const once = async (): Promise<DaemonStatus> => c.request<DaemonStatus>('GET', '/status');
      if (!o.watch) {
        const s = await once();
        ctx.out.result(s, renderStatus(s));
        return;
      }
      for (;;) {
        const s = await once();
        // JSON: one object per line (NDJSON), so `| jq -c .` or a line reader takes each snapshot whole.
        if (ctx.out.format === 'json') process.stdout.write(JSON.stringify(s) + '\n');
        else {
          if (process.stdout.isTTY) process.stdout.write('\x1b[H\x1b[2J');
          ctx.out.result(s, renderStatus(s));
        }
        await new Promise((r) => setTimeout(r, 1000));
      }
    }),
  );

  const mounts = program.command('mounts').description('add, list and remove mounts of the running daemon');
  const add = socketOption(addAccessOptions(mounts.command('add').description('mount SOURCE at MOUNTPOINT in the running daemon').argument('<source>', 'HOST, HOST/NAMESPACE, HOST/REPO, HOST/REPO:TAG or oci:DIR').argument('<mountpoint>', 'an existing directory').option('--staging <dir>', 'staging folder to watch (makes the mount writable)').option('--repository <name...>', 'show these repositories at the root even when the registry does not list them').option('--allow-delete', 'let rm and rmdir through the mount remove published files and delete tags').option('--plain-http', 'use plain HTTP for a non-loopback registry').option('--no-plain-http', 'use HTTPS even for a loopback registry').option('--insecure', 'skip TLS certificate verification where HTTPS is used').option('--ca-file <file>', 'trust the CA certificates in this PEM file').option('--registry-config <file>', 'docker-compatible credentials file for this mount')));
  add.addHelpText('after', '\nExample:\n  regfs mounts add localhost:5000 /srv/registry --staging /srv/staging\n');
  add.action(
    action(async (ctx, source: string, mountpoint: string) => {
      const o = ctx.opts as typeof ctx.opts & AccessFlags & { socket?: string; staging?: string; allowDelete?: boolean; repository?: string[]; plainHttp?: boolean; insecure?: boolean; caFile?: string; registryConfig?: string };
      const path = await import('node:path');
      const access = accessFromFlags(o);
      // Modes travel as octal strings, as in the config file.
      const body = { ...access, ...Object.fromEntries((['umask', 'fileMode', 'dirMode'] as const).filter((k) => access[k] !== undefined).map((k) => [k, access[k]!.toString(8).padStart(4, '0')])) };
      const transport = {
        ...(o.plainHttp !== undefined ? { plainHttp: o.plainHttp } : {}),
        ...(o.insecure ? { insecure: true } : {}),
        ...(o.caFile ? { caFile: path.resolve(o.caFile) } : {}),
        ...(o.registryConfig ? { registryConfig: path.resolve(o.registryConfig) } : {}),
      };
      const r = await (await client(o.socket)).request<{ mounted: string; savedTo: string | null }>('POST', '/mounts', { source, mountpoint: path.resolve(mountpoint), ...(o.staging ? { staging: path.resolve(o.staging) } : {}), ...(o.allowDelete ? { allowDelete: true } : {}), ...(o.repository?.length ? { repositories: o.repository } : {}), ...transport, ...body });
      ctx.out.result(r, `Mounted ${source} at ${r.mounted}${r.savedTo ? ` (saved to ${r.savedTo})` : ' (not saved: the daemon has no --config file)'}`);
    }),
  );
  const ls = socketOption(mounts.command('ls').description('list the mounts of the running daemon'));
  ls.addHelpText('after', '\nExample:\n  regfs mounts ls\n');
  ls.action(
    action(async (ctx) => {
      const o = ctx.opts as typeof ctx.opts & { socket?: string };
      const r = await (await client(o.socket)).request<{ mounts: DaemonStatus['mounts'] }>('GET', '/mounts');
      ctx.out.result(r, r.mounts.map((m) => `${m.source}\t${m.mountpoint}${m.staging ? `\t${m.staging}` : ''}`));
    }),
  );
  const rm = socketOption(mounts.command('rm').description('unmount MOUNTPOINT in the running daemon').argument('<mountpoint>', 'a mountpoint of the daemon'));
  rm.addHelpText('after', '\nExample:\n  regfs mounts rm /srv/registry\n');
  rm.action(
    action(async (ctx, mountpoint: string) => {
      const o = ctx.opts as typeof ctx.opts & { socket?: string };
      const path = await import('node:path');
      const r = await (await client(o.socket)).request<{ unmounted: string; savedTo: string | null }>('POST', '/mounts/remove', { mountpoint: path.resolve(mountpoint) });
      ctx.out.result(r, `Unmounted ${r.unmounted}`);
    }),
  );

  const simple: Array<[string, string, string, string, (o: Record<string, unknown>, args: string[]) => Promise<[string, string, unknown?]>, string?]> = [
    ['refresh', 'drop cached tag and repository listings now (of PATH inside a mount, or all)', 'regfs refresh /srv/registry/samples/artifact', 'Refreshed', async (_o, a) => ['POST', '/refresh', a[0] ? { path: (await import('node:path')).resolve(a[0]) } : {}], '[path]'],
    ['rescan', 'scan every staging folder now', 'regfs rescan', 'Queued', async () => ['POST', '/rescan']],
    ['retry', 'requeue failed pushes', 'regfs retry', 'Requeued', async () => ['POST', '/retry']],
  ];
  for (const [name, desc, example, verb, req, arg] of simple) {
    const cmd = socketOption(program.command(name).description(desc));
    if (arg) cmd.argument(arg, 'a path inside a mount');
    cmd.addHelpText('after', `\nExample:\n  ${example}\n`);
    cmd.action(
      action(async (ctx, ...args: unknown[]) => {
        const o = ctx.opts as typeof ctx.opts & { socket?: string };
        const [method, p, body] = await req(o as Record<string, unknown>, args.filter((x): x is string => typeof x === 'string'));
        const r = await (await client(o.socket)).request<Record<string, unknown>>(method, p, body);
        ctx.out.result(r, `${verb}: ${Object.values(r).map(String).join(', ')}`);
      }),
    );
  }

  const cache = program.command('cache').description('inspect and prune the daemon\'s blob cache');
  const stats = socketOption(cache.command('stats').description('hits, misses, bytes fetched and served, evictions, blobs and bytes on disk'));
  stats.addHelpText('after', '\nExample:\n  regfs cache stats --format json\n');
  stats.action(
    action(async (ctx) => {
      const o = ctx.opts as typeof ctx.opts & { socket?: string };
      const s = await (await client(o.socket)).request<Record<string, number>>('GET', '/cache/stats');
      ctx.out.result(s, Object.entries(s).map(([k, v]) => `${k.padEnd(14)} ${/bytes/i.test(k) ? humanBytes(v) : v}`));
    }),
  );
  const prune = socketOption(cache.command('prune').description('evict least recently used blobs (never open ones) down to a size').option('--max-size <size>', 'target size, e.g. 5G (default: the configured maximum)'));
  prune.addHelpText('after', '\nExample:\n  regfs cache prune --max-size 5G\n');
  prune.action(
    action(async (ctx) => {
      const o = ctx.opts as typeof ctx.opts & { socket?: string; maxSize?: string };
      const r = await (await client(o.socket)).request<{ evicted: number; bytes: number }>('POST', '/cache/prune', o.maxSize ? { maxSize: parseSize(o.maxSize, '--max-size') } : {});
      ctx.out.result(r, `Evicted ${r.evicted} blobs (${humanBytes(r.bytes)})`);
    }),
  );
}

import type { Command } from 'commander';
import path from 'node:path';
import { invalidateCredentials } from '../../registry/credentials.js';
import { checkRepositories } from '../../registry/open-mount.js';
import { RegfsError } from '../../util/errors.js';
import { installFatalHandlers } from '../../util/fatal.js';
import { createLogger, guardStdio } from '../../util/log.js';
import { defaultPaths } from '../../util/paths.js';
import { ExitCode } from '../exit-codes.js';
import { parseSeconds, parseSize } from '../parse.js';
import { addRemoteOptions } from '../context.js';
import { action } from '../run.js';

/** registerMount adds `regfs mount` (foreground, like rclone mount) and `regfs unmount`. */
export function registerMount(program: Command): void {
  const cmd = program
    .command('mount')
    .description('mount a registry (or a folder of OCI layouts) read-only as a directory tree; runs in the foreground, Ctrl-C unmounts')
    .argument('<source>', 'registry host[:port], or oci:DIR (a folder of OCI image layouts)')
    .argument('<mountpoint>', 'an existing directory')
    .option('--cache-dir <dir>', 'blob cache directory (default $XDG_CACHE_HOME/regfs, /var/cache/regfs for root)')
    .option('--metadata-ttl <seconds>', 'how long tag and repository listings are trusted', '30')
    .option('--cache-max-size <size>', 'evict least recently used blobs above this size, e.g. 10G')
    .option('--min-free-space <size>', 'keep at least this much disk free in the cache filesystem', '1G')
    .option('--verify <mode>', 'lazy: serve ranges before the whole blob is verified; strict: only verified bytes', 'lazy')
    .option('--repository <name...>', 'show these repositories at the root even when the registry does not list them (no catalog)')
    .option('--allow-other', 'let other users read the mount (needs user_allow_other in /etc/fuse.conf for non-root)')
    .option('--log-format <format>', 'text or json', 'text')
    .option('--log-level <level>', 'debug, info, warn or error', 'info');
  addRemoteOptions(cmd, { credentials: false });
  cmd.addHelpText('after', '\nExamples:\n  regfs mount localhost:5000 /mnt/registry\n  regfs mount ghcr.io/myorg /mnt/myorg              # a namespace: its repositories at the root\n  regfs mount docker.io/library/alpine /mnt/alpine  # a repository: its tags at the root\n  regfs mount localhost:5000/samples/artifact:1.0 /mnt/a  # one artifact: its files at the root\n  regfs mount oci:./store ./mnt --cache-max-size 20G\n  ls /mnt/registry/samples/artifact/1.0/ && cat /mnt/registry/samples/artifact/1.0/artifact.txt\n');
  cmd.action(
    action(async (ctx, source: string, mountpoint: string) => {
      const o = ctx.opts as typeof ctx.opts & { repository?: string[]; cacheDir?: string; metadataTtl: string; cacheMaxSize?: string; minFreeSpace: string; verify: string; allowOther?: boolean; logFormat: string; logLevel: string };
      if (o.verify !== 'lazy' && o.verify !== 'strict') throw new RegfsError('INVALID_ARGUMENT', `invalid --verify ${o.verify}: expected lazy or strict`);
      if (o.logFormat !== 'text' && o.logFormat !== 'json') throw new RegfsError('INVALID_ARGUMENT', `invalid --log-format ${o.logFormat}: expected text or json`);
      if (!['debug', 'info', 'warn', 'error'].includes(o.logLevel)) throw new RegfsError('INVALID_ARGUMENT', `invalid --log-level ${o.logLevel}`);
      // Loaded on demand: push/pull never pay for the FUSE binding.
      const { serveMount } = await import('../../mount/serve.js');
      guardStdio();
      const log = createLogger({ level: o.debug ? 'debug' : (o.logLevel as 'info'), format: o.logFormat });
      let mounted: { stop(): Promise<void> } | undefined;
      installFatalHandlers(log, { cleanup: async () => mounted?.stop(), exitCode: ExitCode.failure });
      const opened = await ctx.mountSource(source, { log });
      const repositories = checkRepositories(o.repository ?? [], '--repository');
      const running = await serveMount({
        registry: opened.registry,
        root: opened.root,
        repositories,
        mountpoint,
        cacheDir: o.cacheDir ?? defaultPaths().cacheDir,
        metadataTtlMs: parseSeconds(o.metadataTtl, '--metadata-ttl') * 1000,
        cache: {
          maxSize: o.cacheMaxSize ? parseSize(o.cacheMaxSize, '--cache-max-size') : undefined,
          minFreeBytes: parseSize(o.minFreeSpace, '--min-free-space'),
          verify: o.verify,
        },
        log,
        allowOther: o.allowOther,
      });
      mounted = running;
      await new Promise<void>((resolve) => {
        let stopping = false;
        // Handlers stay installed while unmounting: a second Ctrl-C (a terminal signals the whole
        // process group, and npm forwards it too) must not kill the process halfway.
        const onSignal = (sig: NodeJS.Signals): void => {
          if (stopping) return log.info(`received ${sig} again; still unmounting`);
          stopping = true;
          log.info(`received ${sig}, unmounting`);
          void running.stop();
        };
        process.on('SIGINT', onSignal);
        process.on('SIGTERM', onSignal);
        process.on('SIGHUP', () => {
          running.metadata.dropListings();
          running.refresh();
          invalidateCredentials();
          log.info('SIGHUP: dropped cached listings; credentials are read again');
        });
        void running.done.then(resolve);
      });
      // fuse-native's thread can outlive the unmount; once everything is closed, do not linger.
      setTimeout(() => process.exit(process.exitCode ?? 0), 500).unref();
    }),
  );

  const un = program
    .command('unmount')
    .description('unmount a regfs mount (also a stale one left by a crash)')
    .argument('<mountpoint>', 'the mounted directory');
  un.addHelpText('after', '\nExample:\n  regfs unmount /mnt/registry\n');
  un.action(
    action(async (ctx, mountpoint: string) => {
      const { fusermountUnmount, procMountpoints } = await import('../../mount/mounter.js');
      const abs = path.resolve(mountpoint);
      const m = (await procMountpoints()).find((x) => x.mountpoint === abs);
      if (!m) throw new RegfsError('NOT_FOUND', `${abs} is not mounted`);
      await fusermountUnmount(abs);
      ctx.out.line(`Unmounted ${abs}`);
    }),
  );
}

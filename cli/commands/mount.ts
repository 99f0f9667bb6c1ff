import type { Command } from 'commander';
import path from 'node:path';
import { invalidateCredentials } from '../../registry/credentials.js';
import { checkRepositories } from '../../registry/open-mount.js';
import { RegfsError } from '../../util/errors.js';
import { installFatalHandlers } from '../../util/fatal.js';
import { createLogger, guardStdio, openLogFile } from '../../util/log.js';
import { defaultPaths } from '../../util/paths.js';
import { ExitCode } from '../exit-codes.js';
import type { MountAccess } from '../../daemon/settings.js';
import { DEFAULT_ATTR_POLICY, parseId, parseMode } from '../../mount/attr-policy.js';
import { parseSeconds, parseSize } from '../parse.js';
import { addFormatOption, addRemoteOptions } from '../context.js';
import { loadFuseModule } from '../fuse-binding.js';
import { action } from '../run.js';


/** AccessFlags are the --allow-other, --uid, --gid, --umask, --file-mode and --dir-mode values as commander gives them. */
export interface AccessFlags {
  allowOther?: boolean;
  uid?: string;
  gid?: string;
  umask?: string;
  fileMode?: string;
  dirMode?: string;
}

/** addAccessOptions adds who may use a mount and what it shows (rclone's spellings), on mount, daemon and mounts add. */
export function addAccessOptions(cmd: Command, allowOther = true): Command {
  if (allowOther) cmd.option('--allow-other', 'let other users read the mount, with the modes enforced (needs user_allow_other in /etc/fuse.conf for non-root)');
  return cmd
    .option('--uid <id>', 'owner shown for every file (default: the user running regfs)')
    .option('--gid <id>', 'group shown for every file (default: the group running regfs)')
    .option('--umask <octal>', 'permission bits removed from --file-mode and --dir-mode, e.g. 022 (default 000)')
    .option('--file-mode <octal>', 'permission bits of files (default 0644)')
    .option('--dir-mode <octal>', 'permission bits of directories (default 0755)');
}

/** accessFromFlags checks and converts the access flags (exit 2 on a bad value). */
export function accessFromFlags(o: AccessFlags): MountAccess {
  return {
    ...(o.allowOther ? { allowOther: true } : {}),
    ...(o.uid !== undefined ? { uid: parseId(o.uid, '--uid') } : {}),
    ...(o.gid !== undefined ? { gid: parseId(o.gid, '--gid') } : {}),
    ...(o.umask !== undefined ? { umask: parseMode(o.umask, '--umask') } : {}),
    ...(o.fileMode !== undefined ? { fileMode: parseMode(o.fileMode, '--file-mode') } : {}),
    ...(o.dirMode !== undefined ? { dirMode: parseMode(o.dirMode, '--dir-mode') } : {}),
  };
}

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
    .option('--read-streams <n>', 'range fetches of one file that may stream ahead of a sequential reader at once (1-16)', '4')
    .option('--verify <mode>', 'lazy: serve ranges before the whole blob is verified; strict: only verified bytes', 'lazy')
    .option('--repository <name...>', 'show these repositories at the root even when the registry does not list them (no catalog)')
    .option('--log-format <format>', 'text or json', 'text')
    .option('--log-level <level>', 'debug, info, warn or error', 'info')
    .option('--log-file <file>', 'append the log to FILE (created 0600) instead of stderr')
    .option('--socket <path>', 'answer regfs status, refresh and cache stats on this control socket (default: $REGFS_SOCKET if set, else none)');
  addAccessOptions(cmd);
  addRemoteOptions(cmd, { credentials: false });
  cmd.addHelpText('after', '\nExamples:\n  regfs mount localhost:5000 /mnt/registry\n  regfs mount ghcr.io/myorg /mnt/myorg              # a namespace: its repositories at the root\n  regfs mount docker.io/library/alpine /mnt/alpine  # a repository: its tags at the root\n  regfs mount localhost:5000/samples/artifact:1.0 /mnt/a  # one artifact: its files at the root\n  regfs mount oci:./store ./mnt --cache-max-size 20G\n  ls /mnt/registry/samples/artifact/1.0/ && cat /mnt/registry/samples/artifact/1.0/artifact.txt\n');
  cmd.action(
    action(async (ctx, source: string, mountpoint: string) => {
      const o = ctx.opts as typeof ctx.opts & AccessFlags & { logFile?: string; socket?: string; repository?: string[]; cacheDir?: string; metadataTtl: string; cacheMaxSize?: string; minFreeSpace: string; readStreams: string; verify: string; logFormat: string; logLevel: string };
      const access = accessFromFlags(o);
      if (o.verify !== 'lazy' && o.verify !== 'strict') throw new RegfsError('INVALID_ARGUMENT', `invalid --verify ${o.verify}: expected lazy or strict`);
      const readStreams = Number(o.readStreams);
      if (!Number.isInteger(readStreams) || readStreams < 1 || readStreams > 16) throw new RegfsError('INVALID_ARGUMENT', `invalid --read-streams ${o.readStreams}: expected a whole number from 1 to 16`);
      if (o.logFormat !== 'text' && o.logFormat !== 'json') throw new RegfsError('INVALID_ARGUMENT', `invalid --log-format ${o.logFormat}: expected text or json`);
      if (!['debug', 'info', 'warn', 'error'].includes(o.logLevel)) throw new RegfsError('INVALID_ARGUMENT', `invalid --log-level ${o.logLevel}`);
      // Loaded on demand: push/pull never pay for the FUSE binding.
      const { serveMount } = await loadFuseModule(() => import('../../mount/serve.js'));
      guardStdio();
      const log = createLogger({ level: o.debug ? 'debug' : (o.logLevel as 'info'), format: o.logFormat, ...(o.logFile ? { stream: openLogFile(o.logFile) } : {}) });
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
          readAheadStreams: readStreams,
        },
        log,
        allowOther: access.allowOther,
        attrs: { ...DEFAULT_ATTR_POLICY, ...access },
      });
      mounted = running;
      const { serveMountControl } = await import('../../daemon/mount-control.js');
      const { socketPathFrom } = await import('../daemon-client.js');
      // Only on a socket asked for: the default one belongs to the daemon, which must be able to start
      // while a foreground mount runs.
      const wanted = o.socket ?? process.env.REGFS_SOCKET;
      const control = wanted === undefined ? undefined : await serveMountControl(running, { source, mountpoint: running.mountpoint, startedAt: new Date() }, path.resolve(socketPathFrom({ socket: wanted })), { explicit: o.socket !== undefined, log }).catch(async (err: unknown) => {
        await running.stop();
        throw err;
      });
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
      await control?.close().catch(() => undefined);
      // fuse-native's thread can outlive the unmount; once everything is closed, do not linger.
      setTimeout(() => process.exit(process.exitCode ?? 0), 500).unref();
    }),
  );

  const un = program
    .command('unmount')
    .description('unmount a regfs mount (also a stale one left by a crash)')
    .argument('<mountpoint>', 'the mounted directory');
  addFormatOption(un);
  un.addHelpText('after', '\nExample:\n  regfs unmount /mnt/registry\n');
  un.action(
    action(async (ctx, mountpoint: string) => {
      const { fusermountUnmount, procMountpoints } = await import('../../mount/mounter.js');
      const abs = path.resolve(mountpoint);
      const m = (await procMountpoints()).find((x) => x.mountpoint === abs);
      if (!m) throw new RegfsError('NOT_FOUND', `${abs} is not mounted`);
      await fusermountUnmount(abs);
      ctx.out.result({ unmounted: abs }, `Unmounted ${abs}`);
    }),
  );
}

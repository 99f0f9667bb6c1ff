import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { REGFS_BIN, tempDir } from './cli.js';
import { fusermount } from './mount.js';

/** StartedDaemon is a `regfs daemon` child process with its directories. */
export interface StartedDaemon {
  child: ChildProcess;
  dirs: { base: string; mnt: string; staging: string; cache: string; state: string; socket: string };
  logs(): string;
  /** stop sends SIGTERM and waits for the exit code (SIGKILL after 15 s). */
  stop(): Promise<number | null>;
  /** crash is kill -9. */
  crash(): Promise<void>;
  /** waitLog waits until the log matches re. */
  waitLog(re: RegExp, ms?: number): Promise<void>;
  /** rssPeakKiB reads VmHWM of the daemon. */
  rssPeakKiB(): Promise<number>;
}

/** DaemonOptions choose the source and extra flags; directories default to fresh temp ones. */
export interface DaemonOptions {
  source: string;
  args?: string[];
  dirs?: Partial<StartedDaemon['dirs']>;
  env?: Record<string, string>;
  /** staging: false runs without a staging folder. */
  staging?: boolean;
  /** waitReady: false returns at once (for start failures). */
  waitReady?: boolean;
  /** nodeArgs go before the CLI path (e.g. `--import` of lab/fault-inject.js). */
  nodeArgs?: string[];
}

/** startDaemon runs `regfs daemon` for one mount with a staging folder and waits until it is ready. */
export async function startDaemon(t: { teardown(fn: () => unknown): void }, opts: DaemonOptions): Promise<StartedDaemon> {
  const base = opts.dirs?.base ?? (await tempDir(t, 'regfs-daemon-'));
  const dirs = {
    base,
    mnt: path.join(base, 'mnt'),
    staging: path.join(base, 'staging'),
    cache: path.join(base, 'cache'),
    state: path.join(base, 'state'),
    socket: path.join(base, 'run', 'control.sock'),
    ...opts.dirs,
  };
  await mkdir(dirs.mnt, { recursive: true }).catch(() => undefined);
  const args = [REGFS_BIN, 'daemon', '--source', opts.source, '--mountpoint', dirs.mnt, '--cache-dir', dirs.cache, '--state-dir', dirs.state, '--socket', dirs.socket, '--quiet-period', '0.5'];
  if (opts.staging !== false) args.push('--staging', dirs.staging);
  const child = spawn(process.execPath, [...(opts.nodeArgs ?? []), ...args, ...(opts.args ?? [])], { env: { ...process.env, ...opts.env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let logs = '';
  child.stdout!.on('data', (d: Buffer) => (logs += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (logs += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  const d: StartedDaemon = {
    child,
    dirs,
    logs: () => logs,
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 15_000);
      const code = await exited;
      clearTimeout(timer);
      return code;
    },
    crash: async () => {
      child.kill('SIGKILL');
      await exited;
    },
    waitLog: async (re, ms = 90_000) => {
      const until = Date.now() + ms;
      while (!re.test(logs)) {
        if (child.exitCode !== null) throw new Error(`daemon exited (${child.exitCode}) before ${re}: ${logs}`);
        if (Date.now() > until) throw new Error(`timed out waiting for ${re}: ${logs}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    },
    rssPeakKiB: async () => Number(/VmHWM:\s+(\d+)/.exec(await readFile(`/proc/${child.pid}/status`, 'utf8'))?.[1] ?? 0),
  };
  t.teardown(async () => {
    await d.stop();
    await fusermount(dirs.mnt);
  });
  if (opts.waitReady !== false) await d.waitLog(/regfs daemon running/);
  return d;
}

/** waitFor polls fn until it returns a truthy value or the deadline passes; `context` (e.g. the daemon's logs) goes into the timeout error. */
export async function waitFor<T>(fn: () => Promise<T | undefined | false>, ms: number, what: string, context?: () => string): Promise<T> {
  const until = Date.now() + ms;
  for (;;) {
    const v = await fn().catch(() => undefined);
    if (v) return v;
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}${context ? `\n${context()}` : ''}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

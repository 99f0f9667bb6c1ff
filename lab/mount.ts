import { spawn, type ChildProcess, execFile } from 'node:child_process';
import { mkdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { REGFS_BIN, tempDir } from './cli.js';

/** StartedMount is a `regfs mount` child process and its directories. */
export interface StartedMount {
  mnt: string;
  cacheDir: string;
  child: ChildProcess;
  logs(): string;
  /** stop sends SIGTERM, waits for exit (SIGKILL after 5 s), then lazily unmounts the exact mountpoint. */
  stop(): Promise<number | null>;
  /** crash kills the process with SIGKILL, leaving a stale mount behind. */
  crash(): Promise<void>;
}

/** isMounted tells whether a path is a mountpoint in /proc/mounts. */
export async function isMounted(mnt: string): Promise<boolean> {
  const text = await readFile('/proc/mounts', 'utf8');
  return text.split('\n').some((l) => l.split(' ')[1] === mnt);
}

/** fusermount runs `fusermount -uz` on exactly this mountpoint, ignoring "not mounted". */
export function fusermount(mnt: string): Promise<void> {
  return new Promise((resolve) => execFile('fusermount', ['-uz', mnt], () => resolve()));
}

/** startMount runs `regfs mount SOURCE MNT` in the background and waits until the mount is live. */
export async function startMount(
  t: { teardown(fn: () => unknown): void },
  source: string,
  opts: { args?: string[]; cacheDir?: string; mnt?: string; env?: Record<string, string>; nodeArgs?: string[] } = {},
): Promise<StartedMount> {
  const base = await tempDir(t, 'regfs-mnt-');
  const mnt = opts.mnt ?? path.join(base, 'mnt');
  const cacheDir = opts.cacheDir ?? path.join(base, 'cache');
  // A mountpoint given by the caller may be a stale mount (ENOTCONN): regfs must clear that itself.
  if (!opts.mnt) await mkdir(mnt, { recursive: true });
  const child = spawn(process.execPath, [...(opts.nodeArgs ?? []), REGFS_BIN, 'mount', source, mnt, '--cache-dir', cacheDir, ...(opts.args ?? [])], {
    env: { ...process.env, ...opts.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let logs = '';
  child.stdout!.on('data', (d: Buffer) => (logs += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (logs += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  let stopped = false;
  const m: StartedMount = {
    mnt,
    cacheDir,
    child,
    logs: () => logs,
    stop: async () => {
      if (!stopped) {
        stopped = true;
        if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
        const code = await exited;
        clearTimeout(timer);
        await fusermount(mnt);
        return code;
      }
      return exited;
    },
    crash: async () => {
      stopped = true;
      child.kill('SIGKILL');
      await exited;
    },
  };
  t.teardown(async () => {
    await m.stop();
    await fusermount(mnt);
  });
  const deadline = Date.now() + 60_000;
  // The log line, not /proc/mounts alone: a stale mount from a crash is listed there too.
  while (!/ mounted \S+ at /.test(logs) || !(await isMounted(mnt))) {
    if (child.exitCode !== null) throw new Error(`regfs mount exited with ${child.exitCode}: ${logs}`);
    if (Date.now() > deadline) throw new Error(`mount did not come up: ${logs}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return m;
}

/** sh runs a shell command (outside the mount process) and returns stdout, stderr and the exit code. */
export function sh(cmd: string, opts: { cwd?: string; timeoutMs?: number } = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile('bash', ['-c', cmd], { cwd: opts.cwd, timeout: opts.timeoutMs ?? 120_000, maxBuffer: 64 * 1024 * 1024 }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? ((err as { code: number }).code) : 1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

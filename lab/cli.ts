import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** REPO_ROOT is the repository root (tests run from dist/test/...). */
export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

/** REGFS_BIN is the CLI entry point under test. */
export const REGFS_BIN = path.join(REPO_ROOT, 'bin', 'regfs');

/** CliResult is what one CLI run printed and returned. */
export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** RunOptions tune one CLI run. */
export interface RunOptions {
  cwd?: string;
  env?: Record<string, string | undefined>;
  input?: string | Buffer;
  timeoutMs?: number;
}

/** runCli runs `bin/regfs ARGS` as a child process and collects its output and exit code. */
export function runCli(args: string[], opts: RunOptions = {}): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [REGFS_BIN, ...args], {
      cwd: opts.cwd ?? REPO_ROOT,
      env: { ...process.env, ...opts.env },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (d: Buffer) => out.push(d));
    child.stderr.on('data', (d: Buffer) => err.push(d));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`regfs ${args.join(' ')} timed out`));
    }, opts.timeoutMs ?? 60_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code: code ?? -1, stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(err).toString('utf8') });
    });
    child.stdin.end(opts.input ?? '');
  });
}

/** tempDir makes a temp directory removed at teardown. */
export async function tempDir(t: { teardown(fn: () => unknown): void }, prefix = 'regfs-test-'): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), prefix));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/**
 * cliEnv returns an environment with its own empty docker config directory and XDG config home
 * (podman/skopeo's ~/.config/containers/auth.json), so tests never read the user's credentials;
 * an inherited XDG_RUNTIME_DIR (podman's $XDG_RUNTIME_DIR/containers/auth.json) is replaced too.
 */
export async function cliEnv(t: { teardown(fn: () => unknown): void }): Promise<{ env: Record<string, string>; configDir: string }> {
  const configDir = await tempDir(t, 'regfs-dockercfg-');
  const xdg = await tempDir(t, 'regfs-xdg-');
  const env: Record<string, string> = { DOCKER_CONFIG: configDir, XDG_CONFIG_HOME: path.join(xdg, 'config') };
  if (process.env.XDG_RUNTIME_DIR) env.XDG_RUNTIME_DIR = path.join(xdg, 'run');
  return { env, configDir };
}

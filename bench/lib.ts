/**
 * Benchmark helpers: teardown scopes, timed child processes, RSS sampling, registry look-ups and
 * result formatting. Everything that touches the mount does so from child processes, so a hung
 * mount can never block this process (which also runs the counting proxy).
 */
import { spawn } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { REPO_ROOT } from '../lab/cli.js';

/** MiB is 2^20 bytes. */
export const MiB = 1024 * 1024;
/** GiB is 2^30 bytes. */
export const GiB = 1024 * MiB;

const t0 = Date.now();

/** progress prints a timestamped progress line to stderr (stdout carries only the table). */
export function progress(msg: string): void {
  const s = ((Date.now() - t0) / 1000).toFixed(1).padStart(6);
  process.stderr.write(`[bench ${s}s] ${msg}\n`);
}

/** Scope collects teardown functions (ava-like `t.teardown`) and runs them newest first on close(). */
export class Scope {
  private fns: Array<() => unknown> = [];
  private static readonly open = new Set<Scope>();

  constructor(readonly name: string) {
    Scope.open.add(this);
  }

  /** teardown registers fn to run at close(). */
  teardown(fn: () => unknown): void {
    this.fns.push(fn);
  }

  /** close runs every registered function newest first, logging (not throwing) failures; idempotent. */
  async close(): Promise<void> {
    Scope.open.delete(this);
    const fns = this.fns.reverse();
    this.fns = [];
    for (const fn of fns) {
      try {
        await fn();
      } catch (err) {
        progress(`cleanup (${this.name}) failed: ${(err as Error).message}`);
      }
    }
  }

  /** closeAll closes every scope still open, newest first (used on SIGINT/SIGTERM). */
  static async closeAll(): Promise<void> {
    for (const s of [...Scope.open].reverse()) await s.close();
  }
}

/** tempDirIn makes a temp dir under os.tmpdir() that `scope` removes at close. */
export async function tempDirIn(scope: Scope, prefix: string): Promise<string> {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), prefix));
  scope.teardown(() => fsp.rm(dir, { recursive: true, force: true }));
  return dir;
}

/** RunResult is what one child process did. */
export interface RunResult {
  /** seconds is the wall time from spawn to exit. */
  seconds: number;
  code: number | null;
  stdout: string;
  stderr: string;
}

/** RunOpts tune run(). */
export interface RunOpts {
  cwd?: string;
  /** stdoutFile sends stdout to this file (e.g. /dev/null) instead of capturing it. */
  stdoutFile?: string;
  timeoutMs?: number;
  /** check throws when the exit code is not 0 (default true). */
  check?: boolean;
  /** onSpawn gets the child pid right after spawn. */
  onSpawn?: (pid: number) => void;
}

/** run spawns argv (no shell), times it with hrtime, and kills it by pid on timeout. */
export async function run(argv: string[], opts: RunOpts = {}): Promise<RunResult> {
  const out = opts.stdoutFile !== undefined ? await fsp.open(opts.stdoutFile, 'w') : undefined;
  try {
    return await new Promise<RunResult>((resolve, reject) => {
      const start = process.hrtime.bigint();
      const child = spawn(argv[0]!, argv.slice(1), { cwd: opts.cwd, stdio: ['ignore', out ? out.fd : 'pipe', 'pipe'] });
      if (child.pid !== undefined) opts.onSpawn?.(child.pid);
      let stdout = '';
      let stderr = '';
      child.stdout?.on('data', (d: Buffer) => {
        if (stdout.length < 64 * MiB) stdout += d.toString();
      });
      child.stderr!.on('data', (d: Buffer) => {
        if (stderr.length < MiB) stderr += d.toString();
      });
      let timedOut = false;
      const timer = setTimeout(() => {
        timedOut = true;
        if (child.pid !== undefined) {
          try {
            process.kill(child.pid, 'SIGKILL');
          } catch {
            /* gone */
          }
        }
      }, opts.timeoutMs ?? 600_000);
      child.once('error', (err) => {
        clearTimeout(timer);
        reject(err);
      });
      child.once('close', (code) => {
        const seconds = Number(process.hrtime.bigint() - start) / 1e9;
        clearTimeout(timer);
        const r: RunResult = { seconds, code, stdout, stderr };
        if (timedOut) reject(new Error(`${argv.join(' ')} timed out after ${opts.timeoutMs ?? 600_000} ms`));
        else if ((opts.check ?? true) && code !== 0) reject(new Error(`${argv.join(' ')} exited ${code}: ${stderr.trim().slice(-2000)}`));
        else resolve(r);
      });
    });
  } finally {
    await out?.close();
  }
}

/** bestOf runs fn n times and returns the smallest result with all of them. */
export async function bestOf(n: number, fn: (i: number) => Promise<number>): Promise<{ best: number; all: number[] }> {
  const all: number[] = [];
  for (let i = 0; i < n; i++) all.push(await fn(i));
  return { best: Math.min(...all), all };
}

/** randomFile writes `size` bytes of /dev/urandom to file (head -c). */
export async function randomFile(file: string, size: number): Promise<void> {
  await run(['head', '-c', String(size), '/dev/urandom'], { stdoutFile: file, timeoutMs: 600_000 });
}

/** procStatusKiB reads VmRSS and VmHWM (KiB) of a pid from /proc; undefined once the process is gone. */
export async function procStatusKiB(pid: number): Promise<{ rss: number; hwm: number } | undefined> {
  let text: string;
  try {
    text = await fsp.readFile(`/proc/${pid}/status`, 'utf8');
  } catch {
    return undefined;
  }
  const field = (k: string): number => Number(new RegExp(`^${k}:\\s+(\\d+)\\s+kB`, 'm').exec(text)?.[1] ?? NaN);
  return { rss: field('VmRSS'), hwm: field('VmHWM') };
}

/** RssSampler polls a pid's VmRSS at a fixed interval and keeps the peak and every sample. */
export class RssSampler {
  private timer: NodeJS.Timeout | undefined;
  private busy = false;
  /** samples are [ms since start, RSS KiB]. */
  readonly samples: Array<[number, number]> = [];
  private started = 0;

  constructor(private readonly pid: number, private readonly intervalMs = 100) {}

  /** start begins sampling (one sample immediately). */
  start(): void {
    this.started = Date.now();
    const tick = (): void => {
      if (this.busy) return;
      this.busy = true;
      void procStatusKiB(this.pid).then((s) => {
        this.busy = false;
        if (s && Number.isFinite(s.rss)) this.samples.push([Date.now() - this.started, s.rss]);
      });
    };
    tick();
    this.timer = setInterval(tick, this.intervalMs);
  }

  /** stop ends sampling and returns the peak sampled RSS in KiB. */
  async stop(): Promise<number> {
    if (this.timer) clearInterval(this.timer);
    const s = await procStatusKiB(this.pid);
    if (s && Number.isFinite(s.rss)) this.samples.push([Date.now() - this.started, s.rss]);
    return Math.max(0, ...this.samples.map(([, r]) => r));
  }
}

/** sleep waits ms milliseconds. */
export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** round rounds v to `digits` decimals (for the JSON results). */
export function round(v: number, digits = 4): number {
  const f = 10 ** digits;
  return Math.round(v * f) / f;
}

/** waitSettled polls f until its value has not changed for quietMs (or maxMs passed). */
export async function waitSettled(f: () => number, quietMs: number, maxMs: number): Promise<number> {
  const deadline = Date.now() + maxMs;
  let last = f();
  let since = Date.now();
  while (Date.now() < deadline) {
    await sleep(200);
    const v = f();
    if (v !== last) {
      last = v;
      since = Date.now();
    } else if (Date.now() - since >= quietMs) break;
  }
  return f();
}

/** manifestLayers fetches a manifest from a registry and returns its layer descriptors. */
export async function manifestLayers(registryUrl: string, repo: string, ref: string): Promise<Array<{ digest: string; size: number; mediaType: string }>> {
  const res = await fetch(`${registryUrl}/v2/${repo}/manifests/${ref}`, {
    headers: { Accept: 'application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json' },
  });
  if (!res.ok) throw new Error(`GET manifest ${repo}:${ref}: HTTP ${res.status}`);
  const m = (await res.json()) as { layers?: Array<{ digest: string; size: number; mediaType: string }> };
  return m.layers ?? [];
}

/** catalogPages counts the pages of /v2/_catalog at page size n, following Link headers. */
export async function catalogPages(registryUrl: string, n = 1000): Promise<{ pages: number; repositories: string[] }> {
  let next: string | undefined = `/v2/_catalog?n=${n}`;
  let pages = 0;
  const repositories: string[] = [];
  while (next) {
    const res: Response = await fetch(new URL(next, registryUrl));
    if (!res.ok) throw new Error(`GET ${next}: HTTP ${res.status}`);
    const body = (await res.json()) as { repositories?: string[] | null };
    repositories.push(...(body.repositories ?? []));
    pages++;
    const link: string | null = res.headers.get('link');
    const m: RegExpExecArray | null = link ? /<([^>]+)>\s*;\s*rel="?next"?/i.exec(link) : null;
    next = m ? m[1] : undefined;
    if (pages > 10_000) throw new Error('catalog pagination does not end');
  }
  return { pages, repositories };
}

/** Result is one benchmark row: regfs's number, the peer's number, their ratio and the target. */
export interface Result {
  /** name is the benchmark id (also what --only selects). */
  name: string;
  /** regfs is regfs's measurement, in `unit`. */
  regfs: number;
  /** peer is the peer's measurement, in `peerUnit` (default `unit`). */
  peer: number;
  unit: string;
  peerUnit?: string;
  /** peerName says what the peer was (curl, cat, skopeo, bound, ...). */
  peerName: string;
  /** ratio is the benchmark's defined ratio (see target). */
  ratio: number;
  /** target is human readable, e.g. "ratio >= 0.9". */
  target: string;
  met: boolean;
  /** details are extra numbers for the JSON file (all trials, request breakdowns, ...); readBytes adds MiB/s to the table. */
  details: Record<string, unknown>;
}

function fmtNum(v: number, unit: string): string {
  if (!Number.isFinite(v)) return String(v);
  if (unit === 's') return v < 1 ? `${(v * 1000).toFixed(1)} ms` : `${v.toFixed(3)} s`;
  if (unit === 'MiB') return `${v.toFixed(v < 10 ? 2 : 1)} MiB`;
  if (unit === 'requests') return `${v} req`;
  return `${v} ${unit}`;
}

function fmtRatio(r: number): string {
  if (!Number.isFinite(r)) return String(r);
  if (r === 0) return '0';
  return r < 0.01 ? r.toExponential(2) : r.toFixed(3);
}

/** markdownTable renders the results as `| benchmark | regfs | peer | ratio | target | met |`. */
export function markdownTable(rows: Result[]): string {
  const lines = ['| benchmark | regfs | peer | ratio | target | met |', '|---|---|---|---|---|---|'];
  for (const r of rows) {
    const bytes = r.details.readBytes;
    const rate = (s: number): string => (r.unit === 's' && typeof bytes === 'number' && s > 0 ? ` (${(bytes / MiB / s).toFixed(0)} MiB/s)` : '');
    const extra = rate(r.regfs);
    const peerExtra = rate(r.peer);
    lines.push(
      `| ${r.name} | ${fmtNum(r.regfs, r.unit)}${extra} | ${r.peerName}: ${fmtNum(r.peer, r.peerUnit ?? r.unit)}${peerExtra} | ${fmtRatio(r.ratio)} | ${r.target} | ${r.met ? 'yes' : '**no**'} |`,
    );
  }
  return lines.join('\n');
}

/** machineInfo describes the run for the header: date (UTC), Node version, cores and kernel release (uname -r). */
export function machineInfo(): { date: string; node: string; cores: number; kernel: string; cpu: string; memGiB: number } {
  return {
    date: new Date().toISOString().slice(0, 10),
    node: process.version,
    cores: os.cpus().length,
    kernel: os.release(),
    cpu: os.cpus()[0]?.model.trim() ?? 'unknown',
    memGiB: Math.round(os.totalmem() / GiB),
  };
}

/**
 * nodeFetchRefSeconds runs bench/node-fetch-ref.ts (one undici GET into a new file `out` + sha256, issue 13's
 * reference) in its own process and returns its seconds (Node's start-up excluded); `out` is removed before
 * and after.
 */
export async function nodeFetchRefSeconds(url: string, out: string, timeoutMs = 900_000): Promise<number> {
  await fsp.rm(out, { force: true });
  try {
    const r = await run([process.execPath, path.join(REPO_ROOT, 'dist', 'bench', 'node-fetch-ref.js'), url, out], { timeoutMs });
    return (JSON.parse(r.stdout) as { seconds: number }).seconds;
  } finally {
    await fsp.rm(out, { force: true });
  }
}

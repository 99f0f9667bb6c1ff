/**
 * Opt-in read-path account (REGFS_READ_STATS=FILE): cheap counters and time sums per stage of a read,
 * written as JSON to FILE when the process exits. Off (every call a no-op check) unless the variable is
 * set. docs/performance.md explains each stage.
 */
import { writeFileSync } from 'node:fs';

/** Stage is one timed stage of the read path. */
export interface Stage {
  count: number;
  seconds: number;
  bytes: number;
  /** histogram of durations: counts of <0.1 ms, <1 ms, <10 ms, <100 ms, >=100 ms */
  hist: [number, number, number, number, number];
}

const file = process.env.REGFS_READ_STATS;
const stages = new Map<string, Stage>();
const counters = new Map<string, number>();
const started = performance.now();

/** readStatsOn tells whether the account is being kept. */
export const readStatsOn = Boolean(file);

/** statStart returns a start mark for statEnd (0 when the account is off). */
export function statStart(): number {
  return readStatsOn ? performance.now() : 0;
}

/** statEnd adds the time since `t0` (and `bytes`) to a stage. */
export function statEnd(stage: string, t0: number, bytes = 0): void {
  if (!readStatsOn) return;
  const ms = performance.now() - t0;
  let s = stages.get(stage);
  if (!s) {
    s = { count: 0, seconds: 0, bytes: 0, hist: [0, 0, 0, 0, 0] };
    stages.set(stage, s);
  }
  s.count++;
  s.seconds += ms / 1000;
  s.bytes += bytes;
  s.hist[ms < 0.1 ? 0 : ms < 1 ? 1 : ms < 10 ? 2 : ms < 100 ? 3 : 4]++;
}

/** statCount adds n to a counter. */
export function statCount(name: string, n = 1): void {
  if (readStatsOn) counters.set(name, (counters.get(name) ?? 0) + n);
}

/** readStatsSnapshot returns the account so far. */
export function readStatsSnapshot(): { wallSeconds: number; stages: Record<string, Stage>; counters: Record<string, number> } {
  return { wallSeconds: (performance.now() - started) / 1000, stages: Object.fromEntries(stages), counters: Object.fromEntries(counters) };
}

if (file) {
  process.on('exit', () => {
    try {
      writeFileSync(file, `${JSON.stringify(readStatsSnapshot(), null, 1)}\n`);
    } catch {
      /* the account is best effort */
    }
  });
}

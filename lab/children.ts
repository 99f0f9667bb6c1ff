import type { ChildProcess } from 'node:child_process';

const live = new Set<ChildProcess>();
let exitHookInstalled = false;

/**
 * liveChildren holds every server child (registry, nginx) this test process spawned, so they die
 * with it even when the runner exits early: the first `track` installs one exit hook that SIGKILLs
 * what is still running, by pid.
 */
export const liveChildren = {
  track(c: ChildProcess): void {
    if (!exitHookInstalled) {
      exitHookInstalled = true;
      process.once('exit', () => {
        for (const x of live) {
          try {
            if (x.pid !== undefined && x.exitCode === null && x.signalCode === null) process.kill(x.pid, 'SIGKILL');
          } catch {
            /* already gone */
          }
        }
      });
    }
    live.add(c);
  },
  forget(c: ChildProcess): void {
    live.delete(c);
  },
};

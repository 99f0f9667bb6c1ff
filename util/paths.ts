import os from 'node:os';
import path from 'node:path';

/** isInside tells whether `child` is `parent` or below it (both resolved the same way by the caller). */
export function isInside(parent: string, child: string): boolean {
  const rel = path.relative(parent, child);
  return rel === '' || (!rel.startsWith('..') && !path.isAbsolute(rel));
}

/** defaultPaths follows XDG; root without XDG variables uses /var/cache, /var/lib and /run. */
export function defaultPaths(env: NodeJS.ProcessEnv = process.env, uid: number = process.getuid?.() ?? 0): { cacheDir: string; stateDir: string; socket: string } {
  const home = os.homedir();
  const root = uid === 0;
  return {
    cacheDir: env.XDG_CACHE_HOME ? path.join(env.XDG_CACHE_HOME, 'regfs') : root ? '/var/cache/regfs' : path.join(home, '.cache', 'regfs'),
    stateDir: env.XDG_STATE_HOME ? path.join(env.XDG_STATE_HOME, 'regfs') : root ? '/var/lib/regfs' : path.join(home, '.local', 'state', 'regfs'),
    socket: env.XDG_RUNTIME_DIR ? path.join(env.XDG_RUNTIME_DIR, 'regfs', 'control.sock') : root ? '/run/regfs/control.sock' : path.join(os.tmpdir(), `regfs-${uid}`, 'control.sock'),
  };
}

import path from 'node:path';
import { RegfsError } from '../util/errors.js';
import type { Logger } from '../util/log.js';
import { isInside } from '../util/paths.js';
import type { RunningMount } from '../mount/serve.js';
import { startControlServer, type Routes } from './control.js';

/** MountControlInfo is what `regfs status` shows about a foreground mount. */
export interface MountControlInfo {
  source: string;
  mountpoint: string;
  startedAt: Date;
}

/**
 * mountRoutes are the control routes a foreground `regfs mount` answers, a subset of the daemon's with
 * the same shapes: ping, status (one mount, an empty push queue), mounts, refresh and cache stats.
 */
export function mountRoutes(running: RunningMount, info: MountControlInfo): Routes {
  const status = (): Record<string, unknown> => ({
    pid: process.pid,
    kind: 'mount',
    startedAt: info.startedAt.toISOString(),
    mounts: [{ source: info.source, mountpoint: running.mountpoint, staging: null, allowDelete: false, ...running.view() }],
    cache: running.blobs.stats(),
    metadata: running.metadata.stats(),
    queue: [],
    sync: [],
    recentErrors: [],
    lastReload: null,
  });
  return {
    'GET /ping': async () => ({ pid: process.pid }),
    'GET /status': async () => status(),
    'GET /mounts': async () => ({ mounts: status().mounts }),
    'POST /refresh': async (b) => {
      const p = typeof b === 'object' && b !== null && typeof (b as { path?: unknown }).path === 'string' ? path.resolve((b as { path: string }).path) : undefined;
      if (!p) {
        running.metadata.dropListings();
        running.refresh();
        return { refreshed: 'all listings' };
      }
      if (!isInside(running.mountpoint, p)) throw new RegfsError('NOT_FOUND', `${p} is not inside the mount ${running.mountpoint}`);
      const root = running.view().root;
      const prefix = root.kind === 'tree' ? root.prefix.split('/').filter(Boolean) : root.repository.split('/');
      const rel = [...prefix, ...path.relative(running.mountpoint, p).split(path.sep).filter(Boolean)];
      for (let i = 1; i <= rel.length; i++) running.metadata.dropListings(rel.slice(0, i).join('/'));
      if (!rel.length) running.metadata.dropListings();
      return { refreshed: p };
    },
    'GET /cache/stats': async () => running.blobs.stats(),
  };
}

/**
 * serveMountControl opens the control socket of a foreground mount. With an explicit socket a failure
 * is an error; on the default socket a running daemon (or another mount) keeps it, which is only logged.
 */
export async function serveMountControl(running: RunningMount, info: MountControlInfo, socket: string, opts: { explicit: boolean; log: Logger }): Promise<{ close(): Promise<void> } | undefined> {
  try {
    const server = await startControlServer(socket, mountRoutes(running, info), opts.log);
    opts.log.info(`control socket ${socket}: regfs status, refresh and cache stats answer`);
    return server;
  } catch (err) {
    if (opts.explicit) throw err;
    opts.log.info(`no control socket: ${(err as Error).message}`);
    return undefined;
  }
}

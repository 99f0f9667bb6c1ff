import { spawn } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { run, Scope, tempDirIn } from './lib.js';

const SERVER = path.join(path.dirname(fileURLToPath(import.meta.url)), 'fuse-floor-server.js');

/**
 * fuseFloorSeconds times `cat` of a `size`-byte file through a fresh mount of the trivial fuse-native
 * filesystem in fuse-floor-server (bytes copied from memory, nothing fetched, hashed or cached): the
 * fastest any fuse-native filesystem can serve a cold sequential read on this machine. With `alongside`,
 * that job runs at the same time as the `cat` and the time is until both have finished.
 */
export async function fuseFloorSeconds(size: number, alongside?: () => Promise<unknown>): Promise<number> {
  const scope = new Scope('fuse-floor');
  try {
    const mnt = path.join(await tempDirIn(scope, 'regfs-bench-floor-'), 'mnt');
    await fsp.mkdir(mnt);
    const child = spawn(process.execPath, [SERVER, mnt, String(size)], { stdio: ['ignore', 'pipe', 'pipe'] });
    scope.teardown(async () => {
      if (child.exitCode === null && child.pid !== undefined) {
        const exited = new Promise((resolve) => child.once('exit', resolve));
        child.kill('SIGTERM');
        await Promise.race([exited, new Promise((resolve) => setTimeout(resolve, 5000))]);
      }
      await run(['fusermount', '-uz', mnt], { check: false });
    });
    await new Promise<void>((resolve, reject) => {
      let out = '';
      let err = '';
      child.stdout!.on('data', (d: Buffer) => {
        out += d.toString();
        if (out.includes('mounted')) resolve();
      });
      child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
      child.once('exit', (code) => reject(new Error(`fuse floor server exited ${code}: ${err.trim()}`)));
      setTimeout(() => reject(new Error('fuse floor server did not mount within 30 s')), 30_000).unref();
    });
    const start = performance.now();
    await Promise.all([
      run(['cat', path.join(mnt, 'blob')], { stdoutFile: '/dev/null', timeoutMs: 300_000 }),
      alongside?.(),
    ]);
    return (performance.now() - start) / 1000;
  } finally {
    await scope.close();
  }
}

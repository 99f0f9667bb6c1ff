/**
 * read-probe: one file, every read-path reference in one run, with the mount's CPU seconds beside
 * each wall time (CPU time moves far less than wall time when other jobs share the cores).
 * Rows: curl, node-fetch-ref, fuse-native floor, both of those at once, cold mount read, the first re-read after it,
 * and a new mount over the warm blob cache. The mount runs with REGFS_READ_STATS, so its read-path
 * account (mount/read-stats.ts) is printed too.
 * Usage: node dist/bench/read-probe.js [SIZE_MIB]   (default 256); REGFS_PROBE_ARGS adds mount flags
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { startMount } from '../lab/mount.js';
import { startRegistry } from '../lab/registry.js';
import { REGFS_BIN } from '../lab/cli.js';
import { fuseFloorSeconds } from './fuse-floor.js';
import { MiB, Scope, manifestLayers, nodeFetchRefSeconds, randomFile, run, tempDirIn } from './lib.js';

async function cpuSeconds(pid: number): Promise<number> {
  const stat = await fsp.readFile(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(f[11]) + Number(f[12])) / 100;
}

const size = Number(process.argv[2] ?? 256) * MiB;
const scope = new Scope('probe');
const rows: Array<[string, number, number | undefined]> = [];
try {
  const dir = await tempDirIn(scope, 'regfs-probe-');
  const reg = await startRegistry(undefined, { flavour: 'plain' });
  scope.teardown(() => reg.stop());
  await randomFile(path.join(dir, 'big.bin'), size);
  await run([process.execPath, REGFS_BIN, 'push', `${reg.host}/probe/big:v1`, 'big.bin'], { cwd: dir, timeoutMs: 600_000 });
  const layer = (await manifestLayers(reg.url, 'probe/big', 'v1')).find((l) => l.size === size)!;
  const url = `${reg.url}/v2/probe/big/blobs/${layer.digest}`;
  await run(['curl', '-sf', '-o', '/dev/null', url]);
  rows.push(['curl', (await run(['curl', '-sf', '-o', '/dev/null', url])).seconds, undefined]);
  const refOut = path.join(dir, 'ref.bin');
  rows.push(['node-fetch-ref', await nodeFetchRefSeconds(url, refOut), undefined]);
  rows.push(['fuse-native floor', await fuseFloorSeconds(size), undefined]);
  rows.push(['node-fetch-ref + floor at once', await fuseFloorSeconds(size, () => nodeFetchRefSeconds(url, refOut)), undefined]);
  const cache = path.join(dir, 'cache');
  const statsFile = path.join(dir, 'stats');
  for (const phase of ['cold', 'warm-cache new mount'] as const) {
    const mscope = new Scope(phase);
    try {
      const m = await startMount(mscope, reg.host, { args: (process.env.REGFS_PROBE_ARGS ?? '').split(' ').filter(Boolean), cacheDir: cache, env: { REGFS_READ_STATS: `${statsFile}-${phase.split(' ')[0]}.json` }, nodeArgs: process.env.REGFS_PROBE_PROFILE ? ['--cpu-prof', `--cpu-prof-dir=${process.env.REGFS_PROBE_PROFILE}/${phase.split(' ')[0]}`] : [] });
      const file = path.join(m.mnt, 'probe', 'big', 'v1', 'big.bin');
      await run(['ls', '-l', path.dirname(file)]);
      const c0 = await cpuSeconds(m.child.pid!);
      const r = await run(['cat', file], { stdoutFile: '/dev/null', timeoutMs: 600_000 });
      rows.push([phase, r.seconds, (await cpuSeconds(m.child.pid!)) - c0]);
      if (phase === 'cold') {
        const c1 = await cpuSeconds(m.child.pid!);
        const again = await run(['cat', file], { stdoutFile: '/dev/null', timeoutMs: 600_000 });
        rows.push(['first re-read after cold', again.seconds, (await cpuSeconds(m.child.pid!)) - c1]);
      }
      await m.stop();
      const stats = await fsp.readFile(`${statsFile}-${phase.split(' ')[0]}.json`, 'utf8').catch(() => undefined);
      if (stats) process.stdout.write(`${phase} read stats: ${stats}\n`);
    } finally {
      await mscope.close();
    }
  }
  await run(['cat', path.join(dir, 'big.bin')], { stdoutFile: '/dev/null' });
  rows.push(['local cat (page cache)', (await run(['cat', path.join(dir, 'big.bin')], { stdoutFile: '/dev/null' })).seconds, undefined]);
  process.stdout.write(`size ${size / MiB} MiB\n`);
  for (const [name, wall, cpu] of rows) process.stdout.write(`${name.padEnd(28)} ${wall.toFixed(3)} s${cpu === undefined ? '' : `  mount CPU ${cpu.toFixed(2)} s`}\n`);
} finally {
  await scope.close();
}

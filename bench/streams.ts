/**
 * Rows for registries that are far away or cap each connection (object stores, CDNs):
 *   cold-read-capped   the first 256 MiB of a cold file through a proxy that paces every answer to
 *                      40 MB/s on its own, against curl of the same bytes on one connection through it
 *                      (targets: >= 3x curl, >= 0.8x of streams x cap); also regfs with --read-streams 1.
 *   first-4k-latency   `head -c 4096` of a cold file when every request to the registry takes 20 ms
 *                      more (target: <= 3 round trips + 10 ms, after `head`'s own spawn time).
 */
import path from 'node:path';
import { runCli } from '../lab/cli.js';
import { startFaultProxy } from '../lab/fault-proxy.js';
import { startMount } from '../lab/mount.js';
import { startRegistry } from '../lab/registry.js';
import { MiB, manifestLayers, progress, randomFile, round, run, Scope, tempDirIn, type Result } from './lib.js';

const CAP = 40_000_000;
const STREAMS = 4;
const LATENCY_MS = 20;
const LONG = 600_000;

export async function benchStreams(results: Result[], want: (name: string) => boolean, quick: boolean): Promise<void> {
  const scope = new Scope('streams');
  try {
    const dir = await tempDirIn(scope, 'regfs-bench-streams-');
    const readBytes = (quick ? 64 : 256) * MiB;
    const fileBytes = readBytes + 16 * MiB;
    const reg = await startRegistry(undefined, { flavour: 'plain' });
    scope.teardown(() => reg.stop());
    await randomFile(path.join(dir, 'far.bin'), fileBytes);
    const push = await runCli(['push', `${reg.host}/bench/far:v1`, 'far.bin'], { cwd: dir, timeoutMs: LONG });
    if (push.code !== 0) throw new Error(`regfs push failed: ${push.stderr}`);
    const layer = (await manifestLayers(reg.url, 'bench/far', 'v1')).find((l) => l.size === fileBytes)!;
    const proxy = await startFaultProxy(undefined, reg.url);
    scope.teardown(() => proxy.close());
    const blobPath = `/v2/bench/far/blobs/${layer.digest}`;
    const mountedFile = async (args: string[] = []): Promise<{ file: string; scope: Scope }> => {
      const s = new Scope('streams-mount');
      try {
        const m = await startMount(s, proxy.host, { args });
        const d = path.join(m.mnt, 'bench', 'far', 'v1');
        await run(['ls', '-l', d]);
        return { file: path.join(d, 'far.bin'), scope: s };
      } catch (err) {
        await s.close();
        throw err;
      }
    };

    if (want('cold-read-capped')) {
      proxy.rules.splice(0, proxy.rules.length, { path: /\/blobs\//, bytesPerSecondEach: CAP });
      const curl = await run(['curl', '-sf', '-o', '/dev/null', '-r', `0-${readBytes - 1}`, `${proxy.url}${blobPath}`], { timeoutMs: LONG });
      const curlRate = readBytes / curl.seconds;
      progress(`cold-read-capped: curl, one connection at ${CAP / 1e6} MB/s cap: ${curl.seconds.toFixed(2)} s (${(curlRate / 1e6).toFixed(1)} MB/s)`);
      // What the proxy itself can carry over STREAMS connections at once on this machine (the ceiling of this row).
      const quarter = readBytes / STREAMS;
      const p0 = performance.now();
      await Promise.all(Array.from({ length: STREAMS }, (_, i) => run(['curl', '-sf', '-o', '/dev/null', '-r', `${i * quarter}-${(i + 1) * quarter - 1}`, `${proxy.url}${blobPath}`], { timeoutMs: LONG })));
      const parallelCurlRate = readBytes / ((performance.now() - p0) / 1000);
      progress(`cold-read-capped: ${STREAMS} curls at once through the capped proxy: ${(parallelCurlRate / 1e6).toFixed(1)} MB/s`);
      const timed = async (args: string[]): Promise<{ seconds: number; requests: number }> => {
        const m = await mountedFile(args);
        try {
          proxy.reset();
          const r = await run(['head', '-c', String(readBytes), m.file], { stdoutFile: '/dev/null', timeoutMs: LONG });
          return { seconds: r.seconds, requests: proxy.count('GET', /\/blobs\//) };
        } finally {
          await m.scope.close();
        }
      };
      const one = await timed(['--read-streams', '1']);
      progress(`cold-read-capped: regfs --read-streams 1: ${one.seconds.toFixed(2)} s (${(readBytes / one.seconds / 1e6).toFixed(1)} MB/s)`);
      const par = await timed(['--read-streams', String(STREAMS)]);
      const rate = readBytes / par.seconds;
      progress(`cold-read-capped: regfs --read-streams ${STREAMS}: ${par.seconds.toFixed(2)} s (${(rate / 1e6).toFixed(1)} MB/s, ${par.requests} range GETs)`);
      const ratio = rate / curlRate;
      const ofCap = rate / (STREAMS * CAP);
      results.push({
        name: 'cold-read-capped',
        regfs: round(par.seconds),
        peer: round(curl.seconds),
        unit: 's',
        peerName: `curl, one connection capped at ${CAP / 1e6} MB/s`,
        ratio: round(ratio, 3),
        target: `rate >= 3x curl; >= 0.8x of ${STREAMS} x cap`,
        met: ratio >= 3 && ofCap >= 0.8,
        details: { readBytes, capBytesPerSecond: CAP, streams: STREAMS, mbPerSecond: round(rate / 1e6, 1), ofStreamsTimesCap: round(ofCap, 3), parallelCurlMbPerSecond: round(parallelCurlRate / 1e6, 1), ofParallelCurls: round(rate / parallelCurlRate, 3), oneStreamSeconds: round(one.seconds), oneStreamMbPerSecond: round(readBytes / one.seconds / 1e6, 1), rangeGets: par.requests },
      });
    }

    if (want('first-4k-latency')) {
      proxy.rules.splice(0, proxy.rules.length, { latencyMs: LATENCY_MS });
      const local = path.join(dir, 'far.bin');
      await run(['head', '-c', '4096', local], { stdoutFile: '/dev/null' });
      const spawn = Math.min(...(await Promise.all([0, 1, 2].map(async () => (await run(['head', '-c', '4096', local], { stdoutFile: '/dev/null' })).seconds))));
      const trials: Array<{ seconds: number; requests: string[] }> = [];
      for (let i = 0; i < 2; i++) {
        const m = await mountedFile();
        try {
          proxy.reset();
          const r = await run(['head', '-c', '4096', m.file], { stdoutFile: '/dev/null', timeoutMs: LONG });
          trials.push({ seconds: r.seconds, requests: proxy.requests.map((q) => `${q.method} ${q.path.replace(/sha256:[0-9a-f]{64}/, 'sha256:…')}`) });
          progress(`first-4k-latency: head -c 4096 #${i + 1}: ${(r.seconds * 1000).toFixed(1)} ms`);
        } finally {
          await m.scope.close();
        }
      }
      const best = trials.reduce((a, b) => (b.seconds < a.seconds ? b : a));
      const ms = (best.seconds - spawn) * 1000;
      const bound = 3 * LATENCY_MS + 10;
      results.push({
        name: 'first-4k-latency',
        regfs: round(ms, 1),
        peer: bound,
        unit: 'ms',
        peerName: `3 round trips of ${LATENCY_MS} ms + 10 ms`,
        ratio: round(ms / bound, 3),
        target: 'ratio <= 1',
        met: ms <= bound,
        details: { addedLatencyMs: LATENCY_MS, headSeconds: trials.map((x) => round(x.seconds, 5)), headSpawnSeconds: round(spawn, 5), requestsDuringBest: best.requests },
      });
    }
  } finally {
    await scope.close();
  }
}

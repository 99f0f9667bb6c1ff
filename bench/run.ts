/**
 * regfs benchmark: measures the mount against peers (curl, cat, skopeo, a request-count bound, an
 * idle baseline) run in the same process on the same machine, prints a Markdown table on stdout
 * and writes the same results as JSON to bench/results/latest.json.
 *
 *   node dist/bench/run.js [--only name,name] [--quick] [--out FILE]
 *
 * A full run writes bench/results/latest.json; --quick or --only write latest-partial.json (git-ignored)
 * unless --out says otherwise.
 *
 * Benchmarks: cold-read-1g, warm-read-1g, first-4k, fio-randread, cold-read-capped, first-4k-latency, ls-lR, rss-4g, staging-push-1g, staging-1000-files, image-cat, image-cat-estargz
 * (see bench/README.md).
 */
import { randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { packArtifact, parseFileArg } from '../registry/pack.js';
import { RemoteRegistry } from '../registry/remote.js';
import { pushArtifact } from '../registry/transfer.js';
import { runLimited } from '../util/limit.js';
import { REPO_ROOT, runCli } from '../lab/cli.js';
import { startFaultProxy, type FaultProxy, type RequestRecord } from '../lab/fault-proxy.js';
import { startMount, type StartedMount } from '../lab/mount.js';
import { startRegistry, type StartedRegistry } from '../lab/registry.js';
import {
  bestOf,
  catalogPages,
  GiB,
  machineInfo,
  manifestLayers,
  markdownTable,
  MiB,
  nodeFetchRefSeconds,
  procStatusKiB,
  progress,
  randomFile,
  RssSampler,
  round,
  run,
  Scope,
  sleep,
  waitSettled,
  tempDirIn,
  type Result,
} from './lib.js';
import { fuseFloorSeconds } from './fuse-floor.js';
import { benchStagingMany, benchStagingPush } from './staging.js';
import { benchRandRead } from './randread.js';
import { benchImageCat } from './image.js';
import { benchImageCatEstargz } from './image-estargz.js';
import { benchStreams } from './streams.js';

/** BENCHMARKS are the names --only accepts, in run order. */
export const BENCHMARKS = ['cold-read-1g', 'warm-read-1g', 'first-4k', 'fio-randread', 'cold-read-capped', 'first-4k-latency', 'ls-lR', 'rss-4g', 'staging-push-1g', 'staging-1000-files', 'image-cat', 'image-cat-estargz'] as const;

/** BenchConfig is the parsed command line. */
export interface BenchConfig {
  quick: boolean;
  only: Set<string>;
  /** bigSize is the file of cold-read, warm-read and first-4k (1 GiB; 256 MiB with --quick). */
  bigSize: number;
  /** hugeSize is the file of rss-4g (4 GiB; 1 GiB with --quick). */
  hugeSize: number;
  repos: number;
  tags: number;
  out: string;
}

const RSS_TARGET_MIB = 200;
const FIRST_4K_BYTES_TARGET = 8 * MiB;
const LONG = 900_000;

/** parseArgs reads `[--only a,b] [--quick] [--out FILE]`. */
export function parseArgs(argv: string[]): BenchConfig {
  let quick = false;
  let only: string[] = [...BENCHMARKS];
  let out: string | undefined;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--quick') quick = true;
    else if (a === '--only' || a.startsWith('--only=')) {
      const v = a === '--only' ? argv[++i] : a.slice('--only='.length);
      if (!v) throw new Error('--only needs a comma-separated list');
      only = v.split(',').map((s) => s.trim()).filter(Boolean);
      for (const n of only) if (!(BENCHMARKS as readonly string[]).includes(n)) throw new Error(`unknown benchmark ${n}; known: ${BENCHMARKS.join(', ')}`);
    } else if (a === '--out' || a.startsWith('--out=')) {
      out = a === '--out' ? argv[++i] : a.slice('--out='.length);
      if (!out) throw new Error('--out needs a file');
    } else if (a === '--help' || a === '-h') {
      process.stdout.write(`usage: node dist/bench/run.js [--only ${BENCHMARKS.join(',')}] [--quick] [--out FILE]\n`);
      process.exit(0);
    } else throw new Error(`unknown argument ${a}`);
  }
  return {
    quick,
    only: new Set(only),
    bigSize: quick ? 256 * MiB : GiB,
    hugeSize: quick ? GiB : 4 * GiB,
    repos: quick ? 10 : 50,
    tags: quick ? 5 : 20,
    // Only a full run of everything replaces the committed latest.json.
    out: path.resolve(out ?? path.join(REPO_ROOT, 'bench', 'results', quick || only.length < BENCHMARKS.length ? 'latest-partial.json' : 'latest.json')),
  };
}

// ---------------------------------------------------------------------------------------------
// helpers around the mount

interface Mounted {
  m: StartedMount;
  scope: Scope;
}

/** mountFresh starts `regfs mount SOURCE` in its own scope (fresh cache unless cacheDir is given). */
async function mountFresh(source: string, opts: { cacheDir?: string; args?: string[] } = {}): Promise<Mounted> {
  const scope = new Scope('mount');
  try {
    const m = await startMount(scope, source, { cacheDir: opts.cacheDir, args: opts.args });
    return { m, scope };
  } catch (err) {
    await scope.close();
    throw err;
  }
}

/** tagDir finds a tag's directory: `MNT/repo:tag` if the mount spells it so, else `MNT/repo/tag`. */
async function tagDir(mnt: string, repo: string, tag: string): Promise<string> {
  const candidates = [path.join(mnt, `${repo}:${tag}`), path.join(mnt, repo, tag)];
  for (const c of candidates) {
    const r = await run(['test', '-d', c], { check: false, timeoutMs: 120_000 });
    if (r.code === 0) return c;
  }
  throw new Error(`neither ${candidates.join(' nor ')} is a directory`);
}

/** timedCat times `cat FILE > /dev/null` while sampling the mount's RSS. */
async function timedCat(m: StartedMount, file: string): Promise<{ seconds: number; peakRssKiB: number; samples: Array<[number, number]> }> {
  const sampler = new RssSampler(m.child.pid!, 100);
  sampler.start();
  try {
    const r = await run(['cat', file], { stdoutFile: '/dev/null', timeoutMs: LONG });
    return { seconds: r.seconds, peakRssKiB: await sampler.stop(), samples: sampler.samples };
  } catch (err) {
    await sampler.stop();
    throw new Error(`${(err as Error).message}\nmount log tail:\n${m.logs().slice(-3000)}`);
  }
}

async function pushFile(reg: StartedRegistry, dir: string, repoTag: string, name: string): Promise<void> {
  const r = await runCli(['push', `${reg.host}/${repoTag}`, name], { cwd: dir, timeoutMs: LONG });
  if (r.code !== 0) throw new Error(`regfs push ${repoTag} failed (${r.code}): ${r.stderr}`);
}

function blobBytes(reqs: RequestRecord[]): number {
  return reqs.filter((q) => /\/blobs\//.test(q.path)).reduce((a, q) => a + q.bytesOut, 0);
}

/** breakdown groups proxy requests by kind (ping, catalog, tags, manifests, blobs, other). */
function breakdown(reqs: RequestRecord[]): Record<string, number> {
  const b: Record<string, number> = { total: reqs.length, ping: 0, catalog: 0, tagsList: 0, manifestGET: 0, manifestHEAD: 0, blobs: 0, other: 0, non2xx: 0 };
  for (const q of reqs) {
    const p = q.path.split('?')[0]!;
    if (p === '/v2/' || p === '/v2') b.ping!++;
    else if (p.endsWith('/_catalog')) b.catalog!++;
    else if (p.endsWith('/tags/list')) b.tagsList!++;
    else if (p.includes('/manifests/')) {
      if (q.method === 'HEAD') b.manifestHEAD!++;
      else b.manifestGET!++;
    } else if (p.includes('/blobs/')) b.blobs!++;
    else b.other!++;
    if (q.status < 200 || q.status >= 300) b.non2xx!++;
  }
  const manifestPaths = reqs.filter((q) => q.path.includes('/manifests/')).map((q) => `${q.method} ${q.path}`);
  b.manifestRepeats = manifestPaths.length - new Set(manifestPaths).size;
  return b;
}

/** lineDiff returns up to max "-old / +new" pairs of lines that differ at the same position. */
function lineDiff(a: string, b: string, max: number): string[] {
  const la = a.split('\n');
  const lb = b.split('\n');
  const out: string[] = [];
  if (la.length !== lb.length) out.push(`line counts differ: ${la.length} vs ${lb.length}`);
  for (let i = 0; i < Math.max(la.length, lb.length) && out.length < max * 2; i++) {
    if (la[i] !== lb[i]) out.push(`-${la[i] ?? ''}`, `+${lb[i] ?? ''}`);
  }
  return out;
}

function failed(name: string, err: unknown): Result {
  return { name, regfs: NaN, peer: NaN, unit: '', peerName: 'n/a', ratio: NaN, target: 'error', met: false, details: { error: (err as Error).message } };
}

// ---------------------------------------------------------------------------------------------
// cold-read-1g, warm-read-1g, first-4k: one registry holding one big file

async function benchBigFile(cfg: BenchConfig, results: Result[]): Promise<void> {
  const want = (n: string): boolean => cfg.only.has(n);
  const scope = new Scope('big-file');
  try {
    const dir = await tempDirIn(scope, 'regfs-bench-big-');
    progress('big file: starting registry');
    const reg = await startRegistry(undefined, { flavour: 'plain', accessLog: true });
    scope.teardown(() => reg.stop());
    const local = path.join(dir, 'big.bin');
    progress(`big file: writing ${cfg.bigSize / MiB} MiB of random bytes`);
    await randomFile(local, cfg.bigSize);
    progress('big file: regfs push');
    const pushStart = Date.now();
    await pushFile(reg, dir, 'bench/big:v1', 'big.bin');
    const pushSeconds = (Date.now() - pushStart) / 1000;
    const layer = (await manifestLayers(reg.url, 'bench/big', 'v1')).find((l) => l.size === cfg.bigSize);
    if (!layer) throw new Error('pushed manifest has no layer of the file size');
    const blobUrl = `${reg.url}/v2/bench/big/blobs/${layer.digest}`;
    const curl = async (): Promise<number> => (await run(['curl', '-sf', '-o', '/dev/null', blobUrl], { timeoutMs: LONG })).seconds;
    progress('big file: curl once (registry page cache)');
    await curl();

    if (want('cold-read-1g') || want('warm-read-1g')) {
      const name = 'cold-read-1g';
      let kept: Mounted | undefined;
      const keepCache = await tempDirIn(scope, 'regfs-bench-cache-');
      try {
        let curlBest: { best: number; all: number[] } | undefined;
        let floorBest: { best: number; all: number[] } | undefined;
        let nodeRefBest: { best: number; all: number[] } | undefined;
        let refWithFloorBest: { best: number; all: number[] } | undefined;
        let mountBest: { best: number; all: number[] } | undefined;
        const rss: number[] = [];
        if (want('cold-read-1g')) {
          curlBest = await bestOf(2, async (i) => {
            const s = await curl();
            progress(`cold-read: curl #${i + 1}: ${s.toFixed(3)} s`);
            return s;
          });
          // The minimal Node pipeline a caching mount does (undici GET -> new file + sha256), in the same run.
          const refOut = path.join(dir, 'node-fetch-ref.out');
          const nodeRef = (): Promise<number> => nodeFetchRefSeconds(blobUrl, refOut, LONG);
          nodeRefBest = await bestOf(2, async (i) => {
            const s = await nodeRef();
            progress(`cold-read: node-fetch-ref #${i + 1}: ${s.toFixed(3)} s`);
            return s;
          });
          // The least a fuse-native caching mount must do on these two cores: the reference's fetch, write
          // and hash and the floor's FUSE round trips at once (two processes, so two main threads).
          refWithFloorBest = await bestOf(2, async (i) => {
            const s = await fuseFloorSeconds(cfg.bigSize, nodeRef);
            progress(`cold-read: node-fetch-ref and the fuse-native floor at once #${i + 1}: ${s.toFixed(3)} s`);
            return s;
          });
          // The floor under any fuse-native filesystem here: a fresh mount serving the same size from memory.
          floorBest = await bestOf(2, async (i) => {
            const s = await fuseFloorSeconds(cfg.bigSize);
            progress(`cold-read: fuse-native floor (bytes from memory, fresh mount) #${i + 1}: ${s.toFixed(3)} s`);
            return s;
          });
        }
        const trials = want('cold-read-1g') ? 2 : 1;
        mountBest = await bestOf(trials, async (i) => {
          const last = i === trials - 1;
          const mounted = await mountFresh(reg.host, last ? { cacheDir: path.join(keepCache, 'cache') } : {});
          try {
            const d = await tagDir(mounted.m.mnt, 'bench/big', 'v1');
            await run(['ls', '-l', d]);
            const c = await timedCat(mounted.m, path.join(d, 'big.bin'));
            rss.push(Math.round(c.peakRssKiB / 1024));
            progress(`cold-read: mount cat #${i + 1} (fresh cache): ${c.seconds.toFixed(3)} s, peak RSS ${Math.round(c.peakRssKiB / 1024)} MiB`);
            if (last) kept = mounted;
            return c.seconds;
          } finally {
            if (kept !== mounted) await mounted.scope.close();
          }
        });
        if (curlBest && mountBest) {
          const ratio = curlBest.best / mountBest.best;
          results.push({
            name,
            regfs: round(mountBest.best),
            peer: round(curlBest.best),
            unit: 's',
            peerName: 'curl',
            ratio: round(ratio),
            target: 'curl/mount >= 0.9',
            met: ratio >= 0.9,
            details: {
              readBytes: cfg.bigSize,
              mountSeconds: mountBest.all.map((v) => round(v)),
              curlSeconds: curlBest.all.map((v) => round(v)),
              fuseFloorSeconds: floorBest?.all.map((v) => round(v)),
              curlToFuseFloorRatio: floorBest ? round(curlBest.best / floorBest.best) : undefined,
              fuseFloorToMountRatio: floorBest ? round(floorBest.best / mountBest.best) : undefined,
              mountPeakRssMiB: rss,
              pushSeconds: round(pushSeconds, 1),
            },
          });
        }
        if (nodeRefBest && mountBest) {
          const ratio = nodeRefBest.best / mountBest.best;
          results.push({
            name: 'cold-read-vs-node-ref',
            regfs: round(mountBest.best),
            peer: round(nodeRefBest.best),
            unit: 's',
            peerName: 'node-fetch-ref',
            ratio: round(ratio),
            target: 'ref/mount >= 0.9',
            met: ratio >= 0.9,
            details: {
              readBytes: cfg.bigSize,
              nodeRefSeconds: nodeRefBest.all.map((v) => round(v)),
              // ref and floor at once: the best a fuse-native mount could do here, and the ratio that allows.
              refWithFloorSeconds: refWithFloorBest?.all.map((v) => round(v)),
              ceilingRatio: refWithFloorBest ? round(nodeRefBest.best / refWithFloorBest.best) : undefined,
              refWithFloorToMountRatio: refWithFloorBest ? round(refWithFloorBest.best / mountBest.best) : undefined,
            },
          });
        }

        if (want('warm-read-1g') && kept) {
          const m = kept.m;
          const d = await tagDir(m.mnt, 'bench/big', 'v1');
          const file = path.join(d, 'big.bin');
          const catLocal = async (): Promise<number> => (await run(['cat', local], { stdoutFile: '/dev/null', timeoutMs: LONG })).seconds;
          await catLocal(); // page cache warm
          const localBest = await bestOf(2, async (i) => {
            const s = await catLocal();
            progress(`warm-read: local cat #${i + 1}: ${s.toFixed(3)} s`);
            return s;
          });
          // The first read after the cold one is reported as it is (part of it may come through regfs again).
          const firstAfterCold = (await timedCat(m, file)).seconds;
          progress(`warm-read: first mount cat after the cold read: ${firstAfterCold.toFixed(3)} s`);
          const warmBest = await bestOf(2, async (i) => {
            const c = await timedCat(m, file);
            progress(`warm-read: mount cat #${i + 1}: ${c.seconds.toFixed(3)} s`);
            return c.seconds;
          });
          progress('warm-read: verifying mount bytes (cmp)');
          const cmp = await run(['cmp', file, local], { check: false, timeoutMs: LONG });
          const du = await run(['du', '-sb', m.cacheDir], { check: false });
          // The same warm cache behind a new mount: the kernel's page cache of the old mount is gone,
          // so this is the blob cache's own read path.
          await kept.scope.close();
          kept = undefined;
          // Two new mounts, one after the other (best of two, as the floor it is compared with).
          const remounts: number[] = [];
          for (let i = 0; i < 2; i++) {
            progress(`warm-read: new mount #${i + 1} on the same cache dir`);
            const again = await mountFresh(reg.host, { cacheDir: path.join(keepCache, 'cache') });
            try {
              const d2 = await tagDir(again.m.mnt, 'bench/big', 'v1');
              await run(['ls', '-l', d2]);
              const s = (await timedCat(again.m, path.join(d2, 'big.bin'))).seconds;
              remounts.push(s);
              progress(`warm-read: new mount #${i + 1}, warm blob cache: ${s.toFixed(3)} s`);
            } finally {
              await again.scope.close();
            }
          }
          const remount = Math.min(...remounts);
          const ratio = localBest.best / warmBest.best;
          results.push({
            name: 'warm-read-1g',
            regfs: round(warmBest.best),
            peer: round(localBest.best),
            unit: 's',
            peerName: 'cat local',
            ratio: round(ratio),
            target: 'local/mount >= 0.8',
            met: ratio >= 0.8 && cmp.code === 0,
            details: {
              readBytes: cfg.bigSize,
              mountSeconds: warmBest.all.map((v) => round(v)),
              localSeconds: localBest.all.map((v) => round(v)),
              bytesIdentical: cmp.code === 0,
              cmpOutput: cmp.code === 0 ? undefined : (cmp.stdout + cmp.stderr).trim(),
              cacheDirBytes: Number(du.stdout.split(/\s/)[0]),
              newMountWarmCacheSeconds: remounts.map((v) => round(v)),
              newMountWarmCacheRatio: round(localBest.best / remount),
            },
          });
          const firstRatio = localBest.best / firstAfterCold;
          results.push({
            name: 'first-read-after-cold',
            regfs: round(firstAfterCold),
            peer: round(localBest.best),
            unit: 's',
            peerName: 'cat local',
            ratio: round(firstRatio),
            target: 'local/mount >= 0.8',
            met: firstRatio >= 0.8,
            details: { readBytes: cfg.bigSize, note: 'one trial: the first cat right after the cold read, not a best of two' },
          });
          if (floorBest && Number.isFinite(remount)) {
            const floorRatio = floorBest.best / remount;
            results.push({
              name: 'warm-cache-new-mount',
              regfs: round(remount),
              peer: round(floorBest.best),
              unit: 's',
              peerName: 'fuse-native floor',
              ratio: round(floorRatio),
              target: 'floor/mount >= 0.8',
              met: floorRatio >= 0.8,
              details: {
                readBytes: cfg.bigSize,
                mountSeconds: remounts.map((v) => round(v)),
                fuseFloorSeconds: floorBest.all.map((v) => round(v)),
                note: 'best of two new mounts over the cache dir the cold read filled (the blob cache read path without the old mount\'s page cache), against the best of two floor runs',
              },
            });
          }
        }
      } finally {
        await kept?.scope.close();
      }
    }

    if (want('first-4k')) {
      const proxy: FaultProxy = await startFaultProxy(undefined, reg.url);
      scope.teardown(() => proxy.close());
      // Spawn cost of `head` on this machine: the same command on the page-cached local file.
      const baseline = await bestOf(3, async () => (await run(['head', '-c', '4096', local], { stdoutFile: '/dev/null' })).seconds);
      interface Trial {
        seconds: number;
        atExit: number;
        settled: number;
        requests: Array<Record<string, unknown>>;
        sameBytes: boolean;
      }
      const trials: Trial[] = [];
      for (let i = 0; i < 2; i++) {
        const mounted = await mountFresh(proxy.host);
        try {
          const d = await tagDir(mounted.m.mnt, 'bench/big', 'v1');
          await run(['ls', '-l', d]);
          const file = path.join(d, 'big.bin');
          proxy.reset();
          const seconds = (await run(['head', '-c', '4096', file], { stdoutFile: '/dev/null', timeoutMs: LONG })).seconds;
          const atExit = blobBytes(proxy.requests);
          progress(`first-4k: head -c 4096 #${i + 1} (fresh cache): ${(seconds * 1000).toFixed(1)} ms, ${atExit} blob bytes so far; waiting for background transfers to settle`);
          const settled = await waitSettled(() => blobBytes(proxy.requests), 2000, 15_000);
          const requests = proxy.requests.map((q) => ({ method: q.method, path: q.path.replace(/sha256:[0-9a-f]{64}/, 'sha256:…'), range: q.headers.range, status: q.status, bytesOut: q.bytesOut }));
          const cmp = await run(['cmp', '-n', '4096', file, local], { check: false, timeoutMs: 120_000 });
          trials.push({ seconds, atExit, settled, requests, sameBytes: cmp.code === 0 });
        } finally {
          await mounted.scope.close();
        }
      }
      const best = trials.reduce((a, b) => (b.seconds < a.seconds ? b : a));
      const headSeconds = best.seconds;
      const settled = Math.max(...trials.map((x) => x.settled));
      const sameBytes = trials.every((x) => x.sameBytes);
      const skopeo = await bestOf(2, async (i) => {
        const dest = path.join(dir, `skopeo-${i}`);
        try {
          const r = await run(['skopeo', '--insecure-policy', 'copy', '--src-tls-verify=false', `docker://${reg.host}/bench/big:v1`, `oci:${dest}:v1`], { timeoutMs: LONG });
          progress(`first-4k: skopeo copy #${i + 1}: ${r.seconds.toFixed(3)} s`);
          return r.seconds;
        } finally {
          await fsp.rm(dest, { recursive: true, force: true });
        }
      });
      const ratio = headSeconds / skopeo.best;
      results.push({
        name: 'first-4k',
        regfs: round(headSeconds, 5),
        peer: round(skopeo.best),
        unit: 's',
        peerName: 'skopeo copy',
        ratio: round(ratio, 6),
        target: 'mount/skopeo <= 0.01',
        met: ratio <= 0.01 && sameBytes,
        details: {
          fileBytes: cfg.bigSize,
          headSeconds: trials.map((x) => round(x.seconds, 5)),
          headSpawnBaselineSeconds: round(baseline.best, 5),
          headMinusSpawnSeconds: round(headSeconds - baseline.best, 5),
          skopeoSeconds: skopeo.all.map((v) => round(v)),
          bytesIdentical: sameBytes,
        },
      });
      results.push({
        name: 'first-4k-bytes',
        regfs: round(settled / MiB, 3),
        peer: round(cfg.bigSize / MiB, 3),
        unit: 'MiB',
        peerName: 'skopeo copy',
        ratio: round(settled / cfg.bigSize, 6),
        target: `blob bytes <= ${FIRST_4K_BYTES_TARGET / MiB} MiB`,
        met: settled <= FIRST_4K_BYTES_TARGET,
        details: { blobBytesWhenHeadExited: trials.map((x) => x.atExit), blobBytesSettled: trials.map((x) => x.settled), requests: best.requests },
      });
    }
    if (want('fio-randread')) {
      // No proxy in between: both sides talk to the registry, whose access log counts the bytes.
      results.push(
        ...(await benchRandRead({
          size: cfg.bigSize,
          blobUrl,
          freshFile: async () => {
            const mounted = await mountFresh(reg.host);
            const d = await tagDir(mounted.m.mnt, 'bench/big', 'v1');
            await run(['ls', '-l', d]);
            return { file: path.join(d, 'big.bin'), close: () => mounted.scope.close() };
          },
          blobBytesServed: () => reg.blobBytesServed(),
        })),
      );
    }
  } finally {
    progress('big file: cleaning up');
    await scope.close();
  }
}

// ---------------------------------------------------------------------------------------------
// ls-lR: many repositories and tags, request counts through the counting proxy

async function benchLsLR(cfg: BenchConfig, results: Result[]): Promise<void> {
  const scope = new Scope('ls-lR');
  try {
    const dir = await tempDirIn(scope, 'regfs-bench-ls-');
    progress('ls-lR: starting registry');
    const reg = await startRegistry(undefined, { flavour: 'plain' });
    scope.teardown(() => reg.stop());
    const items: Array<{ repo: string; tag: string; dir: string }> = [];
    for (let i = 0; i < cfg.repos; i++) {
      for (let j = 1; j <= cfg.tags; j++) {
        const d = path.join(dir, `r${i}-t${j}`);
        await fsp.mkdir(d);
        await fsp.writeFile(path.join(d, 'data.txt'), `repository r${i} tag t${j} ${randomBytes(8).toString('hex')}\n`);
        items.push({ repo: `r${i}`, tag: `t${j}`, dir: d });
      }
    }
    progress(`ls-lR: pushing ${items.length} distinct artifacts (${cfg.repos} repos x ${cfg.tags} tags, regfs push code in-process)`);
    const pushStart = Date.now();
    const client = new RemoteRegistry(reg.host, {});
    const digests = new Set<string>();
    let retries = 0;
    const pushOne = async (it: (typeof items)[number]): Promise<void> => {
      const packed = await packArtifact({ files: [parseFileArg('data.txt')], cwd: it.dir });
      for (let attempt = 0; ; attempt++) {
        try {
          const desc = await pushArtifact(client.repository(it.repo), packed, [it.tag], { concurrency: 2 });
          digests.add(desc.digest);
          return;
        } catch (err) {
          if (attempt >= 2) throw err;
          retries++;
          progress(`ls-lR: push ${it.repo}:${it.tag} failed (${(err as Error).message}); retrying`);
        }
      }
    };
    try {
      // The first tag of every repository goes alone, so the shared (empty) config blob is uploaded
      // once per repository: distribution 2.8.2 can answer DIGEST_INVALID to a manifest PUT while
      // another upload of the same blob in the same repository is being committed.
      await runLimited(items.filter((_, k) => k % cfg.tags === 0), 16, pushOne);
      await runLimited(items.filter((_, k) => k % cfg.tags !== 0), 16, pushOne);
    } finally {
      await client.close();
    }
    const pushSeconds = (Date.now() - pushStart) / 1000;
    progress(`ls-lR: pushed in ${pushSeconds.toFixed(1)} s`);
    const cat = await catalogPages(reg.url, 1000);
    const tagPages = cfg.repos; // distribution 2.8.2 answers a tag list in one page
    const bound = cat.pages + tagPages + digests.size;

    const proxy = await startFaultProxy(undefined, reg.url);
    scope.teardown(() => proxy.close());
    const mounted = await mountFresh(proxy.host, { args: ['--metadata-ttl', '600'] });
    try {
      const out1 = path.join(dir, 'ls-cold.txt');
      const cold = await run(['ls', '-lR', mounted.m.mnt], { stdoutFile: out1, check: false, timeoutMs: LONG });
      const coldReqs = [...proxy.requests];
      const listing = await fsp.readFile(out1, 'utf8');
      const filesSeen = listing.split('\n').filter((l) => l.endsWith(' data.txt')).length;
      progress(`ls-lR: cold ${cold.seconds.toFixed(3)} s, ${coldReqs.length} requests (bound ${bound}), ${filesSeen}/${items.length} files listed, ls exit ${cold.code}`);
      proxy.reset();
      const out2 = path.join(dir, 'ls-warm.txt');
      const warm = await run(['ls', '-lR', mounted.m.mnt], { stdoutFile: out2, check: false, timeoutMs: LONG });
      const warmReqs = [...proxy.requests];
      const listing2 = await fsp.readFile(out2, 'utf8');
      const sameListing = listing2 === listing;
      const diff = sameListing ? undefined : lineDiff(listing, listing2, 6);
      if (diff) progress(`ls-lR: warm listing differs from cold, e.g.\n  ${diff.join('\n  ')}`);
      progress(`ls-lR: warm ${warm.seconds.toFixed(3)} s, ${warmReqs.length} requests`);
      const ok = cold.code === 0 && filesSeen === items.length;
      const common = {
        repositories: cfg.repos,
        tagsPerRepository: cfg.tags,
        distinctManifests: digests.size,
        catalogPages: cat.pages,
        bound,
        pushSeconds: round(pushSeconds, 1),
        pushRetries: retries,
        pushMethod: 'one artifact per tag (distinct content), pushed with regfs packArtifact/pushArtifact in-process, 16 at a time',
        metadataTtlSeconds: 600,
      };
      results.push({
        name: 'ls-lR-cold',
        regfs: coldReqs.length,
        peer: bound,
        unit: 'requests',
        peerName: 'bound',
        ratio: round(coldReqs.length / bound),
        target: 'requests/bound <= 1.0',
        met: coldReqs.length <= bound && ok,
        details: { ...common, seconds: round(cold.seconds), lsExit: cold.code, lsStderr: cold.stderr.slice(0, 2000) || undefined, filesListed: filesSeen, requests: breakdown(coldReqs) },
      });
      results.push({
        name: 'ls-lR-warm',
        regfs: warmReqs.length,
        peer: bound,
        unit: 'requests',
        peerName: 'bound',
        ratio: round(warmReqs.length / bound),
        target: 'requests = 0',
        met: warmReqs.length === 0 && warm.code === 0,
        details: { ...common, seconds: round(warm.seconds), lsExit: warm.code, sameListingAsCold: sameListing, listingDiff: diff, requests: breakdown(warmReqs), requestPaths: warmReqs.slice(0, 50).map((q) => `${q.method} ${q.path}`) },
      });
    } finally {
      await mounted.scope.close();
    }
  } finally {
    progress('ls-lR: cleaning up');
    await scope.close();
  }
}

// ---------------------------------------------------------------------------------------------
// rss-4g: peak RSS of the mount process while streaming a huge cold file

async function benchRss(cfg: BenchConfig, results: Result[]): Promise<void> {
  const scope = new Scope('rss');
  try {
    const dir = await tempDirIn(scope, 'regfs-bench-huge-');
    progress('rss: starting registry');
    const reg = await startRegistry(undefined, { flavour: 'plain' });
    scope.teardown(() => reg.stop());
    const local = path.join(dir, 'huge.bin');
    progress(`rss: writing ${cfg.hugeSize / MiB} MiB of random bytes`);
    await randomFile(local, cfg.hugeSize);
    progress('rss: regfs push');
    const pushStart = Date.now();
    await pushFile(reg, dir, 'bench/huge:v1', 'huge.bin');
    const pushSeconds = (Date.now() - pushStart) / 1000;
    await fsp.rm(local, { force: true }); // the registry holds it now; keep the disk free
    const mounted = await mountFresh(reg.host);
    try {
      const pid = mounted.m.child.pid!;
      await sleep(1000);
      const idle = await procStatusKiB(pid);
      if (!idle) throw new Error('mount process is gone');
      const d = await tagDir(mounted.m.mnt, 'bench/huge', 'v1');
      await run(['ls', '-l', d]);
      progress('rss: cold cat through the mount');
      const c = await timedCat(mounted.m, path.join(d, 'huge.bin'));
      const end = await procStatusKiB(pid);
      const peakKiB = Math.max(c.peakRssKiB, end?.hwm ?? 0);
      const peakMiB = peakKiB / 1024;
      progress(`rss: cat ${c.seconds.toFixed(3)} s (${(cfg.hugeSize / MiB / c.seconds).toFixed(0)} MiB/s), sampled peak ${(c.peakRssKiB / 1024).toFixed(1)} MiB, VmHWM ${((end?.hwm ?? 0) / 1024).toFixed(1)} MiB`);
      const step = Math.max(1, Math.floor(c.samples.length / 60));
      results.push({
        name: 'rss-4g',
        regfs: round(peakMiB, 1),
        peer: round(idle.rss / 1024, 1),
        unit: 'MiB',
        peerName: 'idle mount',
        ratio: round(peakMiB / (idle.rss / 1024), 3),
        target: `peak <= ${RSS_TARGET_MIB} MiB`,
        met: peakMiB <= RSS_TARGET_MIB,
        details: {
          fileBytes: cfg.hugeSize,
          catSeconds: round(c.seconds),
          catMiBps: round(cfg.hugeSize / MiB / c.seconds, 1),
          sampledPeakMiB: round(c.peakRssKiB / 1024, 1),
          vmHwmMiB: round((end?.hwm ?? 0) / 1024, 1),
          rssAfterMiB: round((end?.rss ?? 0) / 1024, 1),
          samples: c.samples.length,
          rssTimelineMiB: c.samples.filter((_, i) => i % step === 0).map(([ms, kib]) => [ms, Math.round(kib / 1024)]),
          pushSeconds: round(pushSeconds, 1),
        },
      });
    } finally {
      await mounted.scope.close();
    }
  } finally {
    progress('rss: cleaning up');
    await scope.close();
  }
}

// ---------------------------------------------------------------------------------------------

/** main runs the selected benchmarks, prints the table and writes the JSON file; resolves to the exit code. */
export async function main(argv: string[]): Promise<number> {
  const cfg = parseArgs(argv);
  const started = Date.now();
  const info = machineInfo();
  const results: Result[] = [];
  const errors: string[] = [];
  const onSignal = (sig: NodeJS.Signals): void => {
    progress(`${sig}: cleaning up`);
    void Scope.closeAll().finally(() => process.exit(130));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  const load0 = os.loadavg()[0]!;
  const otherMounts = (await fsp.readFile('/proc/mounts', 'utf8').catch(() => '')).split('\n').filter((l) => l.split(' ')[2] === 'fuse.regfs').length;
  if (otherMounts > 0 || load0 > 0.5) progress(`warning: ${otherMounts} other regfs mounts, load average ${load0.toFixed(2)}: numbers may be noisy`);
  progress(`config: ${cfg.quick ? 'quick' : 'full'}, only ${[...cfg.only].join(',')}; big ${cfg.bigSize / MiB} MiB, huge ${cfg.hugeSize / MiB} MiB, ${cfg.repos}x${cfg.tags} repos/tags`);

  const group = async (names: string[], rowNames: string[], fn: () => Promise<void>): Promise<void> => {
    if (!names.some((n) => cfg.only.has(n))) return;
    try {
      await fn();
    } catch (err) {
      const msg = (err as Error).stack ?? String(err);
      progress(`FAILED ${names.join(',')}: ${msg}`);
      errors.push(msg);
      for (const r of rowNames) if (!results.some((x) => x.name === r)) results.push(failed(r, err));
    }
  };
  const bigRows = [...(cfg.only.has('cold-read-1g') ? ['cold-read-1g'] : []), ...(cfg.only.has('warm-read-1g') ? ['warm-read-1g'] : []), ...(cfg.only.has('first-4k') ? ['first-4k', 'first-4k-bytes'] : []), ...(cfg.only.has('fio-randread') ? ['fio-randread-4k', 'fio-randread-1m'] : [])];
  await group(['cold-read-1g', 'warm-read-1g', 'first-4k', 'fio-randread'], bigRows, () => benchBigFile(cfg, results));
  await group(['cold-read-capped', 'first-4k-latency'], ['cold-read-capped', 'first-4k-latency'].filter((n) => cfg.only.has(n)), () => benchStreams(results, (n) => cfg.only.has(n), cfg.quick));
  await group(['ls-lR'], ['ls-lR-cold', 'ls-lR-warm'], () => benchLsLR(cfg, results));
  await group(['rss-4g'], ['rss-4g'], () => benchRss(cfg, results));
  await group(['staging-push-1g'], ['staging-push-1g'], () => benchStagingPush(cfg.bigSize, results));
  await group(['staging-1000-files'], ['staging-1000-files', 'staging-1000-files-rss'], () => benchStagingMany(results));
  await group(['image-cat'], ['image-cat'], () => benchImageCat(results, cfg.quick));
  await group(['image-cat-estargz'], ['image-cat-estargz', 'image-cat-estargz-bytes'], () => benchImageCatEstargz(results, cfg.quick));
  await Scope.closeAll();

  const seconds = (Date.now() - started) / 1000;
  const sizes = `${cfg.quick ? 'quick: ' : ''}big file ${cfg.bigSize / MiB} MiB, huge file ${cfg.hugeSize / MiB} MiB, ${cfg.repos} repos x ${cfg.tags} tags`;
  const load1 = os.loadavg()[0]!;
  const header = `regfs bench ${info.date} (UTC) · Node ${info.node} · ${info.cores} cores (${info.cpu}), ${info.memGiB} GiB RAM · kernel ${info.kernel} · ${sizes} · load ${load0.toFixed(2)}→${load1.toFixed(2)}`;
  process.stdout.write(`${header}\n\n${markdownTable(results)}\n\ntotal runtime ${seconds.toFixed(1)} s\n`);
  const json = {
    date: info.date,
    node: info.node,
    machine: { cores: info.cores, kernel: info.kernel, cpu: info.cpu, memGiB: info.memGiB, loadAvgStart: round(load0, 2), loadAvgEnd: round(load1, 2), otherRegfsMountsAtStart: otherMounts },
    quick: cfg.quick,
    only: [...cfg.only],
    sizes: { bigBytes: cfg.bigSize, hugeBytes: cfg.hugeSize, repos: cfg.repos, tags: cfg.tags },
    runtimeSeconds: round(seconds, 1),
    results,
    errors,
  };
  await fsp.mkdir(path.dirname(cfg.out), { recursive: true });
  await fsp.writeFile(cfg.out, JSON.stringify(json, (_k, v: unknown) => (typeof v === 'number' && !Number.isFinite(v) ? null : v), 2) + '\n');
  progress(`wrote ${path.relative(process.cwd(), cfg.out) || cfg.out}`);
  process.off('SIGINT', onSignal);
  process.off('SIGTERM', onSignal);
  return errors.length ? 1 : 0;
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  async (err: unknown) => {
    process.stderr.write(`bench: ${(err as Error).stack ?? String(err)}\n`);
    await Scope.closeAll();
    process.exitCode = 2;
  },
);

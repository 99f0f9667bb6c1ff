/**
 * Staging benchmarks of `regfs daemon`: a file (or many folders) lands in the staging folder, and
 * the clock runs until the tag(s) resolve in the registry. Peers: skopeo copy of the same blob
 * from an OCI layout, and sequential `regfs push` CLI runs of the same folders.
 */
import { randomBytes, randomInt } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { REGFS_BIN, runCli } from '../lab/cli.js';
import { startDaemon } from '../lab/daemon.js';
import { startRegistry } from '../lab/registry.js';
import { MiB, procStatusKiB, progress, randomFile, round, run, Scope, sleep, tempDirIn, type Result } from './lib.js';

/** QUIET_PERIOD_S is the daemon's --quiet-period used by startDaemon; it counts from the newest file mtime, so a moved-in file does not wait for it. */
export const QUIET_PERIOD_S = 0.5;
const DAEMON_RSS_TARGET_MIB = 300;
const LONG = 900_000;

/** manifest returns the layers of repo:ref, or undefined while it does not resolve (any non-2xx). */
async function manifest(registryUrl: string, repo: string, ref: string): Promise<Array<{ size: number; digest: string }> | undefined> {
  try {
    const res = await fetch(`${registryUrl}/v2/${repo}/manifests/${ref}`, {
      headers: { Accept: 'application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json' },
    });
    if (!res.ok) {
      await res.arrayBuffer().catch(() => undefined);
      return undefined;
    }
    const m = (await res.json()) as { layers?: Array<{ size: number; digest: string }> };
    return m.layers ?? [];
  } catch {
    return undefined;
  }
}

/** waitResolved polls (every 100 ms) until ok(layers) holds for every ref; returns seconds since start (hrtime). */
async function waitResolved(
  registryUrl: string,
  refs: Array<{ repo: string; tag: string }>,
  ok: (layers: Array<{ size: number; digest: string }>) => boolean,
  start: bigint,
  maxMs: number,
  logs: () => string,
): Promise<number> {
  const pending = new Set(refs.map((r) => `${r.repo}:${r.tag}`));
  const deadline = Date.now() + maxMs;
  for (;;) {
    await Promise.all(
      [...pending].map(async (k) => {
        const i = k.lastIndexOf(':');
        const layers = await manifest(registryUrl, k.slice(0, i), k.slice(i + 1));
        if (layers && ok(layers)) pending.delete(k);
      }),
    );
    if (pending.size === 0) return Number(process.hrtime.bigint() - start) / 1e9;
    if (Date.now() > deadline) throw new Error(`timed out: ${pending.size} tags never resolved (${[...pending].slice(0, 5).join(', ')})\ndaemon log tail:\n${logs().slice(-3000)}`);
    await sleep(100);
  }
}

// ---------------------------------------------------------------------------------------------
// staging-push-1g

/** benchStagingPush times a big file moved into STAGING/bench/stage/v1/ until the tag resolves, vs skopeo copy oci: -> docker://. */
export async function benchStagingPush(size: number, results: Result[]): Promise<void> {
  const scope = new Scope('staging-push');
  try {
    progress('staging-push: starting registry and daemon');
    const reg = await startRegistry(undefined, { flavour: 'plain' });
    scope.teardown(() => reg.stop());
    const d = await startDaemon(scope, { source: reg.host });
    // The source file lives in the daemon's base dir: the same filesystem as staging, so mv is a rename.
    const srcDir = path.join(d.dirs.base, 'src');
    await fsp.mkdir(srcDir);
    const big = path.join(srcDir, 'big.bin');
    progress(`staging-push: writing ${size / MiB} MiB of random bytes`);
    await randomFile(big, size);
    const oci = await tempDirIn(scope, 'regfs-bench-oci-');
    const layout = path.join(oci, 'layout');
    progress('staging-push: regfs push oci: layout (untimed)');
    const p = await runCli(['push', `oci:${layout}:v1`, 'big.bin'], { cwd: srcDir, timeoutMs: LONG });
    if (p.code !== 0) throw new Error(`regfs push oci: failed (${p.code}): ${p.stderr}`);

    // skopeo first (fresh destination repository), so the file's page cache state is the same for both.
    progress('staging-push: skopeo copy oci: -> docker://');
    const sk = await run(['skopeo', '--insecure-policy', 'copy', '--dest-tls-verify=false', `oci:${layout}:v1`, `docker://${reg.host}/bench/skopeo-copy:v1`], { timeoutMs: LONG });
    const skLayers = await manifest(reg.url, 'bench/skopeo-copy', 'v1');
    if (!skLayers?.some((l) => l.size === size)) throw new Error('skopeo copy: destination manifest has no layer of the file size');
    progress(`staging-push: skopeo copy ${sk.seconds.toFixed(3)} s`);
    await fsp.rm(oci, { recursive: true, force: true });

    const tagDir = path.join(d.dirs.staging, 'bench', 'stage', 'v1');
    await fsp.mkdir(tagDir, { recursive: true });
    await sleep(1500); // let the daemon see (and ignore) the empty folder before the clock starts
    progress('staging-push: mv big.bin into STAGING/bench/stage/v1/');
    const start = process.hrtime.bigint();
    await fsp.rename(big, path.join(tagDir, 'big.bin'));
    const seconds = await waitResolved(reg.url, [{ repo: 'bench/stage', tag: 'v1' }], (ls) => ls.some((l) => l.size === size), start, 600_000, d.logs);
    const layers = (await manifest(reg.url, 'bench/stage', 'v1')) ?? [];
    const sameBlob = layers.some((l) => skLayers.some((s) => s.digest === l.digest));
    const rssKiB = await d.rssPeakKiB();
    progress(`staging-push: tag resolved ${seconds.toFixed(3)} s after mv (quiet period ${QUIET_PERIOD_S} s from file mtimes), daemon VmHWM ${(rssKiB / 1024).toFixed(1)} MiB`);
    const ratio = seconds / sk.seconds;
    results.push({
      name: 'staging-push-1g',
      regfs: round(seconds),
      peer: round(sk.seconds),
      unit: 's',
      peerName: 'skopeo copy',
      ratio: round(ratio),
      target: `daemon/skopeo <= 1.0 (${QUIET_PERIOD_S} s quiet from mtimes)`,
      met: ratio <= 1.0,
      details: {
        readBytes: size,
        quietPeriodSeconds: QUIET_PERIOD_S,
        sameBlobDigestAsSkopeo: sameBlob,
        daemonVmHwmMiB: round(rssKiB / 1024, 1),
        pollIntervalMs: 100,
        daemonPushedLine: /pushed bench\/stage:v1/.test(d.logs()),
      },
    });
  } finally {
    progress('staging-push: cleaning up');
    await scope.close();
  }
}

// ---------------------------------------------------------------------------------------------
// staging-1000-files

/** benchStagingMany times 20 tag folders x 50 small files landing in staging until all 20 tags resolve, vs 20 sequential `regfs push` runs. */
export async function benchStagingMany(results: Result[]): Promise<void> {
  const TAGS = 20;
  const FILES = 50;
  const scope = new Scope('staging-many');
  try {
    progress('staging-many: starting registry and daemon');
    const reg = await startRegistry(undefined, { flavour: 'plain' });
    scope.teardown(() => reg.stop());
    const d = await startDaemon(scope, { source: reg.host });
    const pid = d.child.pid!;
    // Two identical copies on the daemon's filesystem: one for the CLI runs, one renamed into staging.
    const cliDir = path.join(d.dirs.base, 'cli');
    const stageSrc = path.join(d.dirs.base, 'stage-src');
    let totalBytes = 0;
    for (let t = 0; t < TAGS; t++) {
      await fsp.mkdir(path.join(cliDir, `t${t}`), { recursive: true });
      await fsp.mkdir(path.join(stageSrc, `t${t}`), { recursive: true });
      for (let f = 0; f < FILES; f++) {
        const data = randomBytes(randomInt(1024, 4097));
        totalBytes += data.length;
        await fsp.writeFile(path.join(cliDir, `t${t}`, `f${f}`), data);
        await fsp.writeFile(path.join(stageSrc, `t${t}`, `f${f}`), data);
      }
    }
    const many = path.join(d.dirs.staging, 'bench', 'many');
    await fsp.mkdir(many, { recursive: true });
    await sleep(1500);
    const idle = await procStatusKiB(pid);
    progress(`staging-many: moving ${TAGS} tag folders (${TAGS * FILES} files, ${(totalBytes / MiB).toFixed(1)} MiB) into STAGING/bench/many/`);
    const refs = Array.from({ length: TAGS }, (_, t) => ({ repo: 'bench/many', tag: `t${t}` }));
    const start = process.hrtime.bigint();
    for (let t = 0; t < TAGS; t++) await fsp.rename(path.join(stageSrc, `t${t}`), path.join(many, `t${t}`));
    const seconds = await waitResolved(reg.url, refs, () => true, start, 300_000, d.logs);
    const hwmKiB = await d.rssPeakKiB();
    const layerCounts = await Promise.all(refs.map(async (r) => (await manifest(reg.url, r.repo, r.tag))?.length ?? -1));
    progress(`staging-many: all ${TAGS} tags resolved in ${seconds.toFixed(3)} s, daemon VmHWM ${(hwmKiB / 1024).toFixed(1)} MiB`);

    progress(`staging-many: ${TAGS} sequential regfs push CLI runs`);
    const files = Array.from({ length: FILES }, (_, f) => `f${f}`);
    const cliAll: number[] = [];
    for (let t = 0; t < TAGS; t++) {
      const r = await run([process.execPath, REGFS_BIN, 'push', `${reg.host}/bench/many-cli:t${t}`, ...files], { cwd: path.join(cliDir, `t${t}`), timeoutMs: 300_000 });
      cliAll.push(r.seconds);
    }
    const cliSeconds = cliAll.reduce((a, b) => a + b, 0);
    progress(`staging-many: CLI total ${cliSeconds.toFixed(3)} s`);
    const ratio = seconds / cliSeconds;
    const common = { tags: TAGS, filesPerTag: FILES, totalBytes, quietPeriodSeconds: QUIET_PERIOD_S, layersPerTag: [...new Set(layerCounts)] };
    results.push({
      name: 'staging-1000-files',
      regfs: round(seconds),
      peer: round(cliSeconds),
      unit: 's',
      peerName: `${TAGS}x regfs push`,
      ratio: round(ratio),
      target: `daemon/cli <= 1.0 (incl. ${QUIET_PERIOD_S} s quiet)`,
      met: ratio <= 1.0 && layerCounts.every((n) => n >= 1),
      details: { ...common, cliSeconds: cliAll.map((v) => round(v)), secondsMinusQuietPeriod: round(seconds - QUIET_PERIOD_S) },
    });
    const peakMiB = hwmKiB / 1024;
    const idleMiB = (idle?.rss ?? NaN) / 1024;
    results.push({
      name: 'staging-1000-files-rss',
      regfs: round(peakMiB, 1),
      peer: round(idleMiB, 1),
      unit: 'MiB',
      peerName: 'idle daemon',
      ratio: round(peakMiB / idleMiB, 3),
      target: `VmHWM <= ${DAEMON_RSS_TARGET_MIB} MiB`,
      met: peakMiB <= DAEMON_RSS_TARGET_MIB,
      details: { ...common, vmHwmMiB: round(peakMiB, 1), idleRssMiB: round(idleMiB, 1), idleVmHwmMiB: round((idle?.hwm ?? NaN) / 1024, 1) },
    });
  } finally {
    progress('staging-many: cleaning up');
    await scope.close();
  }
}

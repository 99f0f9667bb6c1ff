/**
 * fio randread rows: `fio --rw=randread` (psync, queue depth 1, page cache dropped for the file at
 * open, a fixed number of reads) over a cold 1 GiB file through a fresh mount, with 4 KiB and 1 MiB
 * blocks; bytes fetched from the registry against bytes fio read, and fio's IOPS against the same
 * random Range GETs sent straight to the registry in the same run (bench/range-peer.ts); the
 * registry's access log counts the bytes it sent, so no proxy sits in either path.
 */
import path from 'node:path';
import { REPO_ROOT } from '../lab/cli.js';
import { progress, run, waitSettled, type Result } from './lib.js';

/** IOS is how many reads each side makes: few enough that random blocks rarely overlap (1 GiB file). */
const IOS = { '4k': 400, '1m': 150 } as const;

/** RandReadMount is what the rows need from the caller: a fresh mount's file for each trial. */
export interface RandReadSetup {
  size: number;
  /** blobUrl is the blob's URL at the registry. */
  blobUrl: string;
  /** freshFile mounts afresh and returns the file and a close function. */
  freshFile(): Promise<{ file: string; close(): Promise<void> }>;
  /** blobBytesServed is the registry's running total of blob body bytes sent (its access log). */
  blobBytesServed(): number;
}

/** benchRandRead returns the fio-randread-4k and fio-randread-1m rows. */
export async function benchRandRead(s: RandReadSetup): Promise<Result[]> {
  const rows: Result[] = [];
  for (const [label, bs] of [['4k', 4096], ['1m', 1024 * 1024]] as const) {
    const peer = JSON.parse((await run([process.execPath, path.join(REPO_ROOT, 'dist', 'bench', 'range-peer.js'), s.blobUrl, String(s.size), String(bs), String(IOS[label])], { timeoutMs: 120_000 })).stdout) as { iops: number };
    const m = await s.freshFile();
    try {
      const base = await waitSettled(() => s.blobBytesServed(), 1000, 15_000);
      const r = await run(['fio', '--name=randread', `--filename=${m.file}`, '--readonly', '--rw=randread', `--bs=${bs}`, `--size=${s.size}`, `--number_ios=${IOS[label]}`, '--ioengine=psync', '--invalidate=1', '--output-format=json'], { timeoutMs: 120_000 });
      const job = (JSON.parse(r.stdout.slice(r.stdout.indexOf('{'))) as { jobs: Array<{ read: { iops: number; io_bytes: number } }> }).jobs[0]!.read;
      const fetched = (await waitSettled(() => s.blobBytesServed(), 1000, 15_000)) - base;
      const amplification = fetched / Math.max(1, job.io_bytes);
      const ratio = job.iops / peer.iops;
      progress(`fio randread ${label}: ${job.iops.toFixed(0)} IOPS (direct Range GETs ${peer.iops.toFixed(0)}), ${(job.io_bytes / 1048576).toFixed(1)} MiB read, ${(fetched / 1048576).toFixed(1)} MiB fetched`);
      rows.push({
        name: `fio-randread-${label}`,
        regfs: Math.round(job.iops),
        peer: Math.round(peer.iops),
        unit: 'IOPS',
        peerName: 'direct Range GETs',
        ratio: Math.round(ratio * 1000) / 1000,
        target: bs >= 1024 * 1024 ? 'iops >= 0.8x; fetched/read <= 2' : 'iops >= 0.8x',
        met: ratio >= 0.8 && (bs < 1024 * 1024 || amplification <= 2),
        details: { blockBytes: bs, ios: IOS[label], bytesRead: job.io_bytes, bytesFetched: fetched, fetchedPerRead: Math.round(amplification * 100) / 100 },
      });
    } finally {
      await m.close();
    }
  }
  return rows;
}

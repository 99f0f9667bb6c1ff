/*
 * Parallel range streams through a real mount: a sequential reader of a registry that caps each
 * connection gets several range GETs at once (--read-streams, default 4), a random reader one, and
 * every byte is right.
 */
import test from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { runCli, tempDir } from '../lab/cli.js';
import { startFaultProxy } from '../lab/fault-proxy.js';
import { sh, startMount } from '../lab/mount.js';
import { startRegistry } from '../lab/registry.js';
import { mountDevice } from '../mount/mounter.js';

const MiB = 1024 * 1024;

test('a sequential reader gets parallel range streams (4 by default, 1 with --read-streams 1); random 1 MiB blocks fetch about their size', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const dir = await tempDir(t, 'regfs-streams-');
  const data = randomBytes(96 * MiB);
  await writeFile(path.join(dir, 'big.bin'), data);
  const push = await runCli(['push', `${reg.host}/s/big:v1`, 'big.bin'], { cwd: dir });
  t.is(push.code, 0, push.stderr);
  const proxy = await startFaultProxy(t, reg.url);
  // 40 MB/s per answer: one stream takes ~2.5 s for 96 MiB; several overlap once the window is wide.
  proxy.rules.push({ path: /\/blobs\//, bytesPerSecondEach: 40_000_000 });
  /** busiest is the most read-ahead GETs (>= 2 MiB) whose answers overlapped for over 50 ms at once. */
  const busiest = (): number => {
    const big = proxy.requests.filter((q) => q.bytesOut >= 2 * MiB && q.ended !== undefined);
    let most = 0;
    for (const q of big) {
      const at = q.time + 50;
      most = Math.max(most, big.filter((o) => o.time <= at && o.ended! > at).length);
    }
    return most;
  };
  for (const [args, check] of [
    [[], (p: number) => p >= 3],
    // One stream: a read that outran it may start the next request just before the last one ends.
    [['--read-streams', '1'], (p: number) => p <= 2],
  ] as const) {
    const m = await startMount(t, proxy.host, { args: [...args] });
    const file = path.join(m.mnt, 's', 'big', 'v1', 'big.bin');
    t.is((await sh(`ls -l ${path.dirname(file)}`)).code, 0);
    proxy.reset();
    const r = await sh(`sha256sum ${file}`);
    t.is(r.code, 0, r.stderr);
    t.is(r.stdout.split(' ')[0], createHash('sha256').update(data).digest('hex'));
    await m.stop(); // every answer has ended
    const peak = busiest();
    t.true(check(peak), `${args.join(' ') || 'default'}: ${peak} read-ahead GETs at once: ${proxy.requests.map((q) => `${String(q.headers.range)} ${q.time}-${q.ended}`).join(', ')}`);
  }
  // Random 1 MiB blocks (fio psync, which tells the kernel the access is random, as the bench does):
  // each fetches about its own size.
  const m = await startMount(t, proxy.host);
  const file = path.join(m.mnt, 's', 'big', 'v1', 'big.bin');
  await sh(`ls -l ${path.dirname(file)}`);
  proxy.reset();
  const fio = await sh(`fio --name=r --filename=${file} --readonly --rw=randread --bs=1M --size=${96 * MiB} --number_ios=8 --ioengine=psync --invalidate=1 --output-format=json`);
  t.is(fio.code, 0, fio.stderr);
  const read = (JSON.parse(fio.stdout.slice(fio.stdout.indexOf('{'))) as { jobs: Array<{ read: { io_bytes: number } }> }).jobs[0]!.read.io_bytes;
  t.is(read, 8 * MiB);
  await m.stop();
  const sent = proxy.requests.filter((q) => q.path.includes('/blobs/')).reduce((a, q) => a + q.bytesOut, 0);
  t.true(sent <= 2 * read, `random 1 MiB blocks: ${(sent / MiB).toFixed(2)} MiB fetched for ${read / MiB} MiB read: ${proxy.requests.map((q) => `${String(q.headers.range)} ${q.bytesOut}`).join(', ')}`);
  // And what a plain reader of single blocks gets is right.
  const m2 = await startMount(t, proxy.host);
  const file2 = path.join(m2.mnt, 's', 'big', 'v1', 'big.bin');
  for (const block of [80, 3, 41]) {
    const r = await sh(`dd if=${file2} bs=1M skip=${block} count=1 status=none | cmp - <(dd if=${path.join(dir, 'big.bin')} bs=1M skip=${block} count=1 status=none)`);
    t.is(r.code, 0, `block ${block}: ${r.stdout}${r.stderr}`);
  }
});

test('--kernel-read-ahead sets the mount\'s kernel read-ahead; without it the kernel keeps its own', async (t) => {
  const reg = await startRegistry(t, { flavour: 'plain' });
  const readAheadKb = async (mnt: string): Promise<number> => {
    const dev = await mountDevice(mnt);
    t.truthy(dev, `no mountinfo line for ${mnt}`);
    return Number((await readFile(`/sys/class/bdi/${dev}/read_ahead_kb`, 'utf8')).trim());
  };
  const set = await startMount(t, reg.host, { args: ['--kernel-read-ahead', '2M'] });
  t.is(await readAheadKb(set.mnt), 2048);
  const plain = await startMount(t, reg.host);
  t.not(await readAheadKb(plain.mnt), 2048);
  const bad = await runCli(['mount', reg.host, plain.mnt, '--kernel-read-ahead', 'lots']);
  t.is(bad.code, 2);
  t.regex(bad.stderr, /--kernel-read-ahead/);
});

/**
 * image-cat-estargz: the image of image-cat (5 layers, ~500 MiB) with every layer as eStargz: a cold
 * `cat rootfs/etc/os-release` against `skopeo copy` + `umoci unpack` of the whole image in the same run
 * (ratio regfs / peer, target <= 0.1), and the bytes the mount fetched from the registry (counted by a
 * forwarding proxy between mount and registry) as a share of the image's bytes (target <= 5%).
 */
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { estargzLayer, type EstargzLayer } from '../lab/estargz.js';
import { startFaultProxy } from '../lab/fault-proxy.js';
import { startMount } from '../lab/mount.js';
import { skopeoPush, writeOciImage, type ImageEntry } from '../lab/oci-image.js';
import { startRegistry } from '../lab/registry.js';
import { MiB, progress, run, Scope, tempDirIn, type Result } from './lib.js';

const LONG = 900_000;

export async function benchImageCatEstargz(results: Result[], quick: boolean): Promise<void> {
  const scope = new Scope('image-cat-estargz');
  try {
    const layerMiB = quick ? 20 : 100;
    progress(`image-cat-estargz: building a 5-layer eStargz image of ${5 * layerMiB} MiB`);
    const dir = await tempDirIn(scope, 'regfs-bench-esgz-');
    const layout = path.join(dir, 'layout');
    const layers: EstargzLayer[] = [];
    for (let i = 0; i < 5; i++) {
      const entries: ImageEntry[] = [{ name: 'usr/', type: 'directory' }, { name: `usr/l${i}/`, type: 'directory' }];
      if (i === 0) entries.push({ name: 'etc/', type: 'directory' }, { name: 'etc/os-release', content: 'ID=bench\n' });
      for (let k = 0; k < layerMiB / 10; k++) entries.push({ name: `usr/l${i}/blob${k}`, content: randomBytes(10 * MiB) });
      layers.push(await estargzLayer(entries));
    }
    await writeOciImage(layout, 'v1', layers);
    const imageBytes = layers.reduce((a, l) => a + l.gz.length, 0);
    const reg = await startRegistry(undefined, { flavour: 'plain' });
    scope.teardown(() => reg.stop());
    await skopeoPush(layout, 'v1', reg.host, 'bench/esgz:v1');
    layers.length = 0; // the blobs are on disk now: free ~500 MiB before timing (the proxy runs in this process)
    const proxy = await startFaultProxy(scope, reg.url);

    progress('image-cat-estargz: cold mount, cat rootfs/etc/os-release');
    const m = await startMount(scope, proxy.host);
    proxy.reset();
    const cat = await run(['cat', path.join(m.mnt, 'bench/esgz/v1/rootfs/etc/os-release')], { timeoutMs: LONG });
    if (cat.code !== 0 || cat.stdout !== 'ID=bench\n') throw new Error(`cat failed: ${cat.stderr}`);
    const fetched = proxy.bytesOut();
    const requests = proxy.requests.length;
    const t0 = proxy.requests[0]?.time ?? 0;
    const timeline = proxy.requests.map((r) => `${r.time - t0}ms ${r.method} ${r.path.replace(/sha256:([0-9a-f]{8})[0-9a-f]+/, '$1')} ${String(r.headers.range ?? '')} ${r.bytesOut}`);
    if (!/\.estargz-/.test((await run(['ls', path.join(m.cacheDir, 'tocs')])).stdout)) throw new Error('the layers were not read as eStargz');
    await m.stop();

    progress('image-cat-estargz: skopeo copy + umoci unpack');
    const out = path.join(dir, 'pulled');
    const copy = await run(['skopeo', '--insecure-policy', 'copy', '--quiet', '--src-tls-verify=false', `docker://${reg.host}/bench/esgz:v1`, `oci:${out}:v1`], { timeoutMs: LONG });
    if (copy.code !== 0) throw new Error(`skopeo copy failed: ${copy.stderr}`);
    const unpack = await run(['umoci', 'unpack', '--image', `${out}:v1`, path.join(dir, 'bundle')], { timeoutMs: LONG });
    if (unpack.code !== 0) throw new Error(`umoci unpack failed: ${unpack.stderr}`);
    const peer = copy.seconds + unpack.seconds;
    const ratio = cat.seconds / peer;
    const details = { timeline, layers: 5, imageMiB: imageBytes / MiB, fetchedBytes: fetched, requests, skopeoSeconds: copy.seconds, umociSeconds: unpack.seconds };
    results.push({ name: 'image-cat-estargz', regfs: cat.seconds, peer, unit: 's', peerName: 'skopeo copy + umoci unpack', ratio, target: 'ratio <= 0.1', met: ratio <= 0.1, details });
    const share = fetched / imageBytes;
    results.push({ name: 'image-cat-estargz-bytes', regfs: fetched / MiB, peer: imageBytes / MiB, unit: 'MiB', peerName: 'image size', ratio: share, target: 'ratio <= 0.05', met: share <= 0.05, details });
  } finally {
    await scope.close();
  }
}

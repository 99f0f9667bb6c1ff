/**
 * image-cat: `cat rootfs/etc/os-release` of a 5-layer ~500 MiB image through a cold mount, against
 * `skopeo copy` + `umoci unpack` of the whole image in the same run (ratio regfs / peer, target <= 0.5).
 */
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { startMount } from '../lab/mount.js';
import { skopeoPush, tarLayer, writeOciImage, type BuiltLayer, type ImageEntry } from '../lab/oci-image.js';
import { startRegistry } from '../lab/registry.js';
import { MiB, progress, run, Scope, tempDirIn, type Result } from './lib.js';

const LONG = 900_000;

export async function benchImageCat(results: Result[], quick: boolean): Promise<void> {
  const scope = new Scope('image-cat');
  try {
    const layerMiB = quick ? 20 : 100;
    progress(`image-cat: building a 5-layer image of ${5 * layerMiB} MiB`);
    const dir = await tempDirIn(scope, 'regfs-bench-img-');
    const layout = path.join(dir, 'layout');
    const layers: BuiltLayer[] = [];
    for (let i = 0; i < 5; i++) {
      const entries: ImageEntry[] = [{ name: 'usr/', type: 'directory' }, { name: `usr/l${i}/`, type: 'directory' }];
      if (i === 0) entries.push({ name: 'etc/', type: 'directory' }, { name: 'etc/os-release', content: 'ID=bench\n' });
      // Random (incompressible) content: the image is as large on the wire as on disk.
      for (let k = 0; k < layerMiB / 10; k++) entries.push({ name: `usr/l${i}/blob${k}`, content: randomBytes(10 * MiB) });
      layers.push(await tarLayer(entries));
    }
    await writeOciImage(layout, 'v1', layers);
    const reg = await startRegistry(undefined, { flavour: 'plain' });
    scope.teardown(() => reg.stop());
    await skopeoPush(layout, 'v1', reg.host, 'bench/image:v1');

    progress('image-cat: cold mount, cat rootfs/etc/os-release');
    const m = await startMount(scope, reg.host);
    const cat = await run(['cat', path.join(m.mnt, 'bench/image/v1/rootfs/etc/os-release')], { timeoutMs: LONG });
    if (cat.code !== 0 || cat.stdout !== 'ID=bench\n') throw new Error(`cat failed: ${cat.stderr}`);
    await m.stop();

    progress('image-cat: skopeo copy + umoci unpack');
    const out = path.join(dir, 'pulled');
    const copy = await run(['skopeo', '--insecure-policy', 'copy', '--quiet', '--src-tls-verify=false', `docker://${reg.host}/bench/image:v1`, `oci:${out}:v1`], { timeoutMs: LONG });
    if (copy.code !== 0) throw new Error(`skopeo copy failed: ${copy.stderr}`);
    const unpack = await run(['umoci', 'unpack', '--image', `${out}:v1`, path.join(dir, 'bundle')], { timeoutMs: LONG });
    if (unpack.code !== 0) throw new Error(`umoci unpack failed: ${unpack.stderr}`);
    const peer = copy.seconds + unpack.seconds;
    const ratio = cat.seconds / peer;
    results.push({
      name: 'image-cat',
      regfs: cat.seconds,
      peer,
      unit: 's',
      peerName: 'skopeo copy + umoci unpack',
      ratio,
      target: 'ratio <= 0.5',
      met: ratio <= 0.5,
      details: { layers: 5, imageMiB: layers.reduce((a, l) => a + l.gz.length, 0) / MiB, skopeoSeconds: copy.seconds, umociSeconds: unpack.seconds },
    });
  } finally {
    await scope.close();
  }
}

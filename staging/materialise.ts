/**
 * Copying a tag's files from the registry (through the blob cache) into its staging folder, so a change
 * through the mount starts from what is published.
 *
 * Ordering rules: the files are assembled in a fresh work folder under `workRoot` (the staging folder's
 * `.regfs-writes/`, on the same filesystem), the tag marker is written last, and only then is the folder
 * swapped in by two renames: an old tag folder is moved aside first and put back if the swap fails.
 * Nobody ever sees a half-copied tag folder. Each layer's blob is pinned in the cache while it is read.
 * The caller holds the tag's lock (staging/tag-lock.ts) for the whole copy.
 */
import { randomBytes } from 'node:crypto';
import { constants as C, createReadStream, promises as fsp } from 'node:fs';
import path from 'node:path';
import type { BlobCache } from '../cache/blob-cache.js';
import type { Descriptor } from '../registry/descriptor.js';
import { Annotation } from '../registry/media-types.js';
import type { ReadableRepository } from '../registry/storage.js';
import { extractTar } from '../registry/tar-extract.js';
import { TAG_MARKER } from './layout.js';
import type { StagingModes } from './modes.js';

/** StagedLayer is one layer of a tag and the path (its title) it has inside the tag folder. */
export interface StagedLayer {
  layer: Descriptor;
  title: string;
}

/** MaterialiseOptions say which layers of which repository go into which tag folder. */
export interface MaterialiseOptions {
  repo: ReadableRepository;
  layers: StagedLayer[];
  /** dir is the tag folder in staging; replaced as a whole. */
  dir: string;
  /** workRoot is a private folder on the staging filesystem for the work folder and the old copy. */
  workRoot: string;
  blobs: Pick<BlobCache, 'ensureBlob' | 'pin' | 'unpin'>;
  /**
   * modes, when given, are those of the copy: the tag folder, the folders of nested titles and the copied
   * file layers get them (a private mount's copy is private). Entries of a directory layer keep the modes
   * its tar records, which are published with it (the private tag folder already hides them).
   */
  modes?: StagingModes;
}

const rand = (): string => randomBytes(8).toString('hex');

/** materialiseTag writes the layers (unpacking those marked to be unpacked) into a new tag folder at `dir`, with the tag marker. */
export async function materialiseTag(o: MaterialiseOptions): Promise<void> {
  const work = path.join(o.workRoot, `tag-${rand()}`);
  const aside = path.join(o.workRoot, `old-${rand()}`);
  let movedAside = false;
  await fsp.mkdir(work, o.modes ? { mode: o.modes.dir } : {});
  try {
    for (const { layer, title } of o.layers) {
      const dest = path.join(work, ...title.split('/'));
      await fsp.mkdir(path.dirname(dest), { recursive: true, ...(o.modes ? { mode: o.modes.dir } : {}) });
      o.blobs.pin(layer.digest);
      try {
        const blob = await o.blobs.ensureBlob(o.repo, layer);
        if (layer.annotations?.[Annotation.unpack] === 'true') {
          await fsp.mkdir(dest);
          await extractTar(createReadStream(blob), dest, { gzip: layer.mediaType.endsWith('gzip'), stripPrefix: title });
        } else {
          await fsp.copyFile(blob, dest, C.COPYFILE_FICLONE);
          if (o.modes) await fsp.chmod(dest, o.modes.file); // a file layer records no mode: the copy gets the staging's
        }
      } finally {
        o.blobs.unpin(layer.digest);
      }
    }
    await fsp.writeFile(path.join(work, TAG_MARKER), '', o.modes ? { mode: o.modes.file } : {});
    await fsp.mkdir(path.dirname(o.dir), { recursive: true, ...(o.modes ? { mode: o.modes.dir } : {}) });
    movedAside = await fsp.rename(o.dir, aside).then(() => true, (e: NodeJS.ErrnoException) => {
      if (e.code === 'ENOENT') return false;
      throw e;
    });
    await fsp.rename(work, o.dir);
  } catch (err) {
    if (movedAside) await fsp.rename(aside, o.dir).catch(() => undefined);
    await fsp.rm(work, { recursive: true, force: true });
    throw err;
  }
  if (movedAside) await fsp.rm(aside, { recursive: true, force: true });
}

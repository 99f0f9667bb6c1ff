import { createReadStream } from 'node:fs';
import type { Readable } from 'node:stream';
import type { Descriptor } from '../registry/descriptor.js';
import { parseDigest } from '../registry/digest.js';
import type { ByteRange, ReadableRepository } from '../registry/storage.js';
import type { BlobCache } from './blob-cache.js';

/**
 * cachedRepository reads whole blobs through the blob cache: each is fetched and verified once, then
 * streamed from the cache (pinned while open), so pulling the same blob again — another tag, the next
 * version of a tag, another daemon round — never fetches it twice. Everything else goes to `repo`.
 */
export function cachedRepository(repo: ReadableRepository, blobs: BlobCache): ReadableRepository {
  return {
    name: repo.name,
    display: repo.display,
    resolve: (reference, signal) => repo.resolve(reference, signal),
    fetchManifest: (reference, signal) => repo.fetchManifest(reference, signal),
    blobExists: (desc) => repo.blobExists(desc),
    statBlob: (digest) => repo.statBlob(digest),
    listTags: (opts) => repo.listTags(opts),
    referrers: (subject, artifactType) => repo.referrers(subject, artifactType),
    fetchBlob: async (desc: Descriptor, range?: ByteRange, signal?: AbortSignal): Promise<Readable> => {
      if (range) return repo.fetchBlob(desc, range, signal);
      const digest = parseDigest(desc.digest);
      blobs.pin(digest);
      let stream: Readable;
      try {
        stream = createReadStream(await blobs.ensureBlob(repo, desc));
      } catch (err) {
        blobs.unpin(digest);
        throw err;
      }
      stream.once('close', () => blobs.unpin(digest));
      return stream;
    },
  };
}

import type { Descriptor } from '../registry/descriptor.js';
import { referrerDirName } from '../registry/referrers.js';
import type { ReadableRepository } from '../registry/storage.js';
import type { MetadataSource } from './ports.js';

/** REFERRERS_DIR is the hidden folder of a manifest that lists its referrers. */
export const REFERRERS_DIR = '.referrers';

/**
 * ReferrersView caches the referrers of manifests for the mount: each list is trusted for the metadata
 * TTL and dropped when the metadata cache's listingsGeneration changes (after a push, on refresh), as
 * tag lists are. Names are `<artifactType made safe>-<12 hex of the digest>`; on a clash the full hex is used.
 */
export class ReferrersView {
  private readonly lists = new Map<string, { at: number; gen: number | undefined; p: Promise<Map<string, Descriptor>> }>();

  constructor(private readonly metadata: MetadataSource, private readonly ttlMs: number) {}

  /** named returns the referrers of `subject` in `repo` by mount name. */
  named(repo: ReadableRepository, subject: Descriptor): Promise<Map<string, Descriptor>> {
    const key = `${repo.name}@${subject.digest}`;
    const gen = this.metadata.listingsGeneration;
    const hit = this.lists.get(key);
    if (hit && hit.gen === gen && Date.now() - hit.at < this.ttlMs) return hit.p;
    const p = repo.referrers(subject).then((list) => {
      const out = new Map<string, Descriptor>();
      for (const d of list) {
        let name = referrerDirName(d);
        if (out.has(name)) name = `${name.slice(0, name.lastIndexOf('-'))}-${d.digest.slice(d.digest.indexOf(':') + 1)}`;
        if (!out.has(name)) out.set(name, d);
      }
      return out;
    });
    p.catch(() => this.lists.delete(key));
    if (this.lists.size > 5000) this.lists.clear();
    this.lists.set(key, { at: Date.now(), gen, p });
    return p;
  }
}

/**
 * Tag operations the Distribution API only offers indirectly. A registry deletes manifests, not tags:
 * deleting the manifest behind a tag removes every tag on it, so a tag is deleted only when no other
 * tag of its repository points at the same manifest. The check and the delete are not atomic: a tag
 * pushed onto the manifest between them is deleted with it.
 */
import type { Descriptor } from './descriptor.js';
import type { Repository } from './storage.js';
import { runLimited } from '../util/limit.js';

/** TagDeletion is the outcome of deleteTagAlone: deleted, or refused because `sharedWith` tags point at the same manifest. */
export type TagDeletion =
  | { deleted: true; descriptor: Descriptor }
  | { deleted: false; descriptor: Descriptor; sharedWith: string[] };

/** tagsSharingManifest lists (sorted) the other tags of repo that resolve to the manifest `desc` of `tag`. */
export async function tagsSharingManifest(repo: Repository, tag: string, desc: Descriptor): Promise<string[]> {
  const others: string[] = [];
  const tags = (await repo.listTags()).filter((t) => t !== tag);
  await runLimited(tags, 4, async (t) => {
    const d = await repo.resolve(t).catch(() => undefined);
    if (d?.digest === desc.digest) others.push(t);
  });
  return others.sort();
}

/** deleteTagAlone deletes the manifest behind `tag`, unless other tags point at it too (then nothing is deleted). */
export async function deleteTagAlone(repo: Repository, tag: string): Promise<TagDeletion> {
  const descriptor = await repo.resolve(tag);
  const sharedWith = await tagsSharingManifest(repo, tag, descriptor);
  if (sharedWith.length) return { deleted: false, descriptor, sharedWith };
  await repo.deleteManifest(descriptor);
  return { deleted: true, descriptor };
}

import { RegfsError } from '../util/errors.js';
import type { Repository } from '../registry/storage.js';
import type { Descriptor } from '../registry/descriptor.js';
import { tagsSharingManifest } from '../registry/tag-ops.js';
import { prompt } from './prompt.js';

/**
 * confirm asks `question [y/N]` on a terminal and resolves to the answer. With `force` it asks
 * nothing. Without a terminal on stdin it refuses (exit 2) instead of reading a piped answer: a
 * delete in a script must say --force. (ORAS reads a line from stdin even when it is a pipe, and
 * fails with "EOF" on an empty one.)
 */
export async function confirm(question: string, opts: { force?: boolean; what: string }): Promise<boolean> {
  if (opts.force) return true;
  if (!process.stdin.isTTY) {
    throw new RegfsError('INVALID_ARGUMENT', `${opts.what}: standard input is not a terminal, so regfs cannot ask for confirmation; add --force to delete`);
  }
  const answer = (await prompt(`${question} [y/N] `)).trim().toLowerCase();
  return answer === 'y' || answer === 'yes';
}

/** ManifestDeletion is what deleteManifestConfirmed did. */
export interface ManifestDeletion {
  deleted: boolean;
  descriptor: Descriptor;
  /** alsoRemoves are the other tags that pointed at the manifest and went with it. */
  alsoRemoves: string[];
}

/**
 * deleteManifestConfirmed resolves `reference` (tag or digest), names every tag that points at the
 * same manifest (a registry deletes manifests, not tags, so they all go), asks, and deletes.
 */
export async function deleteManifestConfirmed(repo: Repository, reference: string, opts: { force?: boolean; shown: string; tag?: string }): Promise<ManifestDeletion> {
  const descriptor = await repo.resolve(reference);
  const alsoRemoves = await tagsSharingManifest(repo, opts.tag ?? '', descriptor);
  const tail = alsoRemoves.length ? ` (it also removes tags: ${alsoRemoves.join(', ')})` : '';
  const question = `Are you sure you want to delete the manifest ${JSON.stringify(descriptor.digest)} and all tags associated with it?${tail}`;
  const ok = await confirm(question, { force: opts.force, what: `delete ${opts.shown}${tail}` });
  if (!ok) return { deleted: false, descriptor, alsoRemoves };
  await repo.deleteManifest(descriptor);
  return { deleted: true, descriptor, alsoRemoves };
}

/** alsoText renders the co-deleted tags for a `Deleted ...` line. */
export function alsoText(tags: string[]): string {
  return tags.length ? ` (also removes tags: ${tags.join(', ')})` : '';
}

import { existsSync } from 'node:fs';
import path from 'node:path';
import { RegfsError } from '../util/errors.js';
import { OciLayoutStore } from './oci-layout-store.js';
import { openSource, type SourceOptions } from './open.js';
import { isRepositoryName, parseMountSource, type MountSource } from './reference.js';
import type { Registry } from './storage.js';

/**
 * MountRoot is what a mount shows at its root: a folder of the registry's tree (`prefix` is the
 * repository path of that folder, '' for the whole registry), or one artifact's files (read-only).
 */
export type MountRoot =
  | { kind: 'tree'; prefix: string }
  | { kind: 'artifact'; repository: string; reference: string };

/** OpenedMountSource is a parsed and opened mount source: the store to talk to and what its root shows. */
export interface OpenedMountSource {
  registry: Registry;
  root: MountRoot;
  /** display names the source as the user gave it, canonicalised (`docker.io/library/alpine`). */
  display: string;
  parsed: MountSource;
}

/**
 * openMountSource parses `HOST[/NAMESPACE|/REPOSITORY[:TAG|@DIGEST]]` or `oci:DIR[:TAG|@DIGEST]`
 * (exit 2 naming the wrong part) and opens its store. Nothing is asked of the registry here: whether a
 * path is a namespace or a repository is decided lazily by the mount, as every lookup below it is.
 * `oci:DIR:TAG` needs DIR to be one OCI layout (it holds an `oci-layout` file).
 */
export async function openMountSource(input: string, opts: SourceOptions = {}): Promise<OpenedMountSource> {
  const parsed = parseMountSource(input);
  switch (parsed.kind) {
    case 'registry':
      return { registry: openSource(parsed.registry, opts), root: { kind: 'tree', prefix: '' }, display: parsed.registry, parsed };
    case 'path': {
      const registry = openSource(parsed.registry, opts);
      const prefix = parsed.path === parsed.repository ? parsed.path : await dockerHubPrefix(registry, parsed.path, parsed.repository);
      return { registry, root: { kind: 'tree', prefix }, display: `${parsed.registry}/${prefix}`, parsed };
    }
    case 'artifact': {
      const reference = parsed.digest ?? parsed.tag!;
      const display = `${parsed.registry}/${parsed.repository}${parsed.digest ? `@${parsed.digest}` : `:${parsed.tag}`}`;
      return { registry: openSource(parsed.registry, opts), root: { kind: 'artifact', repository: parsed.repository, reference }, display, parsed };
    }
    case 'layout':
      return { registry: openSource(`oci:${parsed.dir}`, opts), root: { kind: 'tree', prefix: '' }, display: `oci:${parsed.dir}`, parsed };
    case 'layout-artifact': {
      const store = new OciLayoutStore(parsed.dir);
      if (!existsSync(path.join(parsed.dir, 'oci-layout'))) {
        throw new RegfsError('INVALID_REFERENCE', `mount source ${JSON.stringify(input)}: ${parsed.dir} holds no oci-layout file; oci:DIR:TAG needs DIR to be one OCI layout`);
      }
      const [repository] = await store.listRepositories();
      const reference = parsed.digest ?? parsed.tag!;
      return { registry: store, root: { kind: 'artifact', repository: repository!, reference }, display: `oci:${parsed.dir}${parsed.digest ? `@${parsed.digest}` : `:${parsed.tag}`}`, parsed };
    }
  }
}

/**
 * dockerHubPrefix decides what `docker.io/NAME` is: the official repository `library/NAME` when it
 * exists (docker's rule), else the namespace `NAME/` (`docker.io/bitnami`). One tag-list request (the list the root shows anyway); when
 * the registry cannot tell (offline), the repository, as docker would pull it.
 */
async function dockerHubPrefix(registry: Registry, path: string, repository: string): Promise<string> {
  try {
    await registry.repository(repository).listTags();
    return repository;
  } catch (err) {
    const absent = err instanceof RegfsError && (err.code === 'NOT_FOUND' || err.code === 'UNAUTHORIZED' || err.code === 'DENIED');
    return absent ? path : repository;
  }
}

/** isWholeRegistry tells whether a mount root is the whole store (the only root staging writes go to). */
export function isWholeRegistry(root: MountRoot): boolean {
  return root.kind === 'tree' && root.prefix === '';
}

/** checkRepositories validates configured repository names (INVALID_ARGUMENT, exit 2, naming the bad one and where it was given). */
export function checkRepositories(names: string[], where: string): string[] {
  for (const n of names) {
    if (typeof n !== 'string' || !isRepositoryName(n)) throw new RegfsError('INVALID_ARGUMENT', `${where}: ${JSON.stringify(n)} is not a repository name: lowercase [a-z0-9] components separated by "/", ".", "_", "__" or "-"`);
  }
  return names;
}

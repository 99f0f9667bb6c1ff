import { existsSync, promises as fsp } from 'node:fs';
import path from 'node:path';
import { RegfsError, errnoOf, ioError } from '../util/errors.js';
import { OciLayoutRepository } from './oci-layout.js';
import { statOrUndefined } from './oci-layout-index.js';
import { isRepositoryName } from './reference.js';
import type { ListOptions, Registry } from './storage.js';

const MAX_STORE_DEPTH = 16;

/** sanitizeRepositoryName turns a directory's basename into a valid single-component repository name. */
export function sanitizeRepositoryName(base: string): string {
  let s = base.toLowerCase().replace(/[^a-z0-9._-]/g, '-');
  s = s.replace(/[._-]+/g, (run) => (/^(\.|_|__|-+)$/.test(run) ? run : '-'));
  s = s.replace(/^[._-]+|[._-]+$/g, '');
  return s.length > 0 ? s.slice(0, 255).replace(/[._-]+$/, '') : 'layout';
}

/**
 * OciLayoutStore is a folder of OCI image layouts: repository `samples/artifact` is the layout at
 * `ROOT/samples/artifact`. If ROOT is itself a layout it holds exactly one repository, named by
 * ROOT's basename lowercased with invalid characters replaced by '-' (see sanitizeRepositoryName).
 * A repository's layout is created on its first pushBlob/pushManifest, never on a read.
 */
export class OciLayoutStore implements Registry {
  /** display is `oci:ROOT`. */
  readonly display: string;
  private readonly root: string;
  private readonly create: boolean;

  constructor(root: string, opts: { create?: boolean } = {}) {
    this.root = root;
    this.display = `oci:${root}`;
    this.create = opts.create ?? false;
  }

  private rootIsLayout(): boolean {
    return existsSync(path.join(this.root, 'oci-layout'));
  }

  private singleName(): string {
    return sanitizeRepositoryName(path.basename(path.resolve(this.root)));
  }

  /** listRepositories returns the sorted relative paths of the layouts under ROOT (symlinks not followed, `blobs` skipped, depth ≤ 16). */
  async listRepositories(opts?: ListOptions): Promise<string[]> {
    const st = await statOrUndefined(this.root);
    if (!st) {
      if (this.create) return [];
      throw new RegfsError('NOT_FOUND', `${this.display} does not exist`);
    }
    if (!st.isDirectory()) throw new RegfsError('NOT_FOUND', `${this.display} is not a directory`);
    if (this.rootIsLayout()) return [this.singleName()];
    const out: string[] = [];
    const walk = async (rel: string, depth: number): Promise<void> => {
      opts?.signal?.throwIfAborted();
      const abs = rel ? path.join(this.root, rel) : this.root;
      let entries;
      try {
        entries = await fsp.readdir(abs, { withFileTypes: true });
      } catch (err) {
        const code = errnoOf(err);
        if (rel && (code === 'EACCES' || code === 'ENOENT' || code === 'ENOTDIR' || code === 'EPERM')) return;
        throw ioError(`cannot list ${abs}`, err);
      }
      if (rel && entries.some((e) => e.name === 'oci-layout' && e.isFile())) out.push(rel);
      if (depth >= MAX_STORE_DEPTH) return;
      for (const e of entries) {
        if (!e.isDirectory() || e.name === 'blobs' || !isRepositoryName(e.name)) continue;
        const child = rel ? `${rel}/${e.name}` : e.name;
        if (!isRepositoryName(child)) continue;
        await walk(child, depth + 1);
      }
    };
    await walk('', 0);
    return out.sort();
  }

  /** repository opens the layout for `name` (validated, so `../` cannot escape ROOT); it is created on first push. */
  repository(name: string): OciLayoutRepository {
    if (!isRepositoryName(name)) {
      throw new RegfsError('INVALID_ARGUMENT', `invalid repository name ${JSON.stringify(name.slice(0, 140))}: must be lowercase [a-z0-9] components separated by "/", ".", "_", "__" or "-"`);
    }
    if (this.rootIsLayout()) {
      const single = this.singleName();
      if (name !== single) {
        throw new RegfsError('NOT_FOUND', `${this.display} is a single OCI layout holding repository "${single}", not "${name}"`);
      }
      return new OciLayoutRepository(this.root, name, { create: true });
    }
    return new OciLayoutRepository(path.join(this.root, ...name.split('/')), name, { create: true });
  }

  /** close is a no-op: a layout store holds no connections. */
  async close(): Promise<void> {}
}

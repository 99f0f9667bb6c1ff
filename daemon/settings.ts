import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { parseSizeValue } from '../util/units.js';
import { RegfsError } from '../util/errors.js';
import { isRepositoryName, parseMountSource, parseReference } from '../registry/reference.js';
import { checkRepositories } from '../registry/open-mount.js';
import { writeFileAtomic } from '../util/fs-atomic.js';
import { defaultPaths, isInside } from '../util/paths.js';
import { parseId, parseMode } from '../mount/attr-policy.js';

/**
 * MountAccess says who may use a mount and what it shows: allowOther (FUSE allow_other with
 * default_permissions), the owner and the permission bits (see mount/attr-policy.ts). In a config
 * file these keys go on a mount, or at the top level as the default of every mount.
 */
export interface MountAccess {
  allowOther?: boolean;
  uid?: number;
  gid?: number;
  umask?: number;
  fileMode?: number;
  dirMode?: number;
}

/** ACCESS_KEYS are the MountAccess keys, valid on a mount and at the top level of a config file. */
export const ACCESS_KEYS = ['allowOther', 'uid', 'gid', 'umask', 'fileMode', 'dirMode'] as const;

/** validateAccess reads the MountAccess keys of a config object (modes are octal strings like "0644", ids numbers). */
export function validateAccess(r: Record<string, unknown>, where: string): MountAccess {
  const out: MountAccess = {};
  if (r.allowOther !== undefined) {
    if (typeof r.allowOther !== 'boolean') throw new RegfsError('INVALID_ARGUMENT', `${where}.allowOther: must be true or false`);
    out.allowOther = r.allowOther;
  }
  for (const k of ['uid', 'gid'] as const) if (r[k] !== undefined) out[k] = parseId(r[k], `${where}.${k}`);
  for (const k of ['umask', 'fileMode', 'dirMode'] as const) if (r[k] !== undefined) out[k] = parseMode(r[k], `${where}.${k}`);
  return out;
}

/** pickAccess keeps the MountAccess keys of an object that are set. */
export function pickAccess(o: MountAccess): MountAccess {
  return Object.fromEntries(ACCESS_KEYS.filter((k) => o[k] !== undefined).map((k) => [k, o[k]])) as MountAccess;
}

/** MountConfig is one mount of the daemon, with an optional staging folder. */
export interface MountConfig extends MountAccess {
  source: string;
  mountpoint: string;
  staging?: string;
  /** allowDelete lets rm/rmdir through the mount remove published files and delete tags (see docs/mount.md). */
  allowDelete?: boolean;
  plainHttp?: boolean;
  insecure?: boolean;
  caFile?: string;
  registryConfig?: string;
  /** repositories are shown at the mount's root whether or not the registry's catalog lists them (full repository paths). */
  repositories?: string[];
}

/** SyncDirection says which way a sync pair copies: both ways, local to registry only, or registry to local only. */
export type SyncDirection = 'both' | 'up' | 'down';

/** SyncConfig pairs a local folder with a repository: `local/<tag>/<files>` <-> `repository:<tag>`. */
export interface SyncConfig {
  local: string;
  /** repository is `host[:port]/repo/path` or `oci:DIR/NAME` (the layout DIR/NAME, in the folder of layouts DIR). */
  repository: string;
  /** tags is a glob (`*`, `?`; several separated by commas) choosing the tags synced; default every tag. */
  tags?: string;
  direction: SyncDirection;
  intervalSeconds: number;
  propagateDeletes: boolean;
  plainHttp?: boolean;
  insecure?: boolean;
  caFile?: string;
  registryConfig?: string;
}

/** DaemonConfig is everything `regfs daemon` runs with. */
export interface DaemonConfig {
  cacheDir: string;
  stateDir: string;
  socket: string;
  metadataTtlSeconds: number;
  cacheMaxSize?: number;
  minFreeBytes: number;
  /** readStreams is how many range fetches of one file may stream ahead of a sequential reader (1-16; default 4). */
  readStreams?: number;
  quietSeconds: number;
  logFormat: 'text' | 'json';
  logLevel: 'debug' | 'info' | 'warn' | 'error';
  /** mountDefaults apply to every mount that does not set the key itself (top-level keys, daemon flags). */
  mountDefaults: MountAccess;
  mounts: MountConfig[];
  syncs: SyncConfig[];
}

const TOP_KEYS = ['cacheDir', 'stateDir', 'socket', 'metadataTtlSeconds', 'cacheMaxSize', 'minFreeBytes', 'readStreams', 'quietSeconds', 'logFormat', 'logLevel', 'mounts', 'syncs', ...ACCESS_KEYS] as const;
const MOUNT_KEYS = ['source', 'mountpoint', 'staging', 'allowDelete', 'plainHttp', 'insecure', 'caFile', 'registryConfig', 'repositories', ...ACCESS_KEYS] as const;
const SYNC_KEYS = ['local', 'repository', 'tags', 'direction', 'intervalSeconds', 'propagateDeletes', 'plainHttp', 'insecure', 'caFile', 'registryConfig'] as const;

function editDistance(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) => [i, ...Array<number>(b.length).fill(0)]);
  for (let j = 1; j <= b.length; j++) d[0]![j] = j;
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) d[i]![j] = Math.min(d[i - 1]![j]! + 1, d[i]![j - 1]! + 1, d[i - 1]![j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
  }
  return d[a.length]![b.length]!;
}

function unknownKey(where: string, key: string, known: readonly string[]): RegfsError {
  const near = known.map((k) => [k, editDistance(key.toLowerCase(), k.toLowerCase())] as const).sort((x, y) => x[1] - y[1])[0];
  const hint = near && near[1] <= 2 ? ` (did you mean "${near[0]}"?)` : '';
  return new RegfsError('INVALID_ARGUMENT', `${where}: unknown key "${key}"${hint}`);
}

/** validateConfig checks a parsed JSON config, naming the key of every problem; relative paths resolve against baseDir. */
export function validateConfig(raw: unknown, where: string, baseDir: string): Partial<DaemonConfig> {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new RegfsError('INVALID_ARGUMENT', `${where}: must be a JSON object`);
  const r = raw as Record<string, unknown>;
  const out: Partial<DaemonConfig> = {};
  const absPath = (v: unknown, key: string): string => {
    if (typeof v !== 'string' || !v) throw new RegfsError('INVALID_ARGUMENT', `${where}: ${key}: must be a path`);
    return path.resolve(baseDir, v);
  };
  const num = (v: unknown, key: string): number => {
    if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) throw new RegfsError('INVALID_ARGUMENT', `${where}: ${key}: must be a non-negative number`);
    return v;
  };
  for (const [k, v] of Object.entries(r)) {
    switch (k) {
      case 'cacheDir':
      case 'stateDir':
      case 'socket':
        out[k] = absPath(v, k);
        break;
      case 'metadataTtlSeconds':
      case 'quietSeconds':
        out[k] = num(v, k);
        break;
      case 'cacheMaxSize':
      case 'minFreeBytes':
        out[k] = parseSizeValue(v, `${where}: ${k}`);
        break;
      case 'readStreams':
        if (typeof v !== 'number' || !Number.isInteger(v) || v < 1 || v > 16) throw new RegfsError('INVALID_ARGUMENT', `${where}: readStreams: must be a whole number from 1 to 16`);
        out.readStreams = v;
        break;
      case 'logFormat':
        if (v !== 'text' && v !== 'json') throw new RegfsError('INVALID_ARGUMENT', `${where}: logFormat: must be "text" or "json"`);
        out.logFormat = v;
        break;
      case 'logLevel':
        if (v !== 'debug' && v !== 'info' && v !== 'warn' && v !== 'error') throw new RegfsError('INVALID_ARGUMENT', `${where}: logLevel: must be debug, info, warn or error`);
        out.logLevel = v;
        break;
      case 'mounts':
        if (!Array.isArray(v)) throw new RegfsError('INVALID_ARGUMENT', `${where}: mounts: must be a list`);
        out.mounts = v.map((m, i) => validateMount(m, `${where}: mounts[${i}]`, baseDir));
        break;
      case 'syncs':
        if (!Array.isArray(v)) throw new RegfsError('INVALID_ARGUMENT', `${where}: syncs: must be a list`);
        out.syncs = v.map((m, i) => validateSync(m, `${where}: syncs[${i}]`, baseDir));
        break;
      case 'allowOther':
      case 'uid':
      case 'gid':
      case 'umask':
      case 'fileMode':
      case 'dirMode':
        out.mountDefaults = { ...out.mountDefaults, ...validateAccess({ [k]: v }, where) };
        break;
      default:
        throw unknownKey(where, k, TOP_KEYS);
    }
  }
  return out;
}

/** validateMount checks one mount (a config entry, or `regfs mounts add`), naming the key of every problem. */
export function validateMount(raw: unknown, where: string, baseDir: string): MountConfig {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new RegfsError('INVALID_ARGUMENT', `${where}: must be an object`);
  const r = raw as Record<string, unknown>;
  for (const k of Object.keys(r)) if (!(MOUNT_KEYS as readonly string[]).includes(k)) throw unknownKey(where, k, MOUNT_KEYS);
  if (typeof r.source !== 'string' || !r.source) throw new RegfsError('INVALID_ARGUMENT', `${where}.source: must be HOST[/NAMESPACE|/REPO[:TAG|@DIGEST]] or oci:DIR[:TAG|@DIGEST]`);
  let parsed;
  try {
    parsed = parseMountSource(r.source);
  } catch (err) {
    throw new RegfsError('INVALID_ARGUMENT', `${where}.source: ${(err as Error).message}`);
  }
  if (r.repositories !== undefined && !Array.isArray(r.repositories)) throw new RegfsError('INVALID_ARGUMENT', `${where}.repositories: must be a list of repository names`);
  const repositories = r.repositories === undefined ? undefined : checkRepositories(r.repositories as string[], `${where}.repositories`);
  if (r.staging && parsed.kind !== 'registry' && parsed.kind !== 'layout') {
    throw new RegfsError('INVALID_ARGUMENT', `${where}.staging: a mount of ${r.source} is read-only; staging needs a whole-registry source (HOST or oci:DIR)`);
  }
  if (typeof r.mountpoint !== 'string' || !r.mountpoint) throw new RegfsError('INVALID_ARGUMENT', `${where}.mountpoint: must be a path`);
  for (const b of ['plainHttp', 'insecure', 'allowDelete'] as const) if (r[b] !== undefined && typeof r[b] !== 'boolean') throw new RegfsError('INVALID_ARGUMENT', `${where}.${b}: must be true or false`);
  for (const p of ['staging', 'caFile', 'registryConfig'] as const) if (r[p] !== undefined && (typeof r[p] !== 'string' || !r[p])) throw new RegfsError('INVALID_ARGUMENT', `${where}.${p}: must be a path`);
  if (r.allowDelete === true && !r.staging) throw new RegfsError('INVALID_ARGUMENT', `${where}.allowDelete: needs a staging folder (writes through the mount go there)`);
  const pin = parsed.kind === 'layout-artifact' ? `${parsed.digest ? `@${parsed.digest}` : `:${parsed.tag}`}` : '';
  const source = parsed.kind === 'layout' || parsed.kind === 'layout-artifact' ? `oci:${path.resolve(baseDir, parsed.dir)}${pin}` : r.source;
  return {
    source,
    ...(repositories?.length ? { repositories } : {}),
    mountpoint: path.resolve(baseDir, r.mountpoint),
    ...(r.staging ? { staging: path.resolve(baseDir, r.staging as string) } : {}),
    ...(r.allowDelete ? { allowDelete: true } : {}),
    ...(r.plainHttp ? { plainHttp: true } : {}),
    ...(r.insecure ? { insecure: true } : {}),
    ...(r.caFile ? { caFile: path.resolve(baseDir, r.caFile as string) } : {}),
    ...(r.registryConfig ? { registryConfig: path.resolve(baseDir, r.registryConfig as string) } : {}),
    ...validateAccess(r, where),
  };
}

/** TAG_PATTERN_RE is what a sync pair's tag glob may hold: tag characters, `*`, `?` and commas between alternatives. */
const TAG_PATTERN_RE = /^[A-Za-z0-9_.*?-]+(?:,[A-Za-z0-9_.*?-]+)*$/;

/** syncEndpoint splits a sync pair's repository into the source the daemon opens and the repository inside it. */
export function syncEndpoint(repository: string): { source: string; repository: string } {
  if (repository.startsWith('oci:')) {
    const dir = repository.slice(4).replace(/\/+$/, '');
    const name = path.basename(dir);
    if (!path.isAbsolute(dir) || !isRepositoryName(name)) {
      throw new RegfsError('INVALID_ARGUMENT', `sync repository ${JSON.stringify(repository)}: expected oci:/ABSOLUTE/DIR/NAME with a lowercase NAME`);
    }
    return { source: `oci:${path.dirname(dir)}`, repository: name };
  }
  const ref = parseReference(repository);
  if (ref.kind !== 'remote' || ref.tag || ref.digest) {
    throw new RegfsError('INVALID_ARGUMENT', `sync repository ${JSON.stringify(repository)}: expected host[:port]/repository without a tag, e.g. localhost:5000/team/models`);
  }
  return { source: ref.registry, repository: ref.repository };
}

/** validateSync checks one sync pair (a config entry, or `regfs sync add`), filling in the defaults. */
export function validateSync(raw: unknown, where: string, baseDir: string): SyncConfig {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new RegfsError('INVALID_ARGUMENT', `${where}: must be an object`);
  const r = raw as Record<string, unknown>;
  for (const k of Object.keys(r)) if (!(SYNC_KEYS as readonly string[]).includes(k)) throw unknownKey(where, k, SYNC_KEYS);
  if (typeof r.local !== 'string' || !r.local) throw new RegfsError('INVALID_ARGUMENT', `${where}.local: must be a path (the local folder holding one folder per tag)`);
  if (typeof r.repository !== 'string' || !r.repository) throw new RegfsError('INVALID_ARGUMENT', `${where}.repository: must be host[:port]/repository or oci:DIR/NAME`);
  const repository = r.repository.startsWith('oci:') ? `oci:${path.resolve(baseDir, r.repository.slice(4))}` : r.repository;
  try {
    syncEndpoint(repository);
  } catch (err) {
    throw new RegfsError('INVALID_ARGUMENT', `${where}.repository: ${(err as Error).message}`);
  }
  if (r.tags !== undefined && (typeof r.tags !== 'string' || !TAG_PATTERN_RE.test(r.tags))) {
    throw new RegfsError('INVALID_ARGUMENT', `${where}.tags: must be a glob of tag characters, * and ? (alternatives separated by commas), e.g. "v*,latest"`);
  }
  const direction = r.direction ?? 'both';
  if (direction !== 'both' && direction !== 'up' && direction !== 'down') throw new RegfsError('INVALID_ARGUMENT', `${where}.direction: must be "both", "up" or "down"`);
  const interval = r.intervalSeconds ?? 30;
  if (typeof interval !== 'number' || !Number.isFinite(interval) || interval < 1) throw new RegfsError('INVALID_ARGUMENT', `${where}.intervalSeconds: must be a number of seconds, at least 1`);
  for (const b of ['propagateDeletes', 'plainHttp', 'insecure'] as const) if (r[b] !== undefined && typeof r[b] !== 'boolean') throw new RegfsError('INVALID_ARGUMENT', `${where}.${b}: must be true or false`);
  for (const p of ['caFile', 'registryConfig'] as const) if (r[p] !== undefined && (typeof r[p] !== 'string' || !r[p])) throw new RegfsError('INVALID_ARGUMENT', `${where}.${p}: must be a path`);
  return {
    local: path.resolve(baseDir, r.local),
    repository,
    ...(r.tags !== undefined && r.tags !== '*' ? { tags: r.tags as string } : {}),
    direction,
    intervalSeconds: interval,
    propagateDeletes: r.propagateDeletes === true,
    ...(r.plainHttp ? { plainHttp: true } : {}),
    ...(r.insecure ? { insecure: true } : {}),
    ...(r.caFile ? { caFile: path.resolve(baseDir, r.caFile as string) } : {}),
    ...(r.registryConfig ? { registryConfig: path.resolve(baseDir, r.registryConfig as string) } : {}),
  };
}

/**
 * checkSyncPlacement refuses a sync folder that overlaps a mountpoint (the daemon must never touch its own
 * mount), a staging folder (two writers of one tag), the cache, the state or another sync folder.
 */
export function checkSyncPlacement(local: string, others: { mountpoints: string[]; staging: string[]; syncs: string[]; cacheDir: string; stateDir: string }): void {
  for (const mp of others.mountpoints) {
    if (isInside(mp, local) || isInside(local, mp)) throw new RegfsError('INVALID_ARGUMENT', `sync folder ${local} overlaps the mountpoint ${mp}: the daemon must never touch its own mount (deadlock)`);
  }
  for (const st of others.staging) {
    if (isInside(st, local) || isInside(local, st)) throw new RegfsError('INVALID_ARGUMENT', `sync folder ${local} overlaps the staging folder ${st}: give each its own folder`);
  }
  for (const other of others.syncs) {
    if (isInside(other, local) || isInside(local, other)) throw new RegfsError('INVALID_ARGUMENT', `sync folder ${local} ${other === local ? 'is already synced' : `overlaps the sync folder ${other}`}`);
  }
  for (const [k, dir] of [['cacheDir', others.cacheDir], ['stateDir', others.stateDir]] as const) {
    if (isInside(dir, local) || isInside(local, dir)) throw new RegfsError('INVALID_ARGUMENT', `sync folder ${local} overlaps ${k} ${dir}`);
  }
}

/**
 * updateConfigSyncs rewrites the `syncs` list of a JSON config file (read, changed by `change`, validated,
 * written atomically with the file's mode), so `regfs sync add`/`rm` survive a restart.
 */
export async function updateConfigSyncs(file: string, change: (syncs: Array<Record<string, unknown>>, baseDir: string) => Array<Record<string, unknown>>): Promise<void> {
  return updateConfigList(file, 'syncs', change);
}

/** updateConfigMounts rewrites the `mounts` list of a JSON config file as updateConfigSyncs does, so `regfs mounts add`/`rm` survive a restart. */
export async function updateConfigMounts(file: string, change: (mounts: Array<Record<string, unknown>>, baseDir: string) => Array<Record<string, unknown>>): Promise<void> {
  return updateConfigList(file, 'mounts', change);
}

/** mountToJson is a mount as a config file holds it (modes as octal strings). */
export function mountToJson(m: MountConfig): Record<string, unknown> {
  const out: Record<string, unknown> = { ...m };
  for (const k of ['umask', 'fileMode', 'dirMode'] as const) if (m[k] !== undefined) out[k] = m[k]!.toString(8).padStart(4, '0');
  return out;
}

async function updateConfigList(file: string, key: 'syncs' | 'mounts', change: (list: Array<Record<string, unknown>>, baseDir: string) => Array<Record<string, unknown>>): Promise<void> {
  const baseDir = path.dirname(path.resolve(file));
  let raw: Record<string, unknown>;
  let mode = 0o600;
  try {
    raw = JSON.parse(await fsp.readFile(file, 'utf8')) as Record<string, unknown>;
    mode = (await fsp.stat(file)).mode & 0o777;
  } catch (err) {
    throw new RegfsError('IO', `config ${file}: cannot read it to save the ${key === 'syncs' ? 'sync pairs' : 'mounts'} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  }
  const before = Array.isArray(raw[key]) ? (raw[key] as Array<Record<string, unknown>>) : [];
  const next = { ...raw, [key]: change(before, baseDir) };
  validateConfig(next, `config ${file}`, baseDir);
  try {
    await writeFileAtomic(file, JSON.stringify(next, null, 2) + '\n', mode);
  } catch (err) {
    throw new RegfsError('IO', `config ${file}: cannot save the ${key === 'syncs' ? 'sync pairs' : 'mounts'} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  }
}

/** loadConfigFile reads and validates a JSON config file. */
export async function loadConfigFile(file: string): Promise<Partial<DaemonConfig>> {
  let text: string;
  try {
    text = await fsp.readFile(file, 'utf8');
  } catch (err) {
    throw new RegfsError('NOT_FOUND', `config ${file}: cannot read it (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new RegfsError('INVALID_ARGUMENT', `config ${file}: not valid JSON (${(err as Error).message})`);
  }
  return validateConfig(raw, `config ${file}`, path.dirname(path.resolve(file)));
}

/** FlagConfig is what command-line flags can set: the config keys plus one mount. */
export type FlagConfig = Partial<Omit<DaemonConfig, 'mounts' | 'syncs'>> & Partial<MountConfig>;

/** resolveConfig merges file values, flags (which win) and defaults, and refuses overlapping paths. */
export function resolveConfig(file: Partial<DaemonConfig> | undefined, flags: FlagConfig): DaemonConfig {
  const d = defaultPaths();
  const { source, mountpoint, staging, allowDelete, plainHttp, insecure, caFile, registryConfig, repositories, allowOther, uid, gid, umask, fileMode, dirMode, mountDefaults: _ignored, ...rest } = flags;
  // Access flags of `regfs daemon` are defaults for every mount (the config file's and the flag one).
  const mountDefaults = { ...file?.mountDefaults, ...pickAccess({ allowOther, uid, gid, umask, fileMode, dirMode }) };
  const mounts = [...(file?.mounts ?? [])];
  if (source || mountpoint) {
    if (!source || !mountpoint) throw new RegfsError('INVALID_ARGUMENT', '--source and --mountpoint go together');
    mounts.push(validateMount({ source, mountpoint, staging, allowDelete, plainHttp, insecure, caFile, registryConfig, repositories }, 'flags', process.cwd()));
  } else if (staging) {
    throw new RegfsError('INVALID_ARGUMENT', '--staging needs --source and --mountpoint');
  } else if (allowDelete) {
    throw new RegfsError('INVALID_ARGUMENT', '--allow-delete needs --source, --mountpoint and --staging');
  }
  const cfg: DaemonConfig = {
    cacheDir: d.cacheDir,
    stateDir: d.stateDir,
    socket: d.socket,
    metadataTtlSeconds: 30,
    minFreeBytes: 1024 ** 3,
    quietSeconds: 2,
    logFormat: 'text',
    logLevel: 'info',
    ...file,
    ...Object.fromEntries(Object.entries(rest).filter(([, v]) => v !== undefined)),
    mountDefaults,
    mounts,
    syncs: file?.syncs ?? [],
  } as DaemonConfig;
  for (const k of ['cacheDir', 'stateDir', 'socket'] as const) cfg[k] = path.resolve(cfg[k]);
  const mps = mounts.map((m) => m.mountpoint);
  mounts.forEach((m, i) => {
    mps.forEach((other, j) => {
      if (i !== j && isInside(other, m.mountpoint)) throw new RegfsError('INVALID_ARGUMENT', `mountpoint ${m.mountpoint} is ${other === m.mountpoint ? 'used twice' : `inside the mountpoint ${other}`}`);
      if (m.staging && isInside(other, m.staging)) throw new RegfsError('INVALID_ARGUMENT', `staging folder ${m.staging} is inside the mountpoint ${other}: the daemon must never touch its own mount (deadlock)`);
    });
    if (m.staging && isInside(m.mountpoint, m.staging)) throw new RegfsError('INVALID_ARGUMENT', `staging folder ${m.staging} is inside the mountpoint ${m.mountpoint}: the daemon must never touch its own mount (deadlock)`);
    for (const k of ['cacheDir', 'stateDir', 'socket'] as const) {
      if (isInside(m.mountpoint, cfg[k])) throw new RegfsError('INVALID_ARGUMENT', `${k} ${cfg[k]} is inside the mountpoint ${m.mountpoint}`);
    }
  });
  cfg.syncs.forEach((s, i) => {
    checkSyncPlacement(s.local, {
      mountpoints: mps,
      staging: mounts.flatMap((m) => (m.staging ? [m.staging] : [])),
      syncs: cfg.syncs.slice(0, i).map((o) => o.local),
      cacheDir: cfg.cacheDir,
      stateDir: cfg.stateDir,
    });
  });
  return cfg;
}

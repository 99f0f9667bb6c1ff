import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { RegfsError } from '../registry/errors.js';

/** MountConfig is one mount of the daemon, with an optional staging folder. */
export interface MountConfig {
  source: string;
  mountpoint: string;
  staging?: string;
  /** allowDelete lets rm/rmdir through the mount remove published files and delete tags (see docs/mount.md). */
  allowDelete?: boolean;
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
  quietSeconds: number;
  logFormat: 'text' | 'json';
  logLevel: 'debug' | 'info' | 'warn' | 'error';
  mounts: MountConfig[];
}

/** defaultPaths follows XDG; root without XDG variables uses /var/cache, /var/lib and /run. */
export function defaultPaths(env: NodeJS.ProcessEnv = process.env, uid: number = process.getuid?.() ?? 0): { cacheDir: string; stateDir: string; socket: string } {
  const home = os.homedir();
  const root = uid === 0;
  return {
    cacheDir: env.XDG_CACHE_HOME ? path.join(env.XDG_CACHE_HOME, 'regfs') : root ? '/var/cache/regfs' : path.join(home, '.cache', 'regfs'),
    stateDir: env.XDG_STATE_HOME ? path.join(env.XDG_STATE_HOME, 'regfs') : root ? '/var/lib/regfs' : path.join(home, '.local', 'state', 'regfs'),
    socket: env.XDG_RUNTIME_DIR ? path.join(env.XDG_RUNTIME_DIR, 'regfs', 'control.sock') : root ? '/run/regfs/control.sock' : path.join(os.tmpdir(), `regfs-${uid}`, 'control.sock'),
  };
}

const TOP_KEYS = ['cacheDir', 'stateDir', 'socket', 'metadataTtlSeconds', 'cacheMaxSize', 'minFreeBytes', 'quietSeconds', 'logFormat', 'logLevel', 'mounts'] as const;
const MOUNT_KEYS = ['source', 'mountpoint', 'staging', 'allowDelete', 'plainHttp', 'insecure', 'caFile', 'registryConfig'] as const;

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

/** parseSizeValue reads 512M, 10G, 1024 (binary units) or a number of bytes. */
export function parseSizeValue(v: unknown, where: string): number {
  if (typeof v === 'number' && Number.isSafeInteger(v) && v >= 0) return v;
  const m = typeof v === 'string' ? /^(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?$/i.exec(v.trim()) : null;
  if (!m) throw new RegfsError('INVALID_ARGUMENT', `${where}: must be a size like 512M or 10G`);
  const mult = { B: 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3, T: 1024 ** 4 }[(m[2] ?? 'B').toUpperCase()[0] as 'B'];
  return Math.floor(Number(m[1]) * mult);
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
      default:
        throw unknownKey(where, k, TOP_KEYS);
    }
  }
  return out;
}

function validateMount(raw: unknown, where: string, baseDir: string): MountConfig {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new RegfsError('INVALID_ARGUMENT', `${where}: must be an object`);
  const r = raw as Record<string, unknown>;
  for (const k of Object.keys(r)) if (!(MOUNT_KEYS as readonly string[]).includes(k)) throw unknownKey(where, k, MOUNT_KEYS);
  if (typeof r.source !== 'string' || !r.source) throw new RegfsError('INVALID_ARGUMENT', `${where}.source: must be a registry host or oci:DIR`);
  if (typeof r.mountpoint !== 'string' || !r.mountpoint) throw new RegfsError('INVALID_ARGUMENT', `${where}.mountpoint: must be a path`);
  for (const b of ['plainHttp', 'insecure', 'allowDelete'] as const) if (r[b] !== undefined && typeof r[b] !== 'boolean') throw new RegfsError('INVALID_ARGUMENT', `${where}.${b}: must be true or false`);
  for (const p of ['staging', 'caFile', 'registryConfig'] as const) if (r[p] !== undefined && (typeof r[p] !== 'string' || !r[p])) throw new RegfsError('INVALID_ARGUMENT', `${where}.${p}: must be a path`);
  if (r.allowDelete === true && !r.staging) throw new RegfsError('INVALID_ARGUMENT', `${where}.allowDelete: needs a staging folder (writes through the mount go there)`);
  const source = r.source.startsWith('oci:') ? `oci:${path.resolve(baseDir, r.source.slice(4))}` : r.source;
  return {
    source,
    mountpoint: path.resolve(baseDir, r.mountpoint),
    ...(r.staging ? { staging: path.resolve(baseDir, r.staging as string) } : {}),
    ...(r.allowDelete ? { allowDelete: true } : {}),
    ...(r.plainHttp ? { plainHttp: true } : {}),
    ...(r.insecure ? { insecure: true } : {}),
    ...(r.caFile ? { caFile: path.resolve(baseDir, r.caFile as string) } : {}),
    ...(r.registryConfig ? { registryConfig: path.resolve(baseDir, r.registryConfig as string) } : {}),
  };
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

function inside(parent: string, child: string): boolean {
  const rel = path.relative(parent, child);
  return rel === '' || (!rel.startsWith('..') && !path.isAbsolute(rel));
}

/** FlagConfig is what command-line flags can set: the config keys plus one mount. */
export type FlagConfig = Partial<Omit<DaemonConfig, 'mounts'>> & Partial<MountConfig>;

/** resolveConfig merges file values, flags (which win) and defaults, and refuses overlapping paths. */
export function resolveConfig(file: Partial<DaemonConfig> | undefined, flags: FlagConfig): DaemonConfig {
  const d = defaultPaths();
  const { source, mountpoint, staging, allowDelete, plainHttp, insecure, caFile, registryConfig, ...rest } = flags;
  const mounts = [...(file?.mounts ?? [])];
  if (source || mountpoint) {
    if (!source || !mountpoint) throw new RegfsError('INVALID_ARGUMENT', '--source and --mountpoint go together');
    mounts.push(validateMount({ source, mountpoint, staging, allowDelete, plainHttp, insecure, caFile, registryConfig }, 'flags', process.cwd()));
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
    mounts,
  } as DaemonConfig;
  for (const k of ['cacheDir', 'stateDir', 'socket'] as const) cfg[k] = path.resolve(cfg[k]);
  const mps = mounts.map((m) => m.mountpoint);
  mounts.forEach((m, i) => {
    mps.forEach((other, j) => {
      if (i !== j && inside(other, m.mountpoint)) throw new RegfsError('INVALID_ARGUMENT', `mountpoint ${m.mountpoint} is ${other === m.mountpoint ? 'used twice' : `inside the mountpoint ${other}`}`);
      if (m.staging && inside(other, m.staging)) throw new RegfsError('INVALID_ARGUMENT', `staging folder ${m.staging} is inside the mountpoint ${other}: the daemon must never touch its own mount (deadlock)`);
    });
    if (m.staging && inside(m.mountpoint, m.staging)) throw new RegfsError('INVALID_ARGUMENT', `staging folder ${m.staging} is inside the mountpoint ${m.mountpoint}: the daemon must never touch its own mount (deadlock)`);
    for (const k of ['cacheDir', 'stateDir', 'socket'] as const) {
      if (inside(m.mountpoint, cfg[k])) throw new RegfsError('INVALID_ARGUMENT', `${k} ${cfg[k]} is inside the mountpoint ${m.mountpoint}`);
    }
  });
  return cfg;
}

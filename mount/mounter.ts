import { execFile } from 'node:child_process';
import { constants as fsConstants, promises as fsp } from 'node:fs';
import path from 'node:path';
import Fuse from 'fuse-native';
import { RegfsError } from '../util/errors.js';
import type { Logger } from '../util/log.js';
import type { FuseHandlers } from './fuse-ops.js';

/** procMountpoints lists the FUSE mountpoints in /proc/mounts (decoding its octal escapes). */
export async function procMountpoints(): Promise<Array<{ mountpoint: string; fstype: string; source: string }>> {
  const text = await fsp.readFile('/proc/mounts', 'utf8').catch(() => '');
  const unescape = (s: string): string => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
  return text
    .split('\n')
    .filter(Boolean)
    .map((l) => l.split(' '))
    .map(([source, mp, fstype]) => ({ source: unescape(source ?? ''), mountpoint: unescape(mp ?? ''), fstype: fstype ?? '' }))
    .filter((m) => m.fstype.startsWith('fuse'));
}

/** fusermountUnmount runs `fusermount -uz MOUNTPOINT` (lazy unmount; clears a stale mount). */
export function fusermountUnmount(mountpoint: string): Promise<void> {
  return new Promise((resolve, reject) => {
    execFile('fusermount', ['-uz', mountpoint], (err, _out, stderr) => {
      if (err) reject(new RegfsError('IO', `fusermount -uz ${mountpoint} failed: ${stderr.trim() || err.message}`));
      else resolve();
    });
  });
}

/**
 * probeMount stats a path from a child process (`stat`), so a hung mount can never block this one and
 * a process never touches its own mount: 'ok' when it answered, 'stale' (ENOTCONN, or another error),
 * 'hung' when it did not answer within `ms`.
 */
export function probeMount(mountpoint: string, ms: number): Promise<'ok' | 'stale' | 'hung'> {
  return probe(mountpoint, ms);
}

function probe(mountpoint: string, ms: number): Promise<'ok' | 'stale' | 'hung'> {
  return new Promise((resolve) => {
    const child = execFile('stat', ['-c', '%i', mountpoint], { timeout: ms }, (err, _out, stderr) => {
      if (!err) return resolve('ok');
      if (/Transport endpoint is not connected|Socket not connected/i.test(stderr)) return resolve('stale');
      resolve(err.killed ? 'hung' : 'stale');
    });
    child.on('error', () => resolve('hung'));
  });
}

/**
 * prepareMountpoint checks the mountpoint before mounting: it must be an empty-or-existing directory;
 * a FUSE mount left there by a crash (ENOTCONN) is cleared with fusermount -uz; a live mount is refused.
 */
export async function prepareMountpoint(mountpoint: string, log: Logger): Promise<string> {
  const abs = path.resolve(mountpoint);
  const mounted = (await procMountpoints()).find((m) => m.mountpoint === abs);
  if (mounted) {
    const state = await probe(abs, 3000);
    if (state === 'ok') throw new RegfsError('CONFLICT', `${abs} is already mounted (${mounted.source}); run: regfs unmount ${abs}`);
    log.warn(`clearing a stale mount at ${abs} (${state})`);
    await fusermountUnmount(abs);
  }
  let st;
  try {
    st = await fsp.stat(abs);
  } catch {
    throw new RegfsError('NOT_FOUND', `mountpoint ${abs} does not exist: create it with mkdir -p ${abs}`);
  }
  if (!st.isDirectory()) throw new RegfsError('INVALID_ARGUMENT', `mountpoint ${abs} is not a directory`);
  // libfuse 2 refuses a non-empty mountpoint with two lines of its own and "fuse failed": say it first, once.
  const entries = await fsp.readdir(abs).catch(() => [] as string[]);
  if (entries.length) throw new RegfsError('INVALID_ARGUMENT', `mountpoint ${abs} is not empty (${entries.length} entr${entries.length === 1 ? 'y' : 'ies'}, e.g. ${JSON.stringify(entries[0])}): mount on an empty directory`);
  return abs;
}

/**
 * checkFuseAvailable says in one line what to do when FUSE cannot work here, before libfuse prints its
 * own lines: no /dev/fuse (module not loaded, or a container without the device), no permission on it,
 * or (for a user other than root, whose mounts go through it) no fusermount on PATH.
 */
export async function checkFuseAvailable(opts: { device?: string; uid?: number; path?: string } = {}): Promise<void> {
  const device = opts.device ?? '/dev/fuse';
  try {
    await fsp.access(device, fsConstants.R_OK | fsConstants.W_OK);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new RegfsError('UNSUPPORTED', `FUSE is not available: ${device} does not exist; load the module (modprobe fuse), or in a container run with --device /dev/fuse --cap-add SYS_ADMIN`);
    throw new RegfsError('UNSUPPORTED', `FUSE is not available: cannot open ${device} (${code ?? (err as Error).message}); check its permissions (crw-rw-rw- root root)`);
  }
  if ((opts.uid ?? process.getuid?.() ?? 0) === 0) return;
  const dirs = (opts.path ?? process.env.PATH ?? '').split(':').filter(Boolean);
  for (const d of dirs) if (await fsp.access(path.join(d, 'fusermount'), fsConstants.X_OK).then(() => true, () => false)) return;
  throw new RegfsError('UNSUPPORTED', 'fusermount is not on PATH (mounts by users other than root go through it): install the Debian packages fuse and libfuse2');
}

/**
 * checkAllowOther refuses `allow_other` for a non-root user when /etc/fuse.conf does not hold
 * `user_allow_other`, with the fix, instead of libfuse's own message after the mount failed.
 */
export async function checkAllowOther(uid: number = process.getuid?.() ?? 0, confFile = '/etc/fuse.conf'): Promise<void> {
  if (uid === 0) return;
  const text = await fsp.readFile(confFile, 'utf8').catch(() => '');
  if (text.split('\n').some((l) => l.trim() === 'user_allow_other')) return;
  throw new RegfsError('INVALID_ARGUMENT', `--allow-other needs "user_allow_other" in ${confFile} for users other than root; as root: echo user_allow_other >> ${confFile}`);
}

/** FuseMountOptions tune the kernel side of a mount. */
export interface FuseMountOptions {
  /** attrTimeout and entryTimeout are the kernel's attribute/entry cache lifetimes in seconds. */
  attrTimeout?: number;
  entryTimeout?: number;
  /** opTimeoutMs is when fuse-native answers an operation itself (ETIMEDOUT) if a handler has not. */
  opTimeoutMs?: number;
  allowOther?: boolean;
  /** defaultPermissions makes the kernel enforce the modes and owners stat shows (FUSE default_permissions). */
  defaultPermissions?: boolean;
  fsname?: string;
  /**
   * kernelReadAheadKiB sets the mount's kernel read-ahead (/sys/class/bdi/MAJ:MIN/read_ahead_kb) once it is
   * up; default 0 leaves the kernel's 128 KiB for FUSE. Needs root; else left as is.
   */
  kernelReadAheadKiB?: number;
  /** log says when kernelReadAheadKiB could not be applied. */
  log?: Logger;
}

/** mountDevice finds a mount's MAJ:MIN in /proc/self/mountinfo (read there, not by stat, which would ask the mount itself). */
export async function mountDevice(mountpoint: string): Promise<string | undefined> {
  const text = await fsp.readFile('/proc/self/mountinfo', 'utf8').catch(() => '');
  const unescape = (f: string): string => f.replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8)));
  let dev: string | undefined;
  for (const line of text.split('\n')) {
    const f = line.split(' ');
    if (f.length > 4 && unescape(f[4]!) === mountpoint) dev = f[2]; // the last one listed is the top mount
  }
  return dev && /^\d+:\d+$/.test(dev) ? dev : undefined;
}

/**
 * setKernelReadAhead writes the mount's kernel read-ahead in KiB and reads it back; it returns why it did not
 * hold (not root, no sysfs, no mountinfo line), undefined when it did.
 *
 * The kernel clamps read_ahead_kb to the max_readahead of the FUSE_INIT reply when it takes that reply
 * (fs/fuse/inode.c process_init_reply), and fuse-native calls back from mount before its loop thread has
 * answered INIT: a value written then is lowered back to 128 on a loaded machine. A stat of the mountpoint
 * waits until INIT is done (the kernel holds every request until then), so it is written after one.
 */
export async function setKernelReadAhead(mountpoint: string, kib: number): Promise<string | undefined> {
  await fsp.stat(mountpoint).catch(() => undefined);
  const dev = await mountDevice(mountpoint);
  if (!dev) return `no line for ${mountpoint} in /proc/self/mountinfo`;
  const file = `/sys/class/bdi/${dev}/read_ahead_kb`;
  try {
    await fsp.writeFile(file, String(kib));
    const now = Number((await fsp.readFile(file, 'utf8')).trim());
    return now === kib ? undefined : `${file} reads ${now} after writing ${kib}`;
  } catch (err) {
    return `cannot write ${file}: ${(err as Error).message}`;
  }
}

/** FuseMount is a live mount: the thin shell around fuse-native. */
export class FuseMount {
  private constructor(readonly mountpoint: string, private readonly fuse: Fuse) {}

  /** mount attaches handlers at mountpoint (which prepareMountpoint checked). */
  static async mount(mountpoint: string, handlers: FuseHandlers, opts: FuseMountOptions = {}): Promise<FuseMount> {
    await checkFuseAvailable();
    const fuse = new Fuse(mountpoint, handlers, {
      fsname: opts.fsname ?? 'regfs',
      // fuse-native joins its options into one `-o` list and has no big_writes: appended here it becomes its
      // own option. It lets the kernel send writes of up to 128 KiB instead of 4 KiB (writable daemon mounts:
      // 200 MiB in 1.2 s instead of 11 s on the test machine).
      subtype: 'regfs,big_writes',
      autoCache: true,
      attrTimeout: opts.attrTimeout ?? 1,
      entryTimeout: opts.entryTimeout ?? 1,
      maxRead: 1024 * 1024,
      timeout: opts.opTimeoutMs ?? 60_000,
      allowOther: opts.allowOther,
      defaultPermissions: opts.defaultPermissions,
    });
    return new Promise((resolve, reject) => {
      fuse.mount((err) => {
        if (err) return reject(new RegfsError('IO', `cannot mount at ${mountpoint}: ${err.message}`));
        const kib = opts.kernelReadAheadKiB ?? 0;
        // More kernel read-ahead keeps more 128 KiB requests in flight for a sequential reader (libfuse2
        // cannot make them larger); failure to set it (not root) only leaves the kernel's default, said once.
        void (kib > 0 ? setKernelReadAhead(path.resolve(mountpoint), kib) : Promise.resolve(undefined)).then((why) => {
          if (why) opts.log?.warn(`--kernel-read-ahead ${kib}K not applied (${why}); the kernel's own read-ahead stays`);
          resolve(new FuseMount(mountpoint, fuse));
        });
      });
    });
  }

  /** unmount detaches the mount; when the kernel refuses (busy), it falls back to a lazy fusermount -uz. */
  unmount(): Promise<void> {
    return new Promise((resolve, reject) => {
      this.fuse.unmount((err) => {
        if (!err) return resolve();
        fusermountUnmount(this.mountpoint).then(resolve, reject);
      });
    });
  }
}

import { promises as fsp, constants as C } from 'node:fs';
import { RegfsError } from '../util/errors.js';

/** DirLock is a held lock file; release() removes it if it is still ours. */
export interface DirLock {
  readonly file: string;
  release(): Promise<void>;
}

/** pidAlive tells whether a process with this pid exists (EPERM means it exists but is not ours). */
function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code !== 'ESRCH';
  }
}

async function readPid(file: string): Promise<number | undefined> {
  let text: string;
  try {
    const fh = await fsp.open(file, C.O_RDONLY | C.O_NOFOLLOW);
    try {
      text = (await fh.readFile({ encoding: 'utf8' })).slice(0, 64);
    } finally {
      await fh.close();
    }
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return undefined;
    if (code === 'ELOOP') throw new RegfsError('UNSAFE_PATH', `lock file ${file} is a symlink; refusing to use it`);
    throw new RegfsError('IO', `cannot read lock file ${file}: ${(err as Error).message}`, { cause: err });
  }
  const pid = Number(text.trim());
  return Number.isSafeInteger(pid) && pid > 0 ? pid : 0;
}

/**
 * acquireDirLock takes the lock file `file` for this process: created exclusively holding our pid. A lock
 * left by a dead process (or holding garbage) is taken over; one held by a live process is a CONFLICT.
 */
export async function acquireDirLock(file: string, dirForMessage: string): Promise<DirLock> {
  for (let attempt = 0; attempt < 30; attempt++) {
    try {
      const fh = await fsp.open(file, C.O_WRONLY | C.O_CREAT | C.O_EXCL | C.O_NOFOLLOW, 0o600);
      try {
        await fh.writeFile(`${process.pid}\n`);
        await fh.sync();
      } finally {
        await fh.close();
      }
      return { file, release: () => releaseLock(file) };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') {
        throw new RegfsError('IO', `cannot create lock file ${file}: ${(err as Error).message}`, { cause: err });
      }
    }
    const pid = await readPid(file);
    if (pid === undefined) continue; // removed meanwhile: try again
    if (pid !== 0 && pidAlive(pid)) {
      throw new RegfsError('CONFLICT', `cache ${dirForMessage} is in use by pid ${pid}; stop that process, or remove ${file} if it is not a regfs daemon`);
    }
    if (pid === 0 && (await youngerThan(file, 2000))) {
      // Probably another process between its create and its write: give it a moment.
      await new Promise((r) => setTimeout(r, 100));
      continue;
    }
    // Stale (dead pid or unreadable content): remove it and retry the exclusive create.
    await fsp.rm(file, { force: true });
  }
  throw new RegfsError('CONFLICT', `cache ${dirForMessage}: could not take ${file} (another process keeps taking it)`);
}

async function youngerThan(file: string, ms: number): Promise<boolean> {
  try {
    return Date.now() - (await fsp.lstat(file)).mtimeMs < ms;
  } catch {
    return false;
  }
}

async function releaseLock(file: string): Promise<void> {
  const pid = await readPid(file).catch(() => undefined);
  if (pid === process.pid) await fsp.rm(file, { force: true });
}

import { promises as fsp } from 'node:fs';
import { RegfsError } from './errors.js';

/**
 * ensurePrivateDir creates `dir` (mode 0700) unless present, then checks it is a real directory (not a
 * symlink, never followed), owned by this user and not group- or world-writable; one only readable by
 * others is tightened to 0700. Its parent must exist. `what` names the directory in errors, e.g. "cache
 * directory". Refusals are UNSAFE_PATH with the fix in the message.
 */
export async function ensurePrivateDir(dir: string, what: string): Promise<void> {
  try {
    await fsp.mkdir(dir, { mode: 0o700 });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') {
      throw new RegfsError('IO', `cannot create ${what} ${dir}: ${(err as Error).message}`, { cause: err });
    }
  }
  const st = await fsp.lstat(dir);
  if (st.isSymbolicLink()) throw new RegfsError('UNSAFE_PATH', `${what} ${dir} is a symlink; refusing to use it (point regfs at the real directory)`);
  if (!st.isDirectory()) throw new RegfsError('UNSAFE_PATH', `${what} ${dir} exists and is not a directory`);
  const uid = process.getuid?.();
  if (uid !== undefined && st.uid !== uid) {
    throw new RegfsError('UNSAFE_PATH', `${what} ${dir} is owned by uid ${st.uid}, not by this user (uid ${uid}); refusing to use it`);
  }
  if ((st.mode & 0o022) !== 0) {
    throw new RegfsError(
      'UNSAFE_PATH',
      `${what} ${dir} is group- or world-writable (mode ${(st.mode & 0o777).toString(8).padStart(4, '0')}); run \`chmod 700 ${dir}\``,
    );
  }
  // Readable by others is not unsafe for us, but the content may be private: tighten it to 0700.
  if ((st.mode & 0o077) !== 0) await fsp.chmod(dir, 0o700);
}

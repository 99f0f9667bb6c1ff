import { isRegfsError } from '../util/errors.js';

/** Errno values (negated, as FUSE callbacks expect) that the mount returns. */
export const Errno = {
  EPERM: -1,
  ENOENT: -2,
  EIO: -5,
  EBADF: -9,
  EACCES: -13,
  EBUSY: -16,
  EEXIST: -17,
  EXDEV: -18,
  ENOTDIR: -20,
  EISDIR: -21,
  EINVAL: -22,
  ENOSPC: -28,
  EROFS: -30,
  ERANGE: -34,
  ENAMETOOLONG: -36,
  ENOSYS: -38,
  ENOTEMPTY: -39,
  ENODATA: -61,
  ENOTSUP: -95,
  ETIMEDOUT: -110,
} as const;

/** MountError is thrown inside the VFS to answer with a specific errno. */
export class MountError extends Error {
  constructor(readonly errno: number, message: string) {
    super(message);
  }
}

/** toErrno translates any error into the errno the kernel sees; this is the only place that decides it. */
export function toErrno(err: unknown): number {
  if (err instanceof MountError) return err.errno;
  if (isRegfsError(err)) {
    switch (err.code) {
      case 'NOT_FOUND':
        return Errno.ENOENT;
      case 'UNAUTHORIZED':
      case 'DENIED':
        return Errno.EACCES;
      case 'INVALID_REFERENCE':
      case 'INVALID_DIGEST':
      case 'INVALID_ARGUMENT':
        return Errno.ENOENT;
      case 'UNSUPPORTED':
        return Errno.ENOTSUP;
      default:
        return Errno.EIO;
    }
  }
  const code = (err as NodeJS.ErrnoException)?.code;
  switch (code) {
    case 'ENOENT':
    case 'ENOSPC':
    case 'ENOTDIR':
    case 'EISDIR':
    case 'EEXIST':
    case 'ENOTEMPTY':
    case 'EXDEV':
    case 'EBUSY':
    case 'EPERM':
    case 'EACCES':
    case 'EINVAL':
    case 'ENAMETOOLONG':
      return Errno[code];
    case 'EDQUOT':
      return Errno.ENOSPC;
    default:
      return Errno.EIO;
  }
}

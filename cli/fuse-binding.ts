import { errorMessage, RegfsError } from '../util/errors.js';

/**
 * loadFuseModule imports a module that pulls in the FUSE binding (mount/serve.js, daemon/daemon.js):
 * when the native part cannot load (no prebuild for this platform, a missing shared library), the
 * command fails with one line saying what to do instead of a stack trace.
 */
export async function loadFuseModule<T>(load: () => Promise<T>): Promise<T> {
  try {
    return await load();
  } catch (err) {
    throw new RegfsError('UNSUPPORTED', `cannot load the FUSE binding (fuse-native): ${errorMessage(err)}; regfs mounts need Linux x86-64 with the Debian packages fuse and libfuse2 (see docs/packaging.md)`, { cause: err });
  }
}

import { errorMessage } from './errors.js';
import type { Logger } from './log.js';

/** FatalOptions tune what a process does when a bug escapes every handler. */
export interface FatalOptions {
  /** cleanup unmounts and closes what the process holds; it gets `timeoutMs` before the exit happens anyway. */
  cleanup: () => Promise<void>;
  /** exitCode is the status the process exits with afterwards (never 0). */
  exitCode: number;
  timeoutMs?: number;
}

/**
 * installFatalHandlers turns an uncaught exception or an unhandled promise rejection into: one error
 * line in the log (with the first lines of the stack), `cleanup()` (unmount every mount, so no
 * "Transport endpoint is not connected" is left behind), then exit with `exitCode`. A second fatal
 * error while cleaning up is logged and does not start another cleanup. It returns a function that
 * removes the handlers.
 */
export function installFatalHandlers(log: Logger, opts: FatalOptions): () => void {
  let dying = false;
  const die = (kind: string, err: unknown): void => {
    const stack = err instanceof Error && err.stack ? err.stack.split('\n').slice(1, 6).map((l) => l.trim()).join(' | ') : undefined;
    if (dying) {
      log.error(`${kind} while stopping: ${errorMessage(err)}`, stack ? { stack } : undefined);
      return;
    }
    dying = true;
    log.error(`${kind}: ${errorMessage(err)}; unmounting everything and exiting`, stack ? { stack } : undefined);
    const timer = setTimeout(() => process.exit(opts.exitCode), opts.timeoutMs ?? 30_000);
    timer.unref();
    opts.cleanup().then(
      () => process.exit(opts.exitCode),
      (e: unknown) => {
        log.error(`cleanup after ${kind} failed: ${errorMessage(e)}`);
        process.exit(opts.exitCode);
      },
    );
  };
  const onException = (err: unknown): void => die('uncaught exception', err);
  const onRejection = (err: unknown): void => die('unhandled rejection', err);
  process.on('uncaughtException', onException);
  process.on('unhandledRejection', onRejection);
  return () => {
    process.off('uncaughtException', onException);
    process.off('unhandledRejection', onRejection);
  };
}

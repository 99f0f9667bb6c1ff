import type { Logger } from '../util/log.js';
import type { LoggedEvent } from './protocol.js';

/** recordingLogger wraps a logger and keeps the last warnings and errors for status. */
export function recordingLogger(inner: Logger, keep = 20): { log: Logger; recent: LoggedEvent[] } {
  const recent: LoggedEvent[] = [];
  const push = (level: 'warn' | 'error', msg: string): void => {
    recent.push({ time: new Date().toISOString(), level, msg });
    if (recent.length > keep) recent.shift();
  };
  return {
    recent,
    log: {
      debug: (m, f) => inner.debug(m, f),
      info: (m, f) => inner.info(m, f),
      warn: (m, f) => {
        push('warn', m);
        inner.warn(m, f);
      },
      error: (m, f) => {
        push('error', m);
        inner.error(m, f);
      },
    },
  };
}

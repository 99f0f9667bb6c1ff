/** Log levels in increasing order of importance. */
export type LogLevel = 'debug' | 'info' | 'warn' | 'error';

const ORDER: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };

/** Logger writes one line per event, human-readable or JSON, and never prints secrets. */
export interface Logger {
  debug(msg: string, fields?: Record<string, unknown>): void;
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
  error(msg: string, fields?: Record<string, unknown>): void;
}

const SECRET_KEY_RE = /(authorization|password|passwd|secret|token|auth|cookie|credential)/i;

/** redactText removes credentials from free text: auth headers, basic credentials in URLs, token-like query values. */
export function redactText(s: string): string {
  return s
    .replace(/\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]+/g, '$1 [redacted]')
    .replace(/([a-z][a-z0-9+.-]*:\/\/)[^/@\s:]+:[^/@\s]+@/gi, '$1[redacted]@')
    .replace(/([?&](?:access_token|token|refresh_token|password|_state)=)[^&\s]+/gi, '$1[redacted]');
}

/** redactFields drops values of secret-looking keys and redacts strings. */
export function redactFields(fields: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(fields)) {
    if (SECRET_KEY_RE.test(k)) out[k] = '[redacted]';
    else if (typeof v === 'string') out[k] = redactText(v);
    else out[k] = v;
  }
  return out;
}

/** createLogger returns a logger writing to a stream (stderr by default) at or above `level`. */
export function createLogger(opts: { level?: LogLevel; format?: 'text' | 'json'; stream?: { write(s: string): unknown } } = {}): Logger {
  const min = ORDER[opts.level ?? 'info'];
  const stream = opts.stream ?? process.stderr;
  const emit = (level: LogLevel, msg: string, fields?: Record<string, unknown>): void => {
    if (ORDER[level] < min) return;
    const safe = fields ? redactFields(fields) : {};
    const text = redactText(msg);
    if (opts.format === 'json') {
      stream.write(JSON.stringify({ time: new Date().toISOString(), level, msg: text, ...safe }) + '\n');
    } else {
      const extra = Object.entries(safe).map(([k, v]) => ` ${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`).join('');
      stream.write(`${new Date().toISOString()} ${level.toUpperCase().padEnd(5)} ${text}${extra}\n`);
    }
  };
  return {
    debug: (m, f) => emit('debug', m, f),
    info: (m, f) => emit('info', m, f),
    warn: (m, f) => emit('warn', m, f),
    error: (m, f) => emit('error', m, f),
  };
}

/** nullLogger discards everything. */
export const nullLogger: Logger = { debug() {}, info() {}, warn() {}, error() {} };

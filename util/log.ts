import { createWriteStream, fstatSync } from 'node:fs';

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

/** LogStream is what a logger writes to: process.stderr, or any object with write(). */
export type LogStream = { write(s: string): unknown };

type Guardable = LogStream & { on?(event: 'error', fn: (err: Error) => void): unknown; destroyed?: boolean; writable?: boolean };
const guarded = new WeakSet<object>();
const broken = new WeakSet<object>();

/**
 * guardStream makes write errors of a stream harmless: an EPIPE (the reader of a pipe is gone), an EIO
 * (the terminal is gone) or any other error of the stream marks it broken instead of being an uncaught
 * 'error' event that kills the process. Writes through a logger to a broken stream are dropped.
 */
export function guardStream(stream: LogStream): void {
  const s = stream as Guardable;
  if (guarded.has(s) || typeof s.on !== 'function') return;
  guarded.add(s);
  s.on('error', () => broken.add(s));
}

/** guardStdio guards process.stdout and process.stderr (see guardStream): a service must outlive its log reader. */
export function guardStdio(): void {
  guardStream(process.stdout);
  guardStream(process.stderr);
}

/** writeSafely writes to a stream unless it is broken, destroyed or throws; it never throws. */
export function writeSafely(stream: LogStream, text: string): void {
  const s = stream as Guardable;
  if (broken.has(s) || s.destroyed === true || s.writable === false) return;
  try {
    s.write(text);
  } catch {
    broken.add(s);
  }
}

/** SYSLOG_PRIORITY is the sd-daemon(3) prefix of each level: err, warning, info, debug. */
const SYSLOG_PRIORITY: Record<LogLevel, string> = { error: '<3>', warn: '<4>', info: '<6>', debug: '<7>' };

/**
 * stderrIsJournal tells whether fd 2 is the journal's stream: systemd sets $JOURNAL_STREAM to the
 * `device:inode` of the stream it connects, and a redirected stderr (`2>file`, a pipe) no longer matches.
 */
export function stderrIsJournal(env: NodeJS.ProcessEnv = process.env, fd = 2): boolean {
  const want = env.JOURNAL_STREAM;
  if (!want) return false;
  try {
    const st = fstatSync(fd);
    return `${st.dev}:${st.ino}` === want;
  } catch {
    return false;
  }
}

/** textValue renders a field value for the text format: strings as they are unless empty or holding spaces, quotes or `=`. */
export function textValue(v: unknown): string {
  if (typeof v === 'string') return v === '' || /[\s"=\\]/.test(v) ? JSON.stringify(v) : v;
  return JSON.stringify(v) ?? String(v);
}

/**
 * createLogger returns a logger writing to a stream (stderr by default) at or above `level`; write errors
 * never escape it. Each line starts with a syslog priority (`<3>` for errors ... `<7>` for debug), which
 * journald turns into the entry's PRIORITY, when `journal` says so, by default when the stream is stderr
 * and stderr is the journal.
 */
export function createLogger(opts: { level?: LogLevel; format?: 'text' | 'json'; stream?: LogStream; journal?: boolean } = {}): Logger {
  const min = ORDER[opts.level ?? 'info'];
  const target = opts.stream ?? process.stderr;
  guardStream(target);
  const journal = opts.journal ?? (target === process.stderr && stderrIsJournal());
  const emit = (level: LogLevel, msg: string, fields?: Record<string, unknown>): void => {
    if (ORDER[level] < min) return;
    const safe = fields ? redactFields(fields) : {};
    const text = redactText(msg);
    const line = opts.format === 'json'
      ? JSON.stringify({ time: new Date().toISOString(), level, msg: text, ...safe })
      : `${new Date().toISOString()} ${level.toUpperCase().padEnd(5)} ${text}${Object.entries(safe).map(([k, v]) => ` ${k}=${textValue(v)}`).join('')}`;
    writeSafely(target, `${journal ? SYSLOG_PRIORITY[level] : ''}${line}\n`);
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

/** openLogFile opens FILE for appending (created 0600) as a logger stream, for `--log-file`; its write errors are guarded like stderr's. */
export function openLogFile(file: string): LogStream & { close(): Promise<void> } {
  const stream = createWriteStream(file, { flags: 'a', mode: 0o600 });
  guardStream(stream);
  return {
    write: (s: string) => stream.write(s),
    close: () => new Promise<void>((resolve) => stream.end(() => resolve())),
  };
}

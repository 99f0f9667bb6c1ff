/** Stable error codes; each maps to one exit code (cli/exit-codes.ts) and one errno (mount/errno.ts). */
export type ErrorCode =
  | 'INVALID_REFERENCE'
  | 'INVALID_DIGEST'
  | 'INVALID_ARGUMENT'
  | 'INVALID_MANIFEST'
  | 'UNAUTHORIZED'
  | 'DENIED'
  | 'NOT_FOUND'
  | 'DIGEST_MISMATCH'
  | 'SIZE_MISMATCH'
  | 'TOO_LARGE'
  | 'UNSAFE_PATH'
  | 'UNSUPPORTED'
  | 'REGISTRY_ERROR'
  | 'NETWORK'
  | 'TIMEOUT'
  | 'INSECURE_REDIRECT'
  | 'CONFLICT'
  | 'DIGEST_CONFLICT'
  | 'IO';

/** RegfsError is the one error type regfs throws on purpose: a stable `code`, a one-line message, an optional cause. */
export class RegfsError extends Error {
  override readonly name = 'RegfsError';
  /** code is the stable kind of failure. */
  readonly code: ErrorCode;
  /** status is the HTTP status when the error came from a registry response. */
  readonly status?: number;
  /** registryCode is the `code` field of the registry's error body (e.g. MANIFEST_UNKNOWN). */
  readonly registryCode?: string;

  constructor(code: ErrorCode, message: string, opts: { cause?: unknown; status?: number; registryCode?: string } = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.code = code;
    this.status = opts.status;
    this.registryCode = opts.registryCode;
  }
}

/** isRegfsError tells whether err is a RegfsError, optionally of the given code. */
export function isRegfsError(err: unknown, code?: ErrorCode): err is RegfsError {
  return err instanceof RegfsError && (code === undefined || err.code === code);
}

/** errorMessage renders any thrown value as one line for a user. */
export function errorMessage(err: unknown): string {
  if (err instanceof Error) return err.message.split('\n')[0] ?? String(err);
  return String(err);
}

/** errnoOf returns the `code` of a Node system error (ENOENT, ENOSPC, ...), or undefined. */
export function errnoOf(err: unknown): string | undefined {
  return typeof err === 'object' && err !== null && 'code' in err && typeof (err as { code: unknown }).code === 'string'
    ? (err as { code: string }).code
    : undefined;
}

/** ioError passes a RegfsError through and wraps anything else as an IO error `<what>: <cause's first line>`. */
export function ioError(what: string, err: unknown): RegfsError {
  if (err instanceof RegfsError) return err;
  return new RegfsError('IO', `${what}: ${errorMessage(err)}`, { cause: err });
}

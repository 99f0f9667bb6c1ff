import { isRegfsError, type ErrorCode } from '../util/errors.js';

/** ExitCode is what the regfs command returns to the shell. */
export const ExitCode = {
  ok: 0,
  failure: 1,
  usage: 2,
  auth: 3,
  notFound: 4,
  /** digestConflict: cp/restore would move a destination tag to a different digest (pass --force). */
  digestConflict: 5,
} as const;

const BY_CODE: Partial<Record<ErrorCode, number>> = {
  INVALID_REFERENCE: ExitCode.usage,
  INVALID_DIGEST: ExitCode.usage,
  INVALID_ARGUMENT: ExitCode.usage,
  UNAUTHORIZED: ExitCode.auth,
  DENIED: ExitCode.auth,
  NOT_FOUND: ExitCode.notFound,
  DIGEST_CONFLICT: ExitCode.digestConflict,
};

/** exitCodeFor maps any error to the documented exit code (1 unless it is a known kind). */
export function exitCodeFor(err: unknown): number {
  if (isRegfsError(err)) return BY_CODE[err.code] ?? ExitCode.failure;
  return ExitCode.failure;
}

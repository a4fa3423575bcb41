/**
 * Typed errors with stable string codes. The code is what programs match on; the message is one
 * line for a human saying what went wrong and what to do. `cause` is kept for --debug and logs
 * and never crosses the wire.
 */
export type ErrorCode =
  // parsing and encoding (ca/)
  | "ERR_MALFORMED_KEY"
  | "ERR_MALFORMED_CERT"
  | "ERR_MALFORMED_PEM"
  | "ERR_BAD_SIGNATURE"
  | "ERR_CERT_EXPIRED"
  | "ERR_CERT_NOT_YET_VALID"
  | "ERR_WRONG_CA"
  // usage and configuration
  | "ERR_USAGE"
  | "ERR_CONFIG"
  | "ERR_BAD_DURATION"
  | "ERR_BAD_ROLE"
  // resources
  | "ERR_NOT_FOUND"
  | "ERR_ALREADY_EXISTS"
  | "ERR_IN_USE"
  | "ERR_COMPARE_FAILED"
  | "ERR_NO_LOGINS"
  | "ERR_ROLE_CONFLICT"
  | "ERR_RATE_LIMITED"
  // join and renewal
  | "ERR_TOKEN_UNKNOWN"
  | "ERR_TOKEN_USED"
  | "ERR_TOKEN_EXPIRED"
  | "ERR_TOKEN_INVALID"
  | "ERR_BAD_PROOF"
  | "ERR_LOCKED"
  | "ERR_IDENTITY_DELETED"
  | "ERR_GENERATION_MISMATCH"
  | "ERR_NOT_AUTHORIZED"
  | "ERR_UNREACHABLE"
  | "ERR_ISSUER_UNREACHABLE"
  | "ERR_STORAGE"
  | "ERR_STATE_CORRUPT"
  | "ERR_SYMLINK"
  | "ERR_INTERNAL";

export class MeziteError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = "MeziteError";
  }
}

/** "<what> not found": a named resource that does not exist. */
export function notFound(what: string): MeziteError {
  return new MeziteError("ERR_NOT_FOUND", `${what} not found`);
}

export function isMeziteError(e: unknown, code?: ErrorCode): e is MeziteError {
  return e instanceof MeziteError && (code === undefined || e.code === code);
}

/**
 * Errors that retrying cannot fix (SPEC §6 exit code 3): the identity is locked or deleted, its
 * token is invalid or used, its state is unusable, or the server is not the one we trust.
 */
export const FINAL_CODES: readonly ErrorCode[] = [
  "ERR_LOCKED",
  "ERR_IDENTITY_DELETED",
  "ERR_GENERATION_MISMATCH",
  "ERR_TOKEN_UNKNOWN",
  "ERR_TOKEN_USED",
  "ERR_TOKEN_EXPIRED",
  "ERR_TOKEN_INVALID",
  "ERR_BAD_PROOF",
  "ERR_STATE_CORRUPT",
  "ERR_NOT_AUTHORIZED",
  "ERR_WRONG_CA",
];

export function isFinalError(e: unknown): boolean {
  return e instanceof MeziteError && FINAL_CODES.includes(e.code);
}

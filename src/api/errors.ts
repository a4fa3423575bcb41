/**
 * The one mapping between Mezite's typed errors and gRPC status codes. The stable code travels
 * in the `mezite-error-code` trailer so clients can act on it (exit codes, retry or not); the
 * message is the same one line a human reads. `cause` never leaves the process.
 */
import { randomBytes } from "node:crypto";
import { Code, ConnectError } from "@connectrpc/connect";
import { MeziteError, type ErrorCode } from "../lib/errors.js";

const CODE_HEADER = "mezite-error-code";
/** A short reference that ties a caller's generic error to the service log's detailed line. */
export const ERROR_REF_HEADER = "mezite-error-ref";

const GRPC_CODE: Partial<Record<ErrorCode, Code>> = {
  ERR_USAGE: Code.InvalidArgument,
  ERR_CONFIG: Code.InvalidArgument,
  ERR_BAD_DURATION: Code.InvalidArgument,
  ERR_BAD_ROLE: Code.InvalidArgument,
  ERR_MALFORMED_KEY: Code.InvalidArgument,
  ERR_MALFORMED_CERT: Code.InvalidArgument,
  ERR_MALFORMED_PEM: Code.InvalidArgument,
  ERR_NOT_FOUND: Code.NotFound,
  ERR_ALREADY_EXISTS: Code.AlreadyExists,
  ERR_IN_USE: Code.FailedPrecondition,
  ERR_NO_LOGINS: Code.FailedPrecondition,
  ERR_ROLE_CONFLICT: Code.FailedPrecondition,
  ERR_COMPARE_FAILED: Code.Aborted,
  ERR_RATE_LIMITED: Code.ResourceExhausted,
  ERR_TOKEN_UNKNOWN: Code.PermissionDenied,
  ERR_TOKEN_USED: Code.PermissionDenied,
  ERR_TOKEN_EXPIRED: Code.PermissionDenied,
  ERR_TOKEN_INVALID: Code.PermissionDenied,
  ERR_BAD_PROOF: Code.PermissionDenied,
  ERR_LOCKED: Code.PermissionDenied,
  ERR_IDENTITY_DELETED: Code.PermissionDenied,
  ERR_GENERATION_MISMATCH: Code.PermissionDenied,
  ERR_NOT_AUTHORIZED: Code.Unauthenticated,
  ERR_UNREACHABLE: Code.Unavailable,
  ERR_ISSUER_UNREACHABLE: Code.Unavailable,
  ERR_STORAGE: Code.Unavailable,
};

/**
 * Codes whose messages are built from constant text and the request alone, so any caller may read
 * them (they say what to do: ask for a new token, remove a lock). Every other code (storage,
 * configuration, an ID token's issuer, internal) can carry a backend or issuer address, a
 * network error, a file path or a record key: a caller that is not an admin gets a generic
 * sentence instead, and a non-final code (SPEC §13: a broken server database is not the daemon's
 * fault).
 */
const PUBLIC_CODES: ReadonlySet<ErrorCode> = new Set<ErrorCode>([
  "ERR_USAGE",
  "ERR_BAD_DURATION",
  "ERR_MALFORMED_KEY",
  "ERR_MALFORMED_CERT",
  "ERR_MALFORMED_PEM",
  "ERR_NOT_FOUND",
  "ERR_ALREADY_EXISTS",
  "ERR_NO_LOGINS",
  "ERR_ROLE_CONFLICT",
  "ERR_RATE_LIMITED",
  "ERR_TOKEN_UNKNOWN",
  "ERR_TOKEN_USED",
  "ERR_TOKEN_EXPIRED",
  "ERR_TOKEN_INVALID",
  "ERR_BAD_PROOF",
  "ERR_LOCKED",
  "ERR_IDENTITY_DELETED",
  "ERR_GENERATION_MISMATCH",
  "ERR_NOT_AUTHORIZED",
]);

/**
 * Server side: what a handler's error becomes on the wire. "detailed" (admins) carries the
 * error's own message; "public" (everyone else) carries it only for PUBLIC_CODES, and otherwise
 * says the service failed, with a reference the service logged beside the detail.
 */
export function toConnectError(e: unknown, audience: "detailed" | "public" = "public"): ConnectError {
  if (e instanceof ConnectError) return e;
  if (e instanceof MeziteError && (audience === "detailed" || PUBLIC_CODES.has(e.code))) {
    const code = GRPC_CODE[e.code] ?? Code.Internal;
    return new ConnectError(e.message, code, { [CODE_HEADER]: e.code });
  }
  const ref = randomBytes(4).toString("hex");
  // An ID token's issuer out of reach: its address and the network error stay in the log.
  if (e instanceof MeziteError && e.code === "ERR_ISSUER_UNREACHABLE") {
    return new ConnectError(`the auth service cannot reach the ID token's issuer; retry later (reference ${ref} in its log)`, Code.Unavailable, { [CODE_HEADER]: e.code, [ERROR_REF_HEADER]: ref });
  }
  // Server side these come from the backend alone: down, unreachable or corrupt.
  if (e instanceof MeziteError && (e.code === "ERR_STORAGE" || e.code === "ERR_UNREACHABLE" || e.code === "ERR_STATE_CORRUPT")) {
    return new ConnectError(`the auth service's storage failed; retry later (reference ${ref} in its log)`, Code.Unavailable, { [CODE_HEADER]: "ERR_STORAGE", [ERROR_REF_HEADER]: ref });
  }
  return new ConnectError(`internal error in the auth service; retry later (reference ${ref} in its log)`, Code.Internal, { [CODE_HEADER]: "ERR_INTERNAL", [ERROR_REF_HEADER]: ref });
}

/** Client side: a failed call as a MeziteError with the server's code, or ERR_UNREACHABLE. */
export function fromConnectError(e: unknown, addr: string): MeziteError {
  if (e instanceof MeziteError) return e;
  const ce = ConnectError.from(e);
  const code = ce.metadata.get(CODE_HEADER) as ErrorCode | null;
  if (code) return new MeziteError(code, ce.rawMessage, { cause: e });
  if (ce.code === Code.Unavailable || ce.code === Code.DeadlineExceeded || ce.code === Code.Unknown || ce.code === Code.Internal && /ECONN|ETIMEDOUT|socket|TLS|certificate|EHOSTUNREACH/i.test(ce.rawMessage)) {
    return new MeziteError("ERR_UNREACHABLE", `cannot reach the auth service at ${addr}: ${ce.rawMessage}`, { cause: e });
  }
  if (ce.code === Code.ResourceExhausted) return new MeziteError("ERR_USAGE", `the auth service refused the request: ${ce.rawMessage}`, { cause: e });
  return new MeziteError("ERR_INTERNAL", `the auth service at ${addr} failed: ${ce.rawMessage}`, { cause: e });
}

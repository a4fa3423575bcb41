/**
 * The one mapping between Mezite's typed errors and gRPC status codes. The stable code travels
 * in the `mezite-error-code` trailer so clients can act on it (exit codes, retry or not); the
 * message is the same one line a human reads. `cause` never leaves the process.
 */
import { Code, ConnectError } from "@connectrpc/connect";
import { MeziteError, type ErrorCode } from "../lib/errors.js";

const CODE_HEADER = "mezite-error-code";

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
  ERR_COMPARE_FAILED: Code.Aborted,
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
  ERR_STORAGE: Code.Unavailable,
};

/** Server side: what a handler's error becomes on the wire. Unknown errors say nothing inside. */
export function toConnectError(e: unknown): ConnectError {
  if (e instanceof ConnectError) return e;
  if (e instanceof MeziteError) {
    const code = GRPC_CODE[e.code] ?? Code.Internal;
    return new ConnectError(e.message, code, { [CODE_HEADER]: e.code });
  }
  return new ConnectError("internal error in the auth service (see its log)", Code.Internal, { [CODE_HEADER]: "ERR_INTERNAL" });
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

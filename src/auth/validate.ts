/** Checks on what arrives over the wire, so bad input is InvalidArgument, never a crash. */
import type { KeyObject } from "node:crypto";
import type { HostFacts } from "../api/gen/mezite/v1/common_pb.js";
import type { StoredHostFacts } from "./records.js";
import { parseAuthorizedKey } from "../ca/sshkey.js";
import { p256PointFromDer, type P256Point } from "../ca/x509.js";
import { isHostPort } from "../lib/address.js";
import { MeziteError } from "../lib/errors.js";
import { isHostPrincipal } from "../rbac/names.js";

export const MIN_TTL_MS = 60_000;
export const MAX_TTL_MS = 7 * 24 * 3_600_000;
export const DEFAULT_TTL_MS = 3_600_000;

function invalid(what: string): never {
  throw new MeziteError("ERR_USAGE", `invalid request: ${what}`);
}

export function sshKey(line: string, field: string): KeyObject {
  if (line.length > 1024) invalid(`${field} is too long`);
  try {
    return parseAuthorizedKey(line);
  } catch {
    invalid(`${field} is not an Ed25519 public key`);
  }
}

/** A P-256 key to be certified: checked, as a point (no KeyObject: nothing here uses the key). */
export function p256Key(der: Uint8Array, field: string): P256Point {
  if (der.length > 1024) invalid(`${field} is too long`);
  try {
    return p256PointFromDer(der);
  } catch {
    invalid(`${field} is not a P-256 public key`);
  }
}

export function bytes(b: Uint8Array, len: number, field: string): Uint8Array {
  if (b.length !== len) invalid(`${field} must be ${len} bytes`);
  return b;
}

export function hexId(s: string, len: number, field: string): string {
  if (s.length !== len || !/^[0-9a-f]+$/.test(s)) invalid(`${field} must be ${len} lowercase hex characters`);
  return s;
}

export function ttl(ms: bigint): number {
  if (ms === 0n) return DEFAULT_TTL_MS;
  if (ms < BigInt(MIN_TTL_MS) || ms > BigInt(MAX_TTL_MS)) invalid(`requested TTL must be between 1m and 168h`);
  return Number(ms);
}

/** A host certificate principal (rbac/names isHostPrincipal): a DNS name or an IP address. */
export function hostPrincipal(s: string, field: string): string {
  if (!isHostPrincipal(s)) invalid(`${field} "${s.slice(0, 64)}" is not a DNS name or an IP address`);
  return s;
}

/** A node's SSH address as its heartbeat reports it: lib/address.ts isHostPort. Not echoed back: it may hold anything. */
export function sshAddress(s: string, field: string): string {
  if (!isHostPort(s)) invalid(`${field} must be host:port (a DNS name, an IPv4 address or a bracketed IPv6 address, and a port 1-65535)`);
  return s;
}

const FACT = /^[\x21-\x7e][\x20-\x7e]{0,252}$/;

/**
 * What a daemon says of its machine (SPEC §18): shown to admins, so printable ASCII and short, or
 * refused. Absent (an older daemon): undefined, and the record keeps what it had.
 */
export function hostFacts(h: HostFacts | undefined): StoredHostFacts | undefined {
  if (!h) return undefined;
  const facts = { hostName: h.hostName, os: h.os, arch: h.arch, version: h.version };
  for (const [k, val] of Object.entries(facts)) if (val !== "" && !FACT.test(val)) invalid(`host.${k} must be printable text of at most 253 characters`);
  return facts;
}

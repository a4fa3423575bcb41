/**
 * A test client for the auth service. Join and Renew are built from the daemon's own protocol
 * half (src/identity/protocol.ts), so the tests speak exactly what `mezd identity` speaks; the
 * admin shortcuts do what mezctl does, without a CLI start per step. Every call opens its own
 * transport: concurrent callers are separate connections, like separate hosts.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { Code, ConnectError, type Client } from "@connectrpc/connect";
import { create } from "@bufbuild/protobuf";
import { AdminService, TokenVerifierSchema } from "../../src/api/gen/mezite/v1/admin_pb.js";
import { readAdminIdentity } from "../../src/api/admin-identity.js";
import { roleToProto } from "../../src/api/roles.js";
import { deriveTokenSecrets, generateToken } from "../../src/ca/jointoken.js";
import { ed25519RawPublic } from "../../src/ca/sshkey.js";
import { parseRoleYaml } from "../../src/rbac/role.js";
import type { IssuedCertificates } from "../../src/api/gen/mezite/v1/common_pb.js";
import { JoinService } from "../../src/api/gen/mezite/v1/join_pb.js";
import { RenewService, type RenewRequest } from "../../src/api/gen/mezite/v1/renew_pb.js";
import { connect, type ClientTls } from "../../src/api/client.js";
import { privateKeyToPem } from "../../src/ca/x509.js";
import { buildJoinRequest, buildRenewRequest, checkCertsMatchKeys, generateIssueKeys, verifyJoinReply, type IssueKeys } from "../../src/identity/protocol.js";

export const HOUR_MS = 3_600_000;

type AuthAddr = { addr: string; identityPath: string };

/** The admin API, with the admin.identity mezctl uses (the CLI itself is admin.test.ts's subject). */
export function adminApi(auth: AuthAddr): Client<typeof AdminService> {
  const id = readAdminIdentity(auth.identityPath);
  return connect(AdminService, auth.addr, { certPem: id.cert_pem, keyPem: id.key_pem, caPem: id.ca_pem });
}

/** A fresh token and what the server stores of it, made as mezctl makes them. */
function newToken(ttlMs: number) {
  const token = generateToken();
  const s = deriveTokenSecrets(Buffer.from(token, "hex"));
  return { token, verifier: create(TokenVerifierSchema, { tokenId: s.tokenId, verifyKey: ed25519RawPublic(s.verifyKey), macKey: s.macKey, ttlMs: BigInt(ttlMs) }) };
}

export async function createRole(auth: AuthAddr, yaml: string): Promise<void> {
  await adminApi(auth).createRole({ role: roleToProto(parseRoleYaml(yaml)), force: false });
}

/** Every page of `audit ls` through the admin API. */
export async function auditEvents(auth: AuthAddr, req: { since?: bigint; type?: string; limit?: number } = {}) {
  const events = [];
  for await (const page of adminApi(auth).listAudit({ since: 0n, type: "", limit: 0, ...req })) events.push(...page.events);
  return events;
}

/** `agent-identities add` by API; returns the token. */
export async function addIdentity(auth: AuthAddr, name: string, roles: string[], ttlMs = HOUR_MS): Promise<string> {
  const { token, verifier } = newToken(ttlMs);
  await adminApi(auth).addAgentIdentity({ name, roles, token: verifier });
  return token;
}

/** `agent-identities add-token` by API; returns the token. */
export async function addToken(auth: AuthAddr, name: string, ttlMs = HOUR_MS): Promise<string> {
  const { token, verifier } = newToken(ttlMs);
  await adminApi(auth).addToken({ type: "agent_identity", agentIdentity: name, token: verifier });
  return token;
}

/** An identity's status, by name, as the admin API reports it. */
export async function statusOf(auth: AuthAddr, name: string) {
  const res = await adminApi(auth).getAgentIdentity({ name });
  assert.ok(res.identity, `status of ${name}`);
  return res.identity;
}

/** What a daemon holds after a join or renewal: its private keys and the certificates for them. */
export interface Held {
  keys: IssueKeys;
  certs: IssuedCertificates;
}

export async function join(addr: string, token: string, ttlMs = HOUR_MS): Promise<Held> {
  const keys = generateIssueKeys();
  const { request, macKey } = buildJoinRequest(Buffer.from(token, "hex"), keys, ttlMs);
  const reply = await connect(JoinService, addr, {}).join(request);
  return { keys, certs: verifyJoinReply(request, reply, macKey, keys) };
}

/** mTLS with the renewal certificate, trusting only the TLS CA the join reply proved. */
export function renewalTls(h: Held): ClientTls {
  return { certPem: h.certs.renewalCertificatePem, keyPem: privateKeyToPem(h.keys.renewal), caPem: h.certs.tlsCaPem };
}

/** A renewal as the daemon persists it before sending: request id and fresh keys. */
export interface Pending {
  requestId: Buffer;
  keys: IssueKeys;
}

export function pending(): Pending {
  return { requestId: randomBytes(16), keys: generateIssueKeys() };
}

/** Sends a raw renew request over mTLS as `tls` (default: the holder's renewal certificate). */
export async function renewRaw(addr: string, tls: ClientTls, request: RenewRequest): Promise<IssuedCertificates> {
  const res = await connect(RenewService, addr, tls).renew(request);
  assert.ok(res.certificates, "a renew reply carries certificates");
  return res.certificates;
}

export async function renew(addr: string, h: Held, p: Pending = pending(), ttlMs = HOUR_MS): Promise<Held> {
  const certs = await renewRaw(addr, renewalTls(h), buildRenewRequest(p.requestId, p.keys, ttlMs));
  checkCertsMatchKeys(certs, p.keys);
  return { keys: p.keys, certs };
}

/** The failure of a call: gRPC code and Mezite's stable error code (from the trailer). */
export interface Refusal {
  grpc: Code;
  code: string;
  message: string;
}

export async function outcome(p: Promise<unknown>): Promise<Refusal | "ok"> {
  try {
    await p;
    return "ok";
  } catch (e) {
    const ce = ConnectError.from(e);
    return { grpc: ce.code, code: ce.metadata.get("mezite-error-code") ?? "", message: ce.rawMessage };
  }
}

/** Asserts that the call fails with this Mezite code (and this gRPC code, when given). */
export async function refused(p: Promise<unknown>, code: string, grpc?: Code): Promise<Refusal> {
  const r = await outcome(p);
  assert.notEqual(r, "ok", `expected ${code}, the call succeeded`);
  const f = r as Refusal;
  assert.equal(f.code, code, `expected ${code}, got ${Code[f.grpc]} ${f.code}: ${f.message}`);
  if (grpc !== undefined) assert.equal(Code[f.grpc], Code[grpc], f.message);
  return f;
}

/** Asserts the gRPC code only (for errors the transport layer raises before any handler runs). */
export async function refusedWith(p: Promise<unknown>, grpc: Code): Promise<Refusal> {
  const r = await outcome(p);
  assert.notEqual(r, "ok", `expected ${Code[grpc]}, the call succeeded`);
  const f = r as Refusal;
  assert.equal(Code[f.grpc], Code[grpc], `got ${Code[f.grpc]} ${f.code}: ${f.message}`);
  return f;
}

/** The count of each distinct result, e.g. { ok: 1, ERR_TOKEN_USED: 49 }. */
export function tally(results: (Refusal | "ok")[]): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const r of results) {
    const k = r === "ok" ? "ok" : r.code || Code[r.grpc];
    counts[k] = (counts[k] ?? 0) + 1;
  }
  return counts;
}

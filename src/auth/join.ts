/**
 * Agent joins. With a one-time token (SPEC §4): a daemon proves it holds the token without
 * sending it, and the token is consumed by compare-and-swap, so of any number of concurrent joins
 * exactly one succeeds. With an ID token under a join token resource (SPEC §14): the JWT is
 * verified and matched against the resource's rules, and used once (its use is a create in the
 * join's own transaction). Both make a new instance the same way (joinInstance).
 */
import { randomUUID } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import { JoinResponseSchema, type JoinRequest, type JoinResponse, type JoinWithIdTokenRequest } from "../api/gen/mezite/v1/join_pb.js";
import { joinReplyTranscript, joinRequestTranscript } from "../api/transcripts.js";
import type { WriteOp } from "../backend/backend.js";
import { mac } from "../ca/jointoken.js";
import { MeziteError, isMeziteError } from "../lib/errors.js";
import { NAME_PATTERN } from "../rbac/names.js";
import type { AuthContext, Caller } from "./context.js";
import { UnverifiedIdToken, verifyIdToken } from "./id-tokens.js";
import { instanceAccess, issueAgentCertificates, type Issued, type PublicKeys } from "./issue.js";
import { certSummary } from "./certs.js";
import { RECORDED_CLAIMS, claimText, matchingRule, type JoinTokenRecord } from "./join-methods.js";
import { activeLocks, lockAuditDetail, refuseIfLocked } from "./locks.js";
import { revokedHostKeys } from "./nodes.js";
import { encode, instanceExpiry, keys, load, type IdentityRecord, type InstanceRecord, type StoredHostFacts, type TokenRecord } from "./records.js";
import { revokeIfLockedMeanwhile, revokedUntil, tombstone } from "./revocations.js";
import { loadRoles } from "./roles.js";
import { checkToken, commitJoin } from "./tokens.js";
import * as v from "./validate.js";

/** The instance record's fields, with the daemon's host facts when it sent them. */
function withHost(extra: Partial<InstanceRecord>, host: StoredHostFacts | undefined): Partial<InstanceRecord> {
  return host ? { ...extra, host } : extra;
}

function identityGone(): MeziteError {
  return new MeziteError("ERR_TOKEN_UNKNOWN", "the join token's agent identity was deleted: ask an admin for a new one");
}

function requestKeys(req: { sshPublicKey: string; x509PublicKey: Uint8Array; renewalPublicKey: Uint8Array }): PublicKeys {
  return {
    ssh: v.sshKey(req.sshPublicKey, "ssh_public_key"),
    x509: v.p256Key(req.x509PublicKey, "x509_public_key"),
    renewal: v.p256Key(req.renewalPublicKey, "renewal_public_key"),
  };
}

interface InstanceJoin {
  identityName: string;
  identityId: string;
  keys: PublicKeys;
  ttlMs: number;
  caller: Caller;
  /** The instance record's extra fields (how it joined). */
  extra: Partial<InstanceRecord>;
  /** Commits the join's writes with whatever makes the credential used. */
  commit: (ops: WriteOp[]) => Promise<void>;
  /** The audit event's detail. */
  detail: string;
  /** Filled in as soon as known, for the failure's audit event. */
  audit: { roles: string[] };
}

/** Makes a new instance of an identity: checks, certificates, one commit, and the looks after it. */
async function joinInstance(ctx: AuthContext, j: InstanceJoin): Promise<Issued> {
  const identity = await load<IdentityRecord>(ctx.backend, keys.identity(j.identityName));
  if (!identity || identity.value.id !== j.identityId) throw identityGone();
  j.audit.roles = identity.value.roles;
  const roles = await loadRoles(ctx.backend, identity.value.roles);
  const now = ctx.now();
  const access = instanceAccess(roles, j.extra.claims);
  const subject = { identityName: j.identityName, roles: identity.value.roles, logins: access.principals };
  refuseIfLocked(await activeLocks(ctx.backend, now), subject);

  const instanceId = randomUUID();
  const issued = await issueAgentCertificates({
    cas: ctx.cas,
    clusterName: ctx.clusterName,
    identity: identity.value,
    access,
    instanceId,
    generation: 1n,
    keys: j.keys,
    requestedTtlMs: j.ttlMs,
    now,
    revokedHostKeys: await revokedHostKeys(ctx),
  });
  const instance: InstanceRecord = {
    id: instanceId,
    identityId: identity.value.id,
    identityName: j.identityName,
    generation: "1",
    created: now,
    lastSeen: now,
    address: j.caller.remoteAddr,
    certExpires: issued.record.expires,
    serial: issued.record.serial,
    userCaKey: issued.userCaKey,
    caStates: issued.caStates,
    ...j.extra,
  };
  await j.commit([
    { op: "put", key: keys.cert(instanceId, issued.record.serial), value: encode(issued.record), expires: revokedUntil(issued.record.expires) },
    { op: "create", key: keys.instance(identity.value.id, instanceId), value: encode(instance), ...instanceExpiry(instance) },
  ]);
  // An rm racing this join may have listed the identity's instances before this one existed:
  // whichever of us looks second sees the other, and the certificate never goes out unrevoked.
  const still = await load<IdentityRecord>(ctx.backend, keys.identity(j.identityName));
  if (!still || still.value.id !== identity.value.id) {
    await tombstone(ctx, [instance]);
    await ctx.backend.delete(keys.instance(identity.value.id, instanceId));
    throw identityGone();
  }
  // Likewise a lock made since the check above: its certificate is revoked by serial.
  await revokeIfLockedMeanwhile(ctx, { ...subject, instanceId }, issued.record);
  await ctx.audit.emit({
    type: "agent_identity.join",
    identity: j.identityName,
    instance: instanceId,
    roles: identity.value.roles,
    generation: "1",
    remote_addr: j.caller.remoteAddr,
    serial: issued.record.serial,
    detail: j.detail,
    cert: certSummary(issued.record, now, instance),
  });
  ctx.log.info("agent identity joined", { identity: j.identityName, instance: instanceId, serial: issued.record.serial });
  return issued;
}

export async function joinAgent(ctx: AuthContext, req: JoinRequest, caller: Caller): Promise<JoinResponse> {
  v.hexId(req.tokenId, 32, "token_id");
  const pub = requestKeys(req);
  v.bytes(req.nonce, 32, "nonce");
  v.bytes(req.proof, 64, "proof");
  const ttl = v.ttl(req.requestedTtlMs);
  const host = v.hostFacts(req.host);

  let identityName = "";
  const audit = { roles: [] as string[] };
  try {
    const token = await checkToken(ctx, req.tokenId, "agent_identity", joinRequestTranscript(req), req.proof);
    identityName = token.value.identityName ?? "";
    const issued = await joinInstance(ctx, {
      identityName,
      identityId: token.value.identityId ?? "",
      keys: pub,
      ttlMs: ttl,
      caller,
      extra: withHost({}, host),
      commit: (ops) => commitJoin(ctx, token, ops),
      detail: "",
      audit,
    });
    return create(JoinResponseSchema, {
      certificates: issued.certs,
      mac: mac(Buffer.from(token.value.macKey, "base64"), joinReplyTranscript(req, issued.certs)),
    });
  } catch (e) {
    // Guessed token ids cost no write each: they are counted, and audited together.
    if (isMeziteError(e, "ERR_TOKEN_UNKNOWN") && !identityName) {
      ctx.audit.tallyUnknownToken(caller.remoteAddr);
      throw e;
    }
    // A refused token (used, expired, bad proof) still names its identity in the audit trail.
    if (!identityName) {
      const token = await load<TokenRecord>(ctx.backend, keys.token(req.tokenId)).catch(() => undefined);
      identityName = token?.value.identityName ?? "";
    }
    await ctx.audit.emit({
      type: "agent_identity.join",
      identity: identityName,
      roles: audit.roles,
      remote_addr: caller.remoteAddr,
      success: false,
      error: isMeziteError(e) ? e.code : "ERR_INTERNAL",
      detail: lockAuditDetail(e),
    });
    throw e;
  }
}

/** The claims an instance keeps of who joined, as text. */
function recordedClaims(method: JoinTokenRecord["method"], claims: Record<string, unknown>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const c of RECORDED_CLAIMS[method]) {
    const value = claimText(claims[c]);
    if (value !== undefined) out[c] = value.slice(0, 256);
  }
  return out;
}

const claimsText = (claims: Record<string, string>) => Object.entries(claims).map(([k, val]) => `${k}=${val}`).join(" ");

function usedIdToken(): MeziteError {
  return new MeziteError("ERR_TOKEN_USED", "this ID token was already used to join: an ID token joins once; the next run gets a new one");
}

/**
 * A used ID token's record outlives the token by this much: another auth service whose clock lags
 * still takes the token as valid for that long, and must find it used.
 */
export const USED_ID_TOKEN_SKEW_MS = 5 * 60_000;

export async function joinWithIdToken(ctx: AuthContext, req: JoinWithIdTokenRequest, caller: Caller): Promise<JoinResponse> {
  if (!NAME_PATTERN.test(req.joinToken)) throw new MeziteError("ERR_USAGE", "invalid request: join_token is not a join token name");
  const pub = requestKeys(req);
  const ttl = v.ttl(req.requestedTtlMs);
  const host = v.hostFacts(req.host);
  const found = await load<JoinTokenRecord>(ctx.backend, keys.joinToken(req.joinToken));
  if (!found) {
    ctx.audit.tallyUnknownToken(caller.remoteAddr);
    throw new MeziteError("ERR_TOKEN_UNKNOWN", `no join token named "${req.joinToken}": check --token, or ask an admin (mezctl get join_tokens)`);
  }
  const rec = found.value;
  const audit = { roles: [] as string[] };
  let claims: Record<string, string> = {};
  try {
    const verified = await verifyIdToken(req.idToken, rec.issuer, ctx.clusterName, rec.staticJwks, ctx.now());
    claims = recordedClaims(rec.method, verified.claims);
    const rule = matchingRule(rec.allow, verified.claims);
    if (!rule) {
      claims = { ...claims, ...recordedClaims("oidc", verified.claims) };
      throw new MeziteError("ERR_TOKEN_INVALID", `the ID token matches no rule of join token "${rec.name}"`);
    }
    const used: WriteOp = { op: "create", key: keys.usedIdToken(verified.useKey), value: encode({ joinToken: rec.name }), expires: verified.usableUntil + USED_ID_TOKEN_SKEW_MS };
    const issued = await joinInstance(ctx, {
      identityName: rec.identityName,
      identityId: rec.identityId,
      keys: pub,
      ttlMs: ttl,
      caller,
      extra: withHost({ joinMethod: rec.method, joinToken: rec.name, claims }, host),
      commit: async (ops) => {
        try {
          await ctx.backend.write([used, ...ops]);
        } catch (e) {
          if (isMeziteError(e, "ERR_ALREADY_EXISTS") && (await ctx.backend.get(used.key))) throw usedIdToken();
          throw e;
        }
      },
      detail: `join_token=${rec.name} method=${rec.method} ${claimsText(claims)}`,
      audit,
    });
    return create(JoinResponseSchema, { certificates: issued.certs });
  } catch (e) {
    // An ID token refused before its signature verified could come from anyone: it costs no
    // write each; such refusals are counted, and audited together.
    if (e instanceof UnverifiedIdToken) {
      ctx.audit.tallyUnverifiedIdToken(caller.remoteAddr, rec.name, e.code);
      throw e;
    }
    await ctx.audit.emit({
      type: "agent_identity.join",
      identity: rec.identityName,
      roles: audit.roles,
      remote_addr: caller.remoteAddr,
      success: false,
      error: isMeziteError(e) ? e.code : "ERR_INTERNAL",
      detail: `join_token=${rec.name} method=${rec.method} ${isMeziteError(e) ? e.message : ""} ${lockAuditDetail(e)} ${claimsText(claims)}`.trim(),
    });
    throw e;
  }
}

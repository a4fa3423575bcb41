/**
 * Renewal (SPEC §6 "Generations"): the renewal certificate names identity, instance and
 * generation. Check and increment are one compare-and-swap on the instance record; a request
 * presenting a generation other than the current one is a second holder of the same state, and
 * locks the instance. A retry of the very request that was answered gets the same reply, so a
 * lost reply never looks like a clone.
 */
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { IssuedCertificatesSchema, type IssuedCertificates } from "../api/gen/mezite/v1/common_pb.js";
import { RenewResponseSchema, type RenewRequest, type RenewResponse } from "../api/gen/mezite/v1/renew_pb.js";
import { MeziteError, isMeziteError } from "../lib/errors.js";
import type { AuthContext, Caller } from "./context.js";
import { instanceAccess, issueAgentCertificates, keysHash } from "./issue.js";
import { certSummary } from "./certs.js";
import { activeLocks, createLock, lockAuditDetail, refuseIfLocked } from "./locks.js";
import { encode, instanceExpiry, keys, load, type IdentityRecord, type InstanceRecord } from "./records.js";
import { parseVerifiedCertificate, type ParsedCert } from "../ca/x509.js";
import type { X509Certificate } from "node:crypto";
import { revokedHostKeys } from "./nodes.js";
import { revokeIfLockedMeanwhile, revokedUntil } from "./revocations.js";
import { loadRoles } from "./roles.js";
import * as v from "./validate.js";

const MAX_CAS_ATTEMPTS = 5;

function deleted(name: string): MeziteError {
  return new MeziteError("ERR_IDENTITY_DELETED", `agent identity "${name}" (or this instance of it) was deleted: a new join token is needed`);
}

export async function renewAgent(ctx: AuthContext, req: RenewRequest, caller: Caller): Promise<RenewResponse> {
  const { remoteAddr } = caller;
  const peer = caller.cert;
  if (peer?.kind !== "renewal" || !peer.identityId || !peer.instanceId || peer.generation === undefined) {
    throw new MeziteError("ERR_NOT_AUTHORIZED", "renewal needs the renewal certificate from the daemon's storage dir; output certificates cannot renew");
  }
  const requestId = Buffer.from(v.bytes(req.requestId, 16, "request_id")).toString("hex");
  const pub = {
    ssh: v.sshKey(req.sshPublicKey, "ssh_public_key"),
    x509: v.p256Key(req.x509PublicKey, "x509_public_key"),
    renewal: v.p256Key(req.renewalPublicKey, "renewal_public_key"),
  };
  const ttl = v.ttl(req.requestedTtlMs);
  const host = v.hostFacts(req.host);
  const hash = keysHash(req.sshPublicKey, req.x509PublicKey, req.renewalPublicKey);
  const presented = peer.generation.toString();
  const name = peer.subjectCommonName;
  const instanceKey = keys.instance(peer.identityId, peer.instanceId);
  const base = { identity: name, instance: peer.instanceId, generation: presented, remote_addr: remoteAddr };
  let roleNames: string[] = [];

  try {
    for (let attempt = 0; attempt < MAX_CAS_ATTEMPTS; attempt++) {
      // Locks are read before the instance: a clone lock seen here was made after the winning
      // swap, so the instance read below shows the new generation and every loser of a race
      // hears "generation mismatch", never a mix of that and "locked".
      const locks = await activeLocks(ctx.backend, ctx.now());
      const [found, identity] = await Promise.all([
        load<InstanceRecord>(ctx.backend, instanceKey),
        load<IdentityRecord>(ctx.backend, keys.identity(name)),
      ]);
      if (!found || !identity || identity.value.id !== peer.identityId) throw deleted(name);
      const inst = found.value;
      roleNames = identity.value.roles;
      const roles = await loadRoles(ctx.backend, roleNames);
      const now = ctx.now();

      const last = inst.lastRequest;
      const retry = last !== undefined && last.id === requestId && last.keysHash === hash && last.fromGeneration === presented;
      if (!retry && presented !== inst.generation) {
        await lockClone(ctx, inst, presented, remoteAddr, roleNames);
        throw new MeziteError(
          "ERR_GENERATION_MISMATCH",
          `generation mismatch for agent identity "${name}" instance ${inst.id}: its credentials are in use elsewhere; the instance is now locked`,
        );
      }
      const access = instanceAccess(roles, inst.claims);
      const subject = { identityName: name, instanceId: inst.id, roles: roleNames, logins: access.principals };
      refuseIfLocked(locks, subject);
      if (retry) return create(RenewResponseSchema, { certificates: await storedReply(ctx, inst.serial) });

      const generation = BigInt(inst.generation) + 1n;
      const issued = await issueAgentCertificates({
        cas: ctx.cas,
        clusterName: ctx.clusterName,
        identity: identity.value,
        access,
        instanceId: inst.id,
        generation,
        keys: pub,
        requestedTtlMs: ttl,
        now,
        revokedHostKeys: await revokedHostKeys(ctx),
      });
      const next: InstanceRecord = {
        ...inst,
        generation: generation.toString(),
        lastSeen: now,
        address: remoteAddr,
        certExpires: issued.record.expires,
        serial: issued.record.serial,
        userCaKey: issued.userCaKey,
        caStates: issued.caStates,
        lastRequest: { id: requestId, keysHash: hash, fromGeneration: presented },
        ...(host ? { host } : {}),
      };
      // One transaction: the generation's swap, the certificate's record (a node must be able to
      // revoke any certificate handed out), the reply a retry gets, and the audit event.
      const { serial, expires } = issued.record;
      const audit = ctx.audit.entry({ type: "agent_identity.renew", ...base, roles: roleNames, generation: generation.toString(), serial, cert: certSummary(issued.record, now, inst) });
      try {
        await ctx.backend.write([
          { op: "cas", key: instanceKey, revision: found.revision, value: encode(next), ...instanceExpiry(next) },
          { op: "put", key: keys.cert(inst.id, serial), value: encode(issued.record), expires: revokedUntil(expires) },
          { op: "put", key: keys.reply(serial), value: Buffer.from(toBinary(IssuedCertificatesSchema, issued.certs)).toString("base64"), expires },
          ...audit.ops,
        ]);
      } catch (e) {
        if (isMeziteError(e, "ERR_COMPARE_FAILED")) continue; // someone renewed first: look again
        throw e;
      }
      audit.publish();
      await revokeIfLockedMeanwhile(ctx, subject, issued.record);
      return create(RenewResponseSchema, { certificates: issued.certs });
    }
    throw new MeziteError("ERR_INTERNAL", "renewal kept racing with concurrent updates; retry");
  } catch (e) {
    await ctx.audit.emit({ type: "agent_identity.renew", ...base, roles: roleNames, success: false, error: isMeziteError(e) ? e.code : "ERR_INTERNAL", detail: lockAuditDetail(e) });
    throw e;
  }
}

async function storedReply(ctx: AuthContext, serial: string): Promise<IssuedCertificates> {
  const item = await ctx.backend.get(keys.reply(serial));
  // Kept as long as its certificates are valid; a retry after that cannot present the renewal certificate.
  if (!item) throw new MeziteError("ERR_INTERNAL", "the reply to this renewal is no longer kept; retry with a new request");
  return fromBinary(IssuedCertificatesSchema, Buffer.from(item.value, "base64"));
}

async function lockClone(ctx: AuthContext, inst: InstanceRecord, presented: string, remoteAddr: string, roles: string[]): Promise<void> {
  const lock = await createLock(
    ctx.backend,
    "instance",
    inst.id,
    `generation mismatch: presented ${presented}, expected ${inst.generation} (copied or stolen credentials)`,
    0,
    ctx.now(),
    `generation-mismatch-${inst.id}`,
  );
  ctx.log.warn("generation mismatch: instance locked", { identity: inst.identityName, instance: inst.id, presented, expected: inst.generation });
  await ctx.audit.emit({
    type: "agent_identity.generation_mismatch",
    identity: inst.identityName,
    instance: inst.id,
    roles,
    generation: presented,
    remote_addr: remoteAddr,
    success: false,
    error: "ERR_GENERATION_MISMATCH",
    detail: `expected generation ${inst.generation}; lock ${lock.id}`,
  });
}

/**
 * Why a renewal certificate the service no longer accepts was refused, when it is one of this
 * cluster's instances whose certificates come from a User CA key a rotation retired while its
 * daemon was offline (issue 24): that daemon can never renew, and should say what to do rather
 * than "this call needs the daemon's renewal certificate". The certificate is not trusted: its
 * identity and instance ids are looked up, and only an instance that exists and holds
 * certificates of an untrusted key gets this answer (and one audit event). Undefined otherwise.
 */
export async function staleInstanceRefusal(ctx: AuthContext, x509: X509Certificate, remoteAddr: string): Promise<MeziteError | undefined> {
  let claimed: ParsedCert;
  try {
    claimed = parseVerifiedCertificate(x509);
  } catch {
    return undefined;
  }
  if (claimed.kind !== "renewal" || !claimed.identityId || !claimed.instanceId) return undefined;
  const inst = await load<InstanceRecord>(ctx.backend, keys.instance(claimed.identityId, claimed.instanceId));
  if (!inst || !isStale(ctx, inst.value)) return undefined;
  const name = inst.value.identityName;
  await ctx.audit.emit({
    type: "agent_identity.renew",
    identity: name,
    instance: inst.value.id,
    generation: inst.value.generation,
    remote_addr: remoteAddr,
    success: false,
    error: "ERR_NOT_AUTHORIZED",
    detail: `its certificates are of User CA key ${inst.value.userCaKey}, retired by a CA rotation`,
  });
  return new MeziteError(
    "ERR_NOT_AUTHORIZED",
    `agent identity "${name}" instance ${inst.value.id.slice(0, 8)} was offline through a CA rotation: its certificates are of a retired User CA key and cannot renew; ask an admin for a new token (mezctl agent-identities add-token ${name}) and join again`,
  );
}

/** An instance whose last certificates are of a User CA key no longer trusted: it cannot renew. */
export function isStale(ctx: AuthContext, inst: InstanceRecord): boolean {
  return inst.userCaKey !== undefined && !ctx.cas.user.trusted.some((k) => k.sshFingerprint === inst.userCaKey);
}

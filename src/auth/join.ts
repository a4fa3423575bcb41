/**
 * Join (SPEC §4): a daemon proves it holds a one-time token without sending it. The token is
 * consumed by compare-and-swap, so of any number of concurrent joins exactly one succeeds.
 */
import { randomUUID } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import { JoinResponseSchema, type JoinRequest, type JoinResponse } from "../api/gen/mezite/v1/join_pb.js";
import { joinReplyTranscript, joinRequestTranscript } from "../api/transcripts.js";
import { mac } from "../ca/jointoken.js";
import { MeziteError, isMeziteError } from "../lib/errors.js";
import { principalsFor } from "../rbac/access.js";
import type { AuthContext, Caller } from "./context.js";
import { issueAgentCertificates } from "./issue.js";
import { activeLocks, refuseIfLocked } from "./locks.js";
import { revokedHostKeys } from "./nodes.js";
import { encode, keys, load, type IdentityRecord, type InstanceRecord, type TokenRecord } from "./records.js";
import { revokeIfLockedMeanwhile, tombstone } from "./revocations.js";
import { loadRoles } from "./roles.js";
import { checkToken, commitJoin } from "./tokens.js";
import * as v from "./validate.js";

export async function joinAgent(ctx: AuthContext, req: JoinRequest, caller: Caller): Promise<JoinResponse> {
  const remoteAddr = caller.remoteAddr;
  v.hexId(req.tokenId, 32, "token_id");
  const pub = {
    ssh: v.sshKey(req.sshPublicKey, "ssh_public_key"),
    x509: v.p256Key(req.x509PublicKey, "x509_public_key"),
    renewal: v.p256Key(req.renewalPublicKey, "renewal_public_key"),
  };
  v.bytes(req.nonce, 32, "nonce");
  v.bytes(req.proof, 64, "proof");
  const ttl = v.ttl(req.requestedTtlMs);

  let identityName = "";
  let roleNames: string[] = [];
  try {
    const token = await checkToken(ctx, req.tokenId, "agent_identity", joinRequestTranscript(req), req.proof);
    identityName = token.value.identityName ?? "";
    const identity = await load<IdentityRecord>(ctx.backend, keys.identity(identityName));
    if (!identity || identity.value.id !== token.value.identityId) {
      throw new MeziteError("ERR_TOKEN_UNKNOWN", "the join token's agent identity was deleted: ask an admin for a new one");
    }
    roleNames = identity.value.roles;
    const roles = await loadRoles(ctx.backend, roleNames);
    const now = ctx.now();
    const subject = { identityName, roles: roleNames, logins: principalsFor(roles) };
    refuseIfLocked(await activeLocks(ctx.backend, now), subject);

    const instanceId = randomUUID();
    const issued = await issueAgentCertificates({
      cas: ctx.cas,
      clusterName: ctx.clusterName,
      identity: identity.value,
      roles,
      instanceId,
      generation: 1n,
      keys: pub,
      requestedTtlMs: ttl,
      now,
      revokedHostKeys: await revokedHostKeys(ctx),
    });
    const instance: InstanceRecord = {
      id: instanceId,
      identityId: identity.value.id,
      identityName,
      generation: "1",
      created: now,
      lastSeen: now,
      address: remoteAddr,
      certExpires: issued.record.expires,
      serial: issued.record.serial,
    };
    await commitJoin(ctx, token, [
      { op: "put", key: keys.cert(instanceId, issued.record.serial), value: encode(issued.record), expires: issued.record.expires },
      { op: "create", key: keys.instance(identity.value.id, instanceId), value: encode(instance) },
    ]);
    // An rm racing this join may have listed the identity's instances before this one existed:
    // whichever of us looks second sees the other, and the certificate never goes out unrevoked.
    const still = await load<IdentityRecord>(ctx.backend, keys.identity(identityName));
    if (!still || still.value.id !== identity.value.id) {
      await tombstone(ctx, [instance]);
      await ctx.backend.delete(keys.instance(identity.value.id, instanceId));
      throw new MeziteError("ERR_TOKEN_UNKNOWN", "the join token's agent identity was deleted: ask an admin for a new one");
    }
    // Likewise a lock made since the check above: its certificate is revoked by serial.
    await revokeIfLockedMeanwhile(ctx, { ...subject, instanceId }, issued.record);
    await ctx.audit.emit({
      type: "agent_identity.join",
      identity: identityName,
      instance: instanceId,
      roles: roleNames,
      generation: "1",
      remote_addr: remoteAddr,
      serial: issued.record.serial,
    });
    ctx.log.info("agent identity joined", { identity: identityName, instance: instanceId, serial: issued.record.serial });
    const { macKey } = token.value;
    return create(JoinResponseSchema, {
      certificates: issued.certs,
      mac: mac(Buffer.from(macKey, "base64"), joinReplyTranscript(req, issued.certs)),
    });
  } catch (e) {
    // Guessed token ids cost no write each: they are counted, and audited together.
    if (isMeziteError(e, "ERR_TOKEN_UNKNOWN") && !identityName) {
      ctx.audit.tallyUnknownToken(remoteAddr);
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
      roles: roleNames,
      remote_addr: remoteAddr,
      success: false,
      error: isMeziteError(e) ? e.code : "ERR_INTERNAL",
    });
    throw e;
  }
}

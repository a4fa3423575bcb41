/**
 * Join (SPEC §4): a daemon proves it holds a one-time token without sending it. The token is
 * consumed by compare-and-swap, so of any number of concurrent joins exactly one succeeds.
 */
import { randomUUID } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import { JoinResponseSchema, type JoinRequest, type JoinResponse } from "../api/gen/mezite/v1/join_pb.js";
import { joinReplyTranscript, joinRequestTranscript } from "../api/transcripts.js";
import { ed25519PublicFromRaw } from "../ca/sshkey.js";
import { mac, verifyProof } from "../ca/jointoken.js";
import type { WriteOp } from "../backend/backend.js";
import { MeziteError, isMeziteError } from "../lib/errors.js";
import type { AuthContext } from "./context.js";
import { issueAgentCertificates } from "./issue.js";
import { activeLocks, refuseIfLocked } from "./locks.js";
import { encode, keys, load, tokenKeptUntil, type IdentityRecord, type InstanceRecord, type Loaded, type TokenRecord } from "./records.js";
import { tombstone } from "./revocations.js";
import { loadRoles } from "./roles.js";
import * as v from "./validate.js";
import { principalsFor } from "../rbac/access.js";

/**
 * Finds the token and checks the proof and its state. Failures are distinct codes for the
 * caller's exit code and the audit trail; none of them repeats anything secret.
 */
export async function checkToken(
  ctx: AuthContext,
  tokenId: string,
  type: TokenRecord["type"],
  proofData: Buffer,
  proof: Uint8Array,
): Promise<Loaded<TokenRecord>> {
  const found = await load<TokenRecord>(ctx.backend, keys.token(tokenId));
  if (!found || found.value.type !== type) throw unknownToken();
  const verifyKey = ed25519PublicFromRaw(Buffer.from(found.value.verifyKey, "base64"));
  if (!verifyProof(verifyKey, proofData, proof)) throw new MeziteError("ERR_BAD_PROOF", "the join request's token proof does not verify: the token is wrong or the request was altered");
  if (found.value.used) throw new MeziteError("ERR_TOKEN_USED", "the join token was already used: tokens work once; ask an admin for a new one (mezctl agent-identities add-token)");
  if (found.value.expires <= ctx.now()) throw new MeziteError("ERR_TOKEN_EXPIRED", "the join token has expired: ask an admin for a new one");
  return found;
}

function unknownToken(): MeziteError {
  return new MeziteError("ERR_TOKEN_UNKNOWN", "the join token is unknown or was deleted: ask an admin for a new one");
}

/** Marks the token used: the compare-and-swap that makes a token work exactly once. */
function usedToken(ctx: AuthContext, token: Loaded<TokenRecord>): WriteOp {
  return { op: "cas", key: keys.token(token.value.id), revision: token.revision, value: encode({ ...token.value, used: true, usedAt: ctx.now() }), expires: tokenKeptUntil(token.value) };
}

/** Commits a join's writes, the token's use among them: a lost race for the token writes nothing. */
export async function commitJoin(ctx: AuthContext, token: Loaded<TokenRecord>, ops: WriteOp[]): Promise<void> {
  try {
    await ctx.backend.write([usedToken(ctx, token), ...ops]);
  } catch (e) {
    if (!isMeziteError(e, "ERR_COMPARE_FAILED")) throw e;
    if (await ctx.backend.get(keys.token(token.value.id))) throw new MeziteError("ERR_TOKEN_USED", "the join token was already used: tokens work once; ask an admin for a new one");
    throw unknownToken();
  }
}

export async function joinAgent(ctx: AuthContext, req: JoinRequest, remoteAddr: string): Promise<JoinResponse> {
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
    refuseIfLocked(await activeLocks(ctx.backend, now), { identityName, roles: roleNames, logins: principalsFor(roles) });

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

/**
 * Ending one instance (SPEC §3 rm-instance, §19 release): its certificates go into the KRL
 * (a tombstone, before and after the instance record goes), then its locks go with it.
 *
 * `mezd identity release` (RenewService.Release, the renewal certificate) and `msh release`
 * (AgentService.ReleaseInstance, the output certificate) end the caller's own instance. An output
 * certificate may make this one change because it can only take access away, and only from the
 * instance that certificate belongs to: whoever holds it can already log in wherever the instance
 * may, so ending the instance is strictly less than what it grants, and is the right answer to a
 * leaked output dir too. Ending is idempotent: an instance already gone answers already_ended (and
 * writes nothing). The release that ends it is audited (agent_identity.release).
 */
import { create } from "@bufbuild/protobuf";
import { ReleaseResponseSchema, type ReleaseResponse } from "../api/gen/mezite/v1/renew_pb.js";
import type { CertKind } from "../ca/x509.js";
import { MeziteError } from "../lib/errors.js";
import type { AuthContext, Caller } from "./context.js";
import { keys, load, loadAll, type IdentityRecord, type InstanceRecord, type LockRecord } from "./records.js";
import { deleteLock } from "./locks.js";
import { tombstone } from "./revocations.js";

/**
 * Tombstones the instance, deletes it, and tombstones again (a renewal that committed in between:
 * see deleteAgentIdentity); its locks (a generation mismatch's, an admin's) go with it, as rm's
 * do. Returns how many unexpired certificates it held.
 */
export async function endInstance(ctx: AuthContext, inst: InstanceRecord): Promise<number> {
  const first = await tombstone(ctx, [inst]);
  await ctx.backend.delete(keys.instance(inst.identityId, inst.id));
  const second = await tombstone(ctx, [inst]);
  const locks = await loadAll<LockRecord>(ctx.backend, keys.locks);
  await Promise.all(locks.filter((l) => l.value.kind === "instance" && l.value.target === inst.id).map((l) => deleteLock(ctx.backend, l.value.id)));
  return Math.max(first, second);
}

/** The caller's own instance ends: `kind` is the certificate kind the called service admits. */
export async function releaseInstance(ctx: AuthContext, caller: Caller, kind: Extract<CertKind, "renewal" | "output">): Promise<ReleaseResponse> {
  const c = caller.cert;
  if (c?.kind !== kind || !c.identityId || !c.instanceId) {
    throw new MeziteError("ERR_NOT_AUTHORIZED", "release needs the instance's renewal certificate (its storage dir) or output certificate (x509_cert.pem)");
  }
  const name = c.subjectCommonName;
  const identity = await load<IdentityRecord>(ctx.backend, keys.identity(name));
  // A name reused by a new identity has another id: the old certificate is not its holder.
  const inst = identity && identity.value.id === c.identityId ? await load<InstanceRecord>(ctx.backend, keys.instance(c.identityId, c.instanceId)) : undefined;
  const base = { type: "agent_identity.release" as const, identity: name, instance: c.instanceId, remote_addr: caller.remoteAddr };
  const by = `by its ${kind} certificate`;
  if (!inst) {
    // Nothing changes, so nothing is written: a certificate that stays valid after its release
    // must not be able to fill the audit trail by asking again and again.
    ctx.log.info("agent identity instance already ended", { identity: name, instance: c.instanceId });
    return create(ReleaseResponseSchema, { alreadyEnded: true, identity: name, instanceId: c.instanceId });
  }
  const revoked = await endInstance(ctx, inst.value);
  await ctx.audit.emit({
    ...base,
    roles: identity!.value.roles,
    generation: inst.value.generation,
    serial: inst.value.serial,
    detail: `${revoked} certificate${revoked === 1 ? "" : "s"} revoked; ${by}`,
  });
  ctx.log.info("agent identity instance released", { identity: name, instance: inst.value.id, revoked });
  return create(ReleaseResponseSchema, { alreadyEnded: false, identity: name, instanceId: c.instanceId, revoked });
}

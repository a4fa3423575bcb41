/** Locks (SPEC §3) as the admin API manages them; what a lock applies to is in ../locks.ts. */
import { create } from "@bufbuild/protobuf";
import * as pb from "../../api/gen/mezite/v1/common_pb.js";
import { MeziteError, notFound } from "../../lib/errors.js";
import type { AdminCaller, AuthContext } from "../context.js";
import { activeLocks, createLock, deleteLock } from "../locks.js";
import { LOCK_KINDS, keys, loadAll, type LockKind, type LockRecord } from "../records.js";

export function lockToProto(l: LockRecord): pb.Lock {
  return create(pb.LockSchema, { id: l.id, targetKind: l.kind, target: l.target, reason: l.reason, created: BigInt(l.created), expires: BigInt(l.expires) });
}

export async function addLock(ctx: AuthContext, by: AdminCaller, kind: string, target: string, reason: string, ttlMs: number): Promise<pb.Lock> {
  if (!LOCK_KINDS.includes(kind as LockKind)) throw new MeziteError("ERR_USAGE", `unknown lock target "${kind}": use one of ${LOCK_KINDS.join(", ")}`);
  if (!target || target.length > 200) throw new MeziteError("ERR_USAGE", "a lock needs a target name");
  if (ttlMs < 0) throw new MeziteError("ERR_USAGE", "lock TTL must be positive");
  if (kind === "agent_identity" && !(await ctx.backend.get(keys.identity(target)))) throw notFound(`agent identity "${target}"`);
  const lock = await createLock(ctx.backend, kind as LockKind, target, reason.slice(0, 500), ttlMs, ctx.now());
  await ctx.audit.emit({
    type: "lock.create",
    ...by.audit,
    identity: kind === "agent_identity" ? target : "",
    instance: kind === "instance" ? target : "",
    detail: `${kind}=${target} ${reason}`.trim(),
  });
  return lockToProto(lock);
}

export async function listLocks(ctx: AuthContext): Promise<pb.Lock[]> {
  return (await activeLocks(ctx.backend, ctx.now())).map(lockToProto);
}

/** Removes a lock by id, or every lock on a target given as KIND:TARGET (what `unlock` uses). */
export async function removeLocks(ctx: AuthContext, by: AdminCaller, idOrTarget: string): Promise<number> {
  const locks = await loadAll<LockRecord>(ctx.backend, keys.locks);
  const sep = idOrTarget.indexOf(":");
  const hits = locks.filter((l) =>
    sep > 0 ? l.value.kind === idOrTarget.slice(0, sep) && l.value.target === idOrTarget.slice(sep + 1) : l.value.id === idOrTarget,
  );
  if (hits.length === 0) throw notFound(`lock ${idOrTarget}`);
  for (const h of hits) {
    await deleteLock(ctx.backend, h.value.id);
    await ctx.audit.emit({ type: "lock.delete", ...by.audit, identity: h.value.kind === "agent_identity" ? h.value.target : "", detail: `${h.value.kind}=${h.value.target}` });
  }
  return hits.length;
}

/** Locks (SPEC §3): what they target, and whether one applies to a join, renewal or certificate. */
import { randomUUID } from "node:crypto";
import type { Backend } from "../backend/backend.js";
import { MeziteError } from "../lib/errors.js";
import { encode, keys, loadAll, type LockKind, type LockRecord } from "./records.js";

export interface LockSubject {
  identityName: string;
  instanceId?: string;
  roles: string[];
  logins: string[];
}

export async function activeLocks(backend: Backend, now: number): Promise<LockRecord[]> {
  return (await loadAll<LockRecord>(backend, keys.locks)).map((l) => l.value).filter((l) => l.expires === 0 || l.expires > now);
}

export function locksOn(locks: LockRecord[], s: LockSubject): LockRecord[] {
  return locks.filter(
    (l) =>
      (l.kind === "agent_identity" && l.target === s.identityName) ||
      (l.kind === "instance" && l.target === s.instanceId) ||
      (l.kind === "role" && s.roles.includes(l.target)) ||
      (l.kind === "login" && s.logins.includes(l.target)),
  );
}

/**
 * A refusal by a lock. The caller hears that it is locked and what to do; the admin's reason is
 * for admins only (it may name an incident or a person): it goes to the audit event (auditDetail).
 */
export class LockedError extends MeziteError {
  constructor(readonly lock: LockRecord, identityName: string) {
    super("ERR_LOCKED", `agent identity "${identityName}" is locked (${lock.kind.replace("_", " ")} ${lock.target}); an admin must remove the lock (mezctl locks ls shows it and why)`);
  }
}

export function refuseIfLocked(locks: LockRecord[], s: LockSubject): void {
  const hit = locksOn(locks, s)[0];
  if (hit) throw new LockedError(hit, s.identityName);
}

/** For a refusal's audit event: which lock refused it and the admin's reason; "" for any other error. */
export function lockAuditDetail(e: unknown): string {
  return e instanceof LockedError ? `lock=${e.lock.id} ${e.lock.kind}=${e.lock.target} reason=${JSON.stringify(e.lock.reason)}` : "";
}

/** `id` may be fixed so that many racing callers locking one thing make one lock, not many. */
export async function createLock(backend: Backend, kind: LockKind, target: string, reason: string, ttlMs: number, now: number, id: string = randomUUID()): Promise<LockRecord> {
  const lock: LockRecord = { id, kind, target, reason, created: now, expires: ttlMs > 0 ? now + ttlMs : 0 };
  await backend.put(keys.lock(lock.id), encode(lock), lock.expires ? { expires: lock.expires } : {});
  await markRevocationsChanged(backend);
  return lock;
}

export async function deleteLock(backend: Backend, id: string): Promise<void> {
  await backend.delete(keys.lock(id));
  await markRevocationsChanged(backend);
}

/**
 * After (never before) a change the KRL is built from is written: a service that reads the mark
 * before it reads the rest either sees the change or sees the mark move on its next look.
 */
export async function markRevocationsChanged(backend: Backend): Promise<void> {
  await backend.put(keys.revocationsChanged, randomUUID());
}

/** The admin API's operations (SPEC §3): roles, agent identities, tokens, locks, nodes, audit. */
import { randomUUID } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import * as pb from "../api/gen/mezite/v1/common_pb.js";
import type { TokenVerifier } from "../api/gen/mezite/v1/admin_pb.js";
import { roleFromProto, roleToProto } from "../api/roles.js";
import { ed25519PublicFromRaw } from "../ca/sshkey.js";
import { MeziteError, isMeziteError } from "../lib/errors.js";
import { principalsFor, requirePrincipals } from "../rbac/access.js";
import { NAME_PATTERN } from "../rbac/role.js";
import type { AuditEvent } from "./audit.js";
import type { AuthContext } from "./context.js";
import { activeLocks, createLock, locksOn } from "./locks.js";
import {
  LOCK_KINDS,
  encode,
  keys,
  load,
  loadAll,
  loadChunks,
  tokenKeptUntil,
  type IdentityRecord,
  type InstanceRecord,
  type LockKind,
  type LockRecord,
  type NodeRecord,
  type StoredRole,
  type TokenRecord,
} from "./records.js";
import { tombstone } from "./revocations.js";
import { loadRoles } from "./roles.js";

const MAX_TOKEN_TTL_MS = 30 * 24 * 3_600_000;
const DEFAULT_TOKEN_TTL_MS = 3_600_000;

function notFound(what: string): MeziteError {
  return new MeziteError("ERR_NOT_FOUND", `${what} not found`);
}

// ---- roles

export async function createRole(ctx: AuthContext, m: pb.Role, force: boolean): Promise<{ role: pb.Role; replaced: boolean }> {
  const role = roleFromProto(m);
  const stored: StoredRole = { ...role, created: ctx.now() };
  let replaced = false;
  if (force) {
    replaced = (await ctx.backend.get(keys.role(role.role))) !== undefined;
    await ctx.backend.put(keys.role(role.role), encode(stored));
  } else {
    try {
      await ctx.backend.create(keys.role(role.role), encode(stored));
    } catch (e) {
      if (isMeziteError(e, "ERR_ALREADY_EXISTS")) throw new MeziteError("ERR_ALREADY_EXISTS", `role "${role.role}" already exists: use --force to overwrite it`);
      throw e;
    }
  }
  await ctx.audit.emit({ type: "role.create", detail: role.role + (replaced ? " (replaced)" : "") });
  return { role: roleToProto(role, stored.created), replaced };
}

export async function listRoles(ctx: AuthContext): Promise<pb.Role[]> {
  return (await loadAll<StoredRole>(ctx.backend, keys.roles)).map((r) => roleToProto(r.value, r.value.created));
}

export async function getRole(ctx: AuthContext, name: string): Promise<pb.Role> {
  const r = await load<StoredRole>(ctx.backend, keys.role(name));
  if (!r) throw notFound(`role "${name}"`);
  return roleToProto(r.value, r.value.created);
}

export async function deleteRole(ctx: AuthContext, name: string): Promise<void> {
  if (!(await ctx.backend.get(keys.role(name)))) throw notFound(`role "${name}"`);
  const users = (await loadAll<IdentityRecord>(ctx.backend, keys.identities)).filter((i) => i.value.roles.includes(name)).map((i) => i.value.name);
  if (users.length > 0) throw new MeziteError("ERR_IN_USE", `role "${name}" is used by agent identit${users.length > 1 ? "ies" : "y"} ${users.slice(0, 5).join(", ")}: remove ${users.length > 1 ? "them" : "it"} first`);
  await ctx.backend.delete(keys.role(name));
  await ctx.audit.emit({ type: "role.delete", detail: name });
}

// ---- tokens

function tokenRecord(ctx: AuthContext, v: TokenVerifier | undefined, fields: Pick<TokenRecord, "type"> & Partial<TokenRecord>): TokenRecord {
  if (!v || !/^[0-9a-f]{32}$/.test(v.tokenId) || v.macKey.length !== 32) throw new MeziteError("ERR_USAGE", "invalid request: token verifier missing or malformed");
  try {
    ed25519PublicFromRaw(v.verifyKey);
  } catch {
    throw new MeziteError("ERR_USAGE", "invalid request: token verify key is not an Ed25519 key");
  }
  const ttl = v.ttlMs === 0n ? DEFAULT_TOKEN_TTL_MS : Number(v.ttlMs);
  if (ttl < 60_000 || ttl > MAX_TOKEN_TTL_MS) throw new MeziteError("ERR_USAGE", "token TTL must be between 1m and 720h");
  const now = ctx.now();
  return {
    id: v.tokenId,
    verifyKey: Buffer.from(v.verifyKey).toString("base64"),
    macKey: Buffer.from(v.macKey).toString("base64"),
    created: now,
    expires: now + ttl,
    used: false,
    ...fields,
  };
}

async function storeToken(ctx: AuthContext, t: TokenRecord): Promise<pb.TokenInfo> {
  const kept = { expires: tokenKeptUntil(t) };
  // The index entry first: a crash in between leaves an entry pointing at nothing, which readers skip.
  if (t.identityId) await ctx.backend.put(keys.identityToken(t.identityId, t.id), "", kept);
  await ctx.backend.create(keys.token(t.id), encode(t), kept);
  await ctx.audit.emit({ type: "token.create", identity: t.identityName ?? "", detail: `type=${t.type} id=${t.id.slice(0, 8)}` });
  return tokenInfo(t);
}

function tokenInfo(t: TokenRecord): pb.TokenInfo {
  return create(pb.TokenInfoSchema, {
    id: t.id,
    type: t.type,
    agentIdentity: t.identityName ?? "",
    labels: t.labels ?? {},
    created: BigInt(t.created),
    expires: BigInt(t.expires),
    used: t.used,
  });
}

export async function addToken(ctx: AuthContext, type: string, identityName: string, labels: Record<string, string>, v: TokenVerifier | undefined): Promise<pb.TokenInfo> {
  if (type === "node") {
    for (const [k, val] of Object.entries(labels)) {
      if (!/^[A-Za-z0-9_.\/-]{1,63}$/.test(k) || !/^[A-Za-z0-9_.\/:-]{1,63}$/.test(val)) throw new MeziteError("ERR_USAGE", `invalid node label ${k}=${val}: use letters, digits and . _ - /`);
    }
    return storeToken(ctx, tokenRecord(ctx, v, { type: "node", labels }));
  }
  if (type !== "agent_identity") throw new MeziteError("ERR_USAGE", `unknown token type "${type}": use node or agent_identity`);
  const identity = await load<IdentityRecord>(ctx.backend, keys.identity(identityName));
  if (!identity) throw notFound(`agent identity "${identityName}"`);
  return storeToken(ctx, tokenRecord(ctx, v, { type: "agent_identity", identityId: identity.value.id, identityName }));
}

export async function listTokens(ctx: AuthContext): Promise<pb.TokenInfo[]> {
  return (await loadAll<TokenRecord>(ctx.backend, keys.tokens)).map((t) => tokenInfo(t.value));
}

export async function deleteToken(ctx: AuthContext, id: string): Promise<void> {
  const matches = (await loadAll<TokenRecord>(ctx.backend, keys.tokens)).filter((t) => id.length >= 8 && t.value.id.startsWith(id));
  if (matches.length === 0) throw notFound(`token ${id}`);
  if (matches.length > 1) throw new MeziteError("ERR_USAGE", `token prefix ${id} is ambiguous: give more characters`);
  const t = matches[0]!.value;
  await ctx.backend.delete(keys.token(t.id));
  if (t.identityId) await ctx.backend.delete(keys.identityToken(t.identityId, t.id));
  await ctx.audit.emit({ type: "token.delete", identity: t.identityName ?? "", detail: `id=${id.slice(0, 8)}` });
}

// ---- agent identities

export async function addAgentIdentity(ctx: AuthContext, name: string, roleNames: string[], v: TokenVerifier | undefined): Promise<{ identity: pb.AgentIdentityStatus; token: pb.TokenInfo }> {
  if (!NAME_PATTERN.test(name)) throw new MeziteError("ERR_USAGE", `invalid agent identity name "${name.slice(0, 70)}": use [a-z0-9][a-z0-9._-]{0,62}`);
  const unique = [...new Set(roleNames)];
  if (unique.length === 0) throw new MeziteError("ERR_USAGE", "an agent identity needs at least one role (--roles)");
  const roles = await loadRoles(ctx.backend, unique);
  requirePrincipals(roles);
  const record: IdentityRecord = { id: randomUUID(), name, roles: unique, created: ctx.now() };
  const token = tokenRecord(ctx, v, { type: "agent_identity", identityId: record.id, identityName: name });
  try {
    await ctx.backend.create(keys.identity(name), encode(record));
  } catch (e) {
    if (isMeziteError(e, "ERR_ALREADY_EXISTS")) throw new MeziteError("ERR_ALREADY_EXISTS", `agent identity "${name}" already exists: pick another name, or rm it first`);
    throw e;
  }
  await ctx.audit.emit({ type: "agent_identity.create", identity: name, roles: unique });
  const info = await storeToken(ctx, token);
  const status = statusOf(record, [], [token], [], roles, ctx.now());
  return { identity: status, token: info };
}

export function statusOf(
  identity: IdentityRecord,
  instances: InstanceRecord[],
  tokens: TokenRecord[],
  locks: LockRecord[],
  roles: StoredRole[],
  now: number,
  logins = principalsFor(roles),
): pb.AgentIdentityStatus {
  const identityLocks = locksOn(locks, { identityName: identity.name, roles: identity.roles, logins });
  const instanceLocked = (id: string) => locks.some((l) => l.kind === "instance" && l.target === id);
  const newestToken = tokens.sort((a, b) => b.created - a.created)[0];
  const tokenState = !newestToken ? "none" : newestToken.used ? "used" : newestToken.expires <= now ? "expired" : "unused";
  const byRecent = [...instances].sort((a, b) => b.lastSeen - a.lastSeen);
  const max = (f: (i: InstanceRecord) => bigint) => instances.reduce((m, i) => (f(i) > m ? f(i) : m), 0n);
  return create(pb.AgentIdentityStatusSchema, {
    name: identity.name,
    id: identity.id,
    roles: identity.roles,
    locked: identityLocks.length > 0,
    generation: max((i) => BigInt(i.generation)),
    lastSeen: max((i) => BigInt(i.lastSeen)),
    certExpires: max((i) => BigInt(i.certExpires)),
    created: BigInt(identity.created),
    tokenState,
    locks: [...identityLocks, ...locks.filter((l) => l.kind === "instance" && instances.some((i) => i.id === l.target))].map(lockToProto),
    lastAddress: byRecent[0]?.address ?? "",
    principals: logins,
    principalsError: logins.length === 0 ? "the roles allow no login after deny rules" : "",
    instances: byRecent.map((i) =>
      create(pb.InstanceSchema, {
        id: i.id,
        generation: BigInt(i.generation),
        locked: identityLocks.length > 0 || instanceLocked(i.id),
        lastSeen: BigInt(i.lastSeen),
        certExpires: BigInt(i.certExpires),
        address: i.address,
        created: BigInt(i.created),
      }),
    ),
  });
}

/** The ids of an identity's tokens, from the per-identity index. */
async function tokenIdsOf(ctx: AuthContext, identityId: string): Promise<string[]> {
  return (await ctx.backend.range(keys.identityTokens(identityId))).map((i) => i.key.slice(keys.identityTokens(identityId).length));
}

/** An identity's own tokens, through the per-identity index. */
async function tokensOf(ctx: AuthContext, identityId: string): Promise<TokenRecord[]> {
  const found = await Promise.all((await tokenIdsOf(ctx, identityId)).map((id) => load<TokenRecord>(ctx.backend, keys.token(id))));
  return found.filter((t) => t !== undefined).map((t) => t.value);
}

/** One identity's status: a handful of point reads and short ranges, whatever the fleet's size. */
export async function getAgentIdentity(ctx: AuthContext, name: string): Promise<pb.AgentIdentityStatus> {
  const found = await load<IdentityRecord>(ctx.backend, keys.identity(name));
  if (!found) throw notFound(`agent identity "${name}"`);
  const id = found.value;
  const now = ctx.now();
  const [instances, tokens, locks, roles] = await Promise.all([
    loadAll<InstanceRecord>(ctx.backend, keys.instancesOf(id.id)),
    tokensOf(ctx, id.id),
    activeLocks(ctx.backend, now),
    Promise.all(id.roles.map((r) => load<StoredRole>(ctx.backend, keys.role(r)))),
  ]);
  const present = roles.filter((r) => r !== undefined).map((r) => r.value); // as listAgentIdentities does
  return statusOf(id, instances.map((i) => i.value), tokens, locks, present, now);
}

const PAGE_DEFAULT = 500;
const PAGE_MAX = 1000;

/**
 * Every identity's status, in pages in name order. Instances and tokens are read in one pass
 * each first and grouped (three range scans in all, not queries per identity).
 */
export async function* listAgentIdentities(ctx: AuthContext, pageSize = 0): AsyncGenerator<pb.AgentIdentityStatus[]> {
  if (pageSize > PAGE_MAX) throw new MeziteError("ERR_USAGE", `page size ${pageSize} is too large: at most ${PAGE_MAX}`);
  const size = pageSize || PAGE_DEFAULT;
  const now = ctx.now();
  const [locks, roles] = await Promise.all([activeLocks(ctx.backend, now), loadAll<StoredRole>(ctx.backend, keys.roles)]);
  const instancesBy = new Map<string, InstanceRecord[]>();
  for await (const chunk of loadChunks<InstanceRecord>(ctx.backend, "/instances/")) {
    for (const i of chunk) {
      const list = instancesBy.get(i.identityId);
      if (list) list.push(i);
      else instancesBy.set(i.identityId, [i]);
    }
  }
  // Only the newest token of each identity counts for its status.
  const newestToken = new Map<string, TokenRecord>();
  for await (const chunk of loadChunks<TokenRecord>(ctx.backend, keys.tokens)) {
    for (const t of chunk) {
      if (t.identityId === undefined) continue;
      const seen = newestToken.get(t.identityId);
      if (!seen || t.created > seen.created) newestToken.set(t.identityId, t);
    }
  }
  const roleBy = new Map(roles.map((r) => [r.value.role, r.value]));
  // A fleet shares a few role sets: resolve each set's roles and logins once.
  const roleSets = new Map<string, { roles: StoredRole[]; logins: string[] }>();
  const roleSet = (names: string[]) => {
    const key = names.join("\n");
    let set = roleSets.get(key);
    if (!set) {
      const found = names.map((r) => roleBy.get(r)).filter((r) => r !== undefined);
      set = { roles: found, logins: principalsFor(found) };
      roleSets.set(key, set);
    }
    return set;
  };
  let page: pb.AgentIdentityStatus[] = [];
  for await (const chunk of loadChunks<IdentityRecord>(ctx.backend, keys.identities)) {
    for (const id of chunk) {
      const instances = instancesBy.get(id.id) ?? [];
      const token = newestToken.get(id.id);
      const set = roleSet(id.roles);
      page.push(statusOf(id, instances, token ? [token] : [], locks, set.roles, now, set.logins));
      if (page.length === size) {
        yield page;
        page = [];
      }
    }
  }
  if (page.length > 0) yield page;
}

export async function deleteAgentIdentity(ctx: AuthContext, name: string): Promise<void> {
  const found = await load<IdentityRecord>(ctx.backend, keys.identity(name));
  if (!found) throw notFound(`agent identity "${name}"`);
  const id = found.value.id;
  const instancesNow = async () => (await loadAll<InstanceRecord>(ctx.backend, keys.instancesOf(id))).map((i) => i.value);
  // Its certificates go into the KRL before the identity goes; deleting the identity record is
  // what takes effect at once (join and renew both check it). A join that raced past that check
  // has made its instance by the second look, or finds the identity gone itself (joinAgent).
  const before = await instancesNow();
  await tombstone(ctx, before);
  await ctx.backend.delete(keys.identity(name));
  const [tokenIds, instances, locks] = await Promise.all([tokenIdsOf(ctx, id), instancesNow(), loadAll<LockRecord>(ctx.backend, keys.locks)]);
  const instanceIds = new Set(instances.map((i) => i.id));
  await tombstone(ctx, instances.filter((i) => !before.some((b) => b.id === i.id)));
  await Promise.all([
    ...tokenIds.map(async (tokenId) => {
      await ctx.backend.delete(keys.token(tokenId));
      await ctx.backend.delete(keys.identityToken(id, tokenId));
    }),
    ...instances.map((i) => ctx.backend.delete(keys.instance(id, i.id))),
    ...locks
      .filter((l) => (l.value.kind === "agent_identity" && l.value.target === name) || (l.value.kind === "instance" && instanceIds.has(l.value.target)))
      .map((l) => ctx.backend.delete(keys.lock(l.value.id))),
  ]);
  await ctx.audit.emit({ type: "agent_identity.delete", identity: name, roles: found.value.roles });
}

export async function removeInstance(ctx: AuthContext, name: string, instanceId: string): Promise<void> {
  const found = await load<IdentityRecord>(ctx.backend, keys.identity(name));
  if (!found) throw notFound(`agent identity "${name}"`);
  const inst = await load<InstanceRecord>(ctx.backend, keys.instance(found.value.id, instanceId));
  if (!inst) throw notFound(`instance ${instanceId} of "${name}"`);
  await tombstone(ctx, [inst.value]);
  await ctx.backend.delete(keys.instance(found.value.id, instanceId));
  await ctx.audit.emit({ type: "agent_identity.instance_delete", identity: name, instance: instanceId });
}

// ---- locks

export function lockToProto(l: LockRecord): pb.Lock {
  return create(pb.LockSchema, { id: l.id, targetKind: l.kind, target: l.target, reason: l.reason, created: BigInt(l.created), expires: BigInt(l.expires) });
}

export async function addLock(ctx: AuthContext, kind: string, target: string, reason: string, ttlMs: number): Promise<pb.Lock> {
  if (!LOCK_KINDS.includes(kind as LockKind)) throw new MeziteError("ERR_USAGE", `unknown lock target "${kind}": use one of ${LOCK_KINDS.join(", ")}`);
  if (!target || target.length > 200) throw new MeziteError("ERR_USAGE", "a lock needs a target name");
  if (ttlMs < 0) throw new MeziteError("ERR_USAGE", "lock TTL must be positive");
  if (kind === "agent_identity" && !(await ctx.backend.get(keys.identity(target)))) throw notFound(`agent identity "${target}"`);
  const lock = await createLock(ctx.backend, kind as LockKind, target, reason.slice(0, 500), ttlMs, ctx.now());
  await ctx.audit.emit({ type: "lock.create", identity: kind === "agent_identity" ? target : "", instance: kind === "instance" ? target : "", detail: `${kind}=${target} ${reason}`.trim() });
  return lockToProto(lock);
}

export async function listLocks(ctx: AuthContext): Promise<pb.Lock[]> {
  return (await activeLocks(ctx.backend, ctx.now())).map(lockToProto);
}

/** Removes a lock by id, or every lock on a target given as KIND:TARGET (what `unlock` uses). */
export async function removeLocks(ctx: AuthContext, idOrTarget: string): Promise<number> {
  const locks = await loadAll<LockRecord>(ctx.backend, keys.locks);
  const sep = idOrTarget.indexOf(":");
  const hits = locks.filter((l) =>
    sep > 0 ? l.value.kind === idOrTarget.slice(0, sep) && l.value.target === idOrTarget.slice(sep + 1) : l.value.id === idOrTarget,
  );
  if (hits.length === 0) throw notFound(`lock ${idOrTarget}`);
  for (const h of hits) {
    await ctx.backend.delete(keys.lock(h.value.id));
    await ctx.audit.emit({ type: "lock.delete", identity: h.value.kind === "agent_identity" ? h.value.target : "", detail: `${h.value.kind}=${h.value.target}` });
  }
  return hits.length;
}

// ---- nodes and audit

export async function listNodes(ctx: AuthContext): Promise<pb.Node[]> {
  return (await loadAll<NodeRecord>(ctx.backend, keys.nodes)).map(({ value: n }) =>
    create(pb.NodeSchema, {
      name: n.name,
      labels: n.labels,
      address: n.address,
      lastHeartbeat: BigInt(n.lastHeartbeat),
      hostCertExpires: BigInt(n.hostCertExpires),
      principals: n.principals,
    }),
  );
}

export function auditToProto(e: AuditEvent): pb.AuditEvent {
  return create(pb.AuditEventSchema, {
    time: BigInt(e.time),
    type: e.type,
    identity: e.identity,
    instance: e.instance,
    roles: e.roles,
    generation: e.generation ? BigInt(e.generation) : 0n,
    remoteAddr: e.remote_addr,
    serial: e.serial,
    success: e.success,
    error: e.error,
    detail: e.detail,
  });
}

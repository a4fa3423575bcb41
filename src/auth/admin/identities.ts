/**
 * Agent identities (SPEC §3): add, status, list, delete, and ending one instance. Deleting revokes
 * at once: certificates go into the KRL (revocations.ts) before the records go.
 */
import { randomUUID } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import type { TokenVerifier } from "../../api/gen/mezite/v1/admin_pb.js";
import * as pb from "../../api/gen/mezite/v1/common_pb.js";
import { MeziteError, isMeziteError, notFound } from "../../lib/errors.js";
import { principalsFor, requirePrincipals } from "../../rbac/access.js";
import { certificateOptions } from "../../rbac/options.js";
import { NAME_PATTERN } from "../../rbac/names.js";
import { hasLoginTemplates } from "../../rbac/template.js";
import type { AdminCaller, AuthContext } from "../context.js";
import { isStale } from "../renew.js";
import { instancePrincipals } from "../issue.js";
import { activeLocks, locksOn } from "../locks.js";
import { encode, keys, load, loadAll, loadChunks, type IdentityRecord, type InstanceRecord, type LockRecord, type StoredRole, type TokenRecord } from "../records.js";
import { endInstance } from "../release.js";
import { tombstone } from "../revocations.js";
import { loadRoles } from "../roles.js";
import { newTokenRecord, storeToken, tokenIdsOf, tokensOf } from "../tokens.js";
import { lockToProto } from "./locks.js";

export async function addAgentIdentity(ctx: AuthContext, by: AdminCaller, name: string, roleNames: string[], v: TokenVerifier | undefined): Promise<{ identity: pb.AgentIdentityStatus; token: pb.TokenInfo }> {
  if (!NAME_PATTERN.test(name)) throw new MeziteError("ERR_USAGE", `invalid agent identity name "${name.slice(0, 70)}": use [a-z0-9][a-z0-9._-]{0,62}`);
  const unique = [...new Set(roleNames)];
  if (unique.length === 0) throw new MeziteError("ERR_USAGE", "an agent identity needs at least one role (--roles)");
  const roles = await loadRoles(ctx.backend, unique);
  requirePrincipals(roles);
  certificateOptions(roles); // roles whose options cannot combine would never get a certificate
  const record: IdentityRecord = { id: randomUUID(), name, roles: unique, created: ctx.now() };
  const token = newTokenRecord(ctx, v, { type: "agent_identity", identityId: record.id, identityName: name });
  try {
    await ctx.backend.create(keys.identity(name), encode(record));
  } catch (e) {
    if (isMeziteError(e, "ERR_ALREADY_EXISTS")) throw new MeziteError("ERR_ALREADY_EXISTS", `agent identity "${name}" already exists: pick another name, or rm it first`);
    throw e;
  }
  await ctx.audit.emit({ type: "agent_identity.create", ...by.audit, identity: name, roles: unique });
  const info = await storeToken(ctx, token, by.audit.actor);
  const status = statusOf(record, [], [token], [], roles, ctx.now(), () => false);
  return { identity: status, token: info };
}

export function statusOf(
  identity: IdentityRecord,
  instances: InstanceRecord[],
  tokens: TokenRecord[],
  locks: LockRecord[],
  roles: StoredRole[],
  now: number,
  /** renew.ts isStale: certificates of a retired User CA key. */
  stale: (i: InstanceRecord) => boolean,
  logins = principalsFor(roles),
): pb.AgentIdentityStatus {
  const identityLocks = locksOn(locks, { identityName: identity.name, roles: identity.roles, logins });
  const instanceLocked = (id: string, principals: string[]) => locks.some((l) => (l.kind === "instance" && l.target === id) || (l.kind === "login" && principals.includes(l.target)));
  // Each instance's own logins: its roles' templates resolved from its join's claims.
  const templated = hasLoginTemplates(roles);
  const principalsOf = (i: InstanceRecord) => (templated ? instancePrincipals(roles, i.claims) : logins);
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
    instances: byRecent.map((i) => {
      const principals = principalsOf(i);
      return create(pb.InstanceSchema, {
        id: i.id,
        generation: BigInt(i.generation),
        locked: identityLocks.length > 0 || instanceLocked(i.id, principals),
        lastSeen: BigInt(i.lastSeen),
        certExpires: BigInt(i.certExpires),
        address: i.address,
        created: BigInt(i.created),
        joinMethod: i.joinMethod ?? "token",
        claims: i.claims ?? {},
        ...(i.host ? { host: create(pb.HostFactsSchema, i.host) } : {}),
        stale: stale(i),
        principals,
      });
    }),
  });
}

/** `agent-identities add-token`: another one-time token for an existing identity (a new instance). */
export async function addIdentityToken(ctx: AuthContext, by: AdminCaller, identityName: string, v: TokenVerifier | undefined): Promise<pb.TokenInfo> {
  const identity = await load<IdentityRecord>(ctx.backend, keys.identity(identityName));
  if (!identity) throw notFound(`agent identity "${identityName}"`);
  return storeToken(ctx, newTokenRecord(ctx, v, { type: "agent_identity", identityId: identity.value.id, identityName }), by.audit.actor);
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
  return statusOf(id, instances.map((i) => i.value), tokens, locks, present, now, (i) => isStale(ctx, i));
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
  for await (const chunk of loadChunks<InstanceRecord>(ctx.backend, keys.instances)) {
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
      page.push(statusOf(id, instances, token ? [token] : [], locks, set.roles, now, (i) => isStale(ctx, i), set.logins));
      if (page.length === size) {
        yield page;
        page = [];
      }
    }
  }
  if (page.length > 0) yield page;
}

export async function deleteAgentIdentity(ctx: AuthContext, by: AdminCaller, name: string): Promise<void> {
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
  // A renewal that committed before its instance was deleted is seen by this look (one after
  // cannot commit: its compare-and-swap on the instance fails).
  await tombstone(ctx, instances);
  await ctx.audit.emit({ type: "agent_identity.delete", ...by.audit, identity: name, roles: found.value.roles });
}

export async function removeInstance(ctx: AuthContext, by: AdminCaller, name: string, instanceId: string): Promise<void> {
  const found = await load<IdentityRecord>(ctx.backend, keys.identity(name));
  if (!found) throw notFound(`agent identity "${name}"`);
  const inst = await load<InstanceRecord>(ctx.backend, keys.instance(found.value.id, instanceId));
  if (!inst) throw notFound(`instance ${instanceId} of "${name}"`);
  await endInstance(ctx, inst.value);
  await ctx.audit.emit({ type: "agent_identity.instance_delete", ...by.audit, identity: name, instance: instanceId });
}

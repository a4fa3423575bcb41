/**
 * Agent identities (SPEC §3): add, status, list, delete, and ending one instance. Deleting revokes
 * at once: certificates go into the KRL (revocations.ts) before the records go.
 */
import { randomUUID } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import type { BriefStatus } from "../../api/brief-page.js";
import type { TokenVerifier } from "../../api/gen/mezite/v1/admin_pb.js";
import * as pb from "../../api/gen/mezite/v1/common_pb.js";
import { MeziteError, isMeziteError, notFound } from "../../lib/errors.js";
import { principalsFor, requirePrincipals } from "../../rbac/access.js";
import { certificateOptions } from "../../rbac/options.js";
import { NAME_PATTERN } from "../../rbac/names.js";
import { hasLoginTemplates } from "../../rbac/template.js";
import type { AdminCaller, AuthContext } from "../context.js";
import { isStale } from "../renew.js";
import { instanceAccess } from "../issue.js";
import { activeLocks, deleteLock, locksOn } from "../locks.js";
import { encode, keys, load, loadAll, loadChunks, loadFieldChunks, type IdentityRecord, type InstanceRecord, type LockRecord, type StoredRole, type TokenRecord } from "../records.js";
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
  const { summary, identityLocks, tokenState, byRecent, each } = summarize(identity, instances, tokens, locks, roles, now, logins);
  return create(pb.AgentIdentityStatusSchema, {
    ...summary,
    id: identity.id,
    created: BigInt(identity.created),
    tokenState,
    locks: [...identityLocks, ...locks.filter((l) => l.kind === "instance" && instances.some((i) => i.id === l.target))].map(lockToProto),
    lastAddress: byRecent[0]?.address ?? "",
    principals: logins,
    principalsError: logins.length === 0 ? "the roles allow no login after deny rules" : "",
    instances: each.map(({ i, principals, locked }) =>
      create(pb.InstanceSchema, {
        id: i.id,
        generation: BigInt(i.generation),
        locked,
        lastSeen: BigInt(i.lastSeen),
        certExpires: BigInt(i.certExpires),
        address: i.address,
        created: BigInt(i.created),
        joinMethod: i.joinMethod ?? "token",
        claims: i.claims ?? {},
        ...(i.host ? { host: create(pb.HostFactsSchema, i.host) } : {}),
        stale: stale(i),
        principals,
      }),
    ),
  });
}

/** Only what a listing's table shows (ListAgentIdentitiesRequest.brief): statusOf's summary, not a message. */
export function briefStatusOf(identity: IdentityRecord, instances: InstanceRecord[], tokens: TokenRecord[], locks: LockRecord[], roles: StoredRole[], now: number, logins: string[]): BriefStatus {
  return summarize(identity, instances, tokens, locks, roles, now, logins).summary;
}

function summarize(identity: IdentityRecord, instances: InstanceRecord[], tokens: TokenRecord[], locks: LockRecord[], roles: StoredRole[], now: number, logins: string[]) {
  const identityLocks = locksOn(locks, { identityName: identity.name, roles: identity.roles, logins });
  const instanceLocked = (id: string, principals: string[]) => locks.some((l) => (l.kind === "instance" && l.target === id) || (l.kind === "login" && principals.includes(l.target)));
  // Each instance's own logins: its roles' templates resolved from its join's claims.
  const templated = hasLoginTemplates(roles);
  const principalsOf = (i: InstanceRecord) => (templated ? instanceAccess(roles, i.claims).principals : logins);
  const newestToken = tokens.sort((a, b) => b.created - a.created)[0];
  const tokenState = !newestToken ? "none" : newestToken.used ? "used" : newestToken.expires <= now ? "expired" : "unused";
  const byRecent = [...instances].sort((a, b) => b.lastSeen - a.lastSeen);
  const each = byRecent.map((i) => {
    const principals = principalsOf(i);
    return { i, principals, locked: identityLocks.length > 0 || instanceLocked(i.id, principals) };
  });
  const state =
    identityLocks.length > 0 || (each.length > 0 && each.every((e) => e.locked)) ? "locked" : each.length > 0 ? "active" : tokenState === "unused" ? "awaiting join" : "no instance";
  const max = (f: (i: InstanceRecord) => bigint) => instances.reduce((m, i) => (f(i) > m ? f(i) : m), 0n);
  const summary: BriefStatus = {
    name: identity.name,
    roles: identity.roles,
    locked: identityLocks.length > 0,
    state,
    generation: max((i) => BigInt(i.generation)),
    lastSeen: max((i) => BigInt(i.lastSeen)),
    certExpires: max((i) => BigInt(i.certExpires)),
  };
  return { summary, identityLocks, tokenState, byRecent, each };
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
  return readStatus(ctx, await statusMaker(ctx), found.value);
}

type StatusMaker<S> = (id: IdentityRecord, instances: InstanceRecord[], tokens: TokenRecord[]) => S;

/** statusOf with the cluster's locks and roles read once, for any number of identities. */
export async function statusMaker(ctx: AuthContext): Promise<StatusMaker<pb.AgentIdentityStatus>> {
  const { now, locks, roleSet } = await clusterState(ctx);
  return (id, instances, tokens) => {
    const set = roleSet(id.roles);
    return statusOf(id, instances, tokens, locks, set.roles, now, (i) => isStale(ctx, i), set.logins);
  };
}

async function briefStatusMaker(ctx: AuthContext): Promise<StatusMaker<BriefStatus>> {
  const { now, locks, roleSet } = await clusterState(ctx);
  return (id, instances, tokens) => {
    const set = roleSet(id.roles);
    return briefStatusOf(id, instances, tokens, locks, set.roles, now, set.logins);
  };
}

async function clusterState(ctx: AuthContext) {
  const now = ctx.now();
  const [locks, roles] = await Promise.all([activeLocks(ctx.backend, now), loadAll<StoredRole>(ctx.backend, keys.roles)]);
  return { now, locks, roleSet: roleSets(roles.map((r) => r.value)) };
}

/** One identity's status from its own instances and tokens (two short range reads). */
export async function readStatus<S>(ctx: AuthContext, status: StatusMaker<S>, id: IdentityRecord): Promise<S> {
  const [instances, tokens] = await Promise.all([loadAll<InstanceRecord>(ctx.backend, keys.instancesOf(id.id)), tokensOf(ctx, id.id)]);
  return status(id, instances.map((i) => i.value), tokens);
}

const PAGE_DEFAULT = 500;
const PAGE_MAX = 1000;

export interface IdentityListing {
  /** Identities per page: 0 for the default (500), at most 1000. */
  pageSize?: number;
  namePrefix?: string;
  /** Only identities that have this role. */
  role?: string;
  /** At most this many, the first in name order; 0 for all. */
  limit?: number;
}

/** Identities' whole statuses in pages in name order (see listStatuses). */
export async function* listAgentIdentities(ctx: AuthContext, q: IdentityListing = {}): AsyncGenerator<pb.AgentIdentityStatus[]> {
  yield* listStatuses(ctx, q, await statusMaker(ctx), false);
}

/** Identities' brief statuses (ListAgentIdentitiesRequest.brief) in pages in name order. */
export async function* listBriefStatuses(ctx: AuthContext, q: IdentityListing = {}): AsyncGenerator<BriefStatus[]> {
  yield* listStatuses(ctx, q, await briefStatusMaker(ctx), true);
}

/**
 * Identities' statuses in pages in name order; the first page never waits for the whole set
 * (SPEC §20). The first page reads its identities' instances and tokens one identity at a time,
 * a few milliseconds at any fleet size; when more pages follow, the rest is joined from one pass
 * over all instances and one over all tokens, which at 100,000 identities takes about half the
 * time of two reads per identity.
 */
async function* listStatuses<S>(ctx: AuthContext, q: IdentityListing, status: StatusMaker<S>, brief: boolean): AsyncGenerator<S[]> {
  const size = q.pageSize || PAGE_DEFAULT;
  if (size > PAGE_MAX) throw new MeziteError("ERR_USAGE", `page size ${size} is too large: at most ${PAGE_MAX}`);
  const prefix = q.namePrefix ?? "";
  if (!NAME_PREFIX.test(prefix)) throw new MeziteError("ERR_USAGE", `"${prefix.slice(0, 70)}" cannot begin an agent identity name: use [a-z0-9._-]`);
  const limit = q.limit || Infinity;
  const chunks = matchingIdentities(ctx, keys.identities + prefix, q.role);

  const firstSize = Math.min(size, limit);
  const read: IdentityRecord[] = [];
  for (let r; read.length < firstSize && !(r = await chunks.next()).done; ) read.push(...r.value);
  const first = read.splice(0, firstSize);
  if (first.length === 0) return;
  yield await Promise.all(first.map((id) => readStatus(ctx, status, id)));
  let sent = first.length;
  if (sent < size || sent >= limit) return;

  const instancesBy = await allInstances(ctx, brief);
  // A brief status reads tokens only to tell "awaiting join" from "no instance".
  const newestToken = brief ? undefined : await newestTokens(ctx);
  let page: S[] = [];
  const rest = async function* () {
    yield read;
    yield* chunks;
  };
  for await (const chunk of rest()) {
    for (const id of chunk.slice(0, limit - sent)) {
      const instances = instancesBy.get(id.id) ?? [];
      const token = newestToken?.get(id.id);
      page.push(status(id, instances, newestToken ? (token ? [token] : []) : instances.length ? [] : await tokensOf(ctx, id.id)));
      if (page.length === size) {
        yield page;
        page = [];
      }
    }
    sent += Math.min(chunk.length, limit - sent);
    if (sent === limit) break;
  }
  if (page.length > 0) yield page;
}

/** What may begin an identity name (a listing's prefix, the dashboard's search). */
export const NAME_PREFIX = /^[a-z0-9._-]{0,63}$/;

/** Identities under a name prefix with a role (any, if none), a backend chunk at a time. */
async function* matchingIdentities(ctx: AuthContext, prefix: string, role: string | undefined): AsyncGenerator<IdentityRecord[]> {
  for await (const chunk of loadChunks<IdentityRecord>(ctx.backend, prefix)) yield role ? chunk.filter((id) => id.roles.includes(role)) : chunk;
}

/** Every instance, grouped by identity (brief: only what a brief status reads). */
async function allInstances(ctx: AuthContext, brief: boolean): Promise<Map<string, InstanceRecord[]>> {
  const instancesBy = new Map<string, InstanceRecord[]>();
  const chunks = brief ? loadFieldChunks(ctx.backend, keys.instances, BRIEF_FIELDS, briefInstance) : loadChunks<InstanceRecord>(ctx.backend, keys.instances);
  for await (const chunk of chunks) {
    for (const i of chunk) {
      const list = instancesBy.get(i.identityId);
      if (list) list.push(i);
      else instancesBy.set(i.identityId, [i]);
    }
  }
  return instancesBy;
}

/**
 * What a brief status reads of an instance; the rest is left blank. The database picks these out
 * of each ~660-byte record: at 100,000 instances, parsing whole records and the garbage they leave
 * were a fifth of the listing.
 */
const BRIEF_FIELDS = ["id", "identityId", "generation", "lastSeen", "certExpires", "claims"];

function briefInstance([id, identityId, generation, lastSeen, certExpires, claims]: unknown[]): InstanceRecord {
  return { id, identityId, generation, lastSeen, certExpires, ...(claims ? { claims } : {}), identityName: "", created: 0, address: "", serial: "" } as InstanceRecord;
}

/** Each identity's newest token: the only one its status shows. */
async function newestTokens(ctx: AuthContext): Promise<Map<string, TokenRecord>> {
  const newest = new Map<string, TokenRecord>();
  for await (const chunk of loadChunks<TokenRecord>(ctx.backend, keys.tokens)) {
    for (const t of chunk) {
      if (t.identityId === undefined) continue;
      const seen = newest.get(t.identityId);
      if (!seen || t.created > seen.created) newest.set(t.identityId, t);
    }
  }
  return newest;
}

/** A fleet shares a few role sets: each set's roles and logins are resolved once. */
function roleSets(roles: StoredRole[]): (names: string[]) => { roles: StoredRole[]; logins: string[] } {
  const roleBy = new Map(roles.map((r) => [r.role, r]));
  const sets = new Map<string, { roles: StoredRole[]; logins: string[] }>();
  return (names) => {
    const key = names.join("\n");
    let set = sets.get(key);
    if (!set) {
      const found = names.map((r) => roleBy.get(r)).filter((r) => r !== undefined);
      set = { roles: found, logins: principalsFor(found) };
      sets.set(key, set);
    }
    return set;
  };
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
      .map((l) => deleteLock(ctx.backend, l.value.id)),
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

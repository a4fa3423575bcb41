/**
 * AgentService (proto/mezite/v1/agent.proto): read-only calls made with an agent identity's
 * output certificate, for `msh ls`. server.ts admits only that kind from the User CA; this module
 * checks again (it is the boundary that decides what an output certificate may read), then
 * answers from the identity's own record alone: no parameter names another identity.
 */
import { create } from "@bufbuild/protobuf";
import { isIP } from "node:net";
import { AccessibleNodeSchema, ListAccessibleNodesResponseSchema, type AccessibleNode, type ListAccessibleNodesResponse } from "../api/gen/mezite/v1/agent_pb.js";
import type { ParsedCert } from "../ca/x509.js";
import { isDnsName } from "../lib/address.js";
import { MeziteError } from "../lib/errors.js";
import { RateLimiter } from "../lib/rate-limit.js";
import { canLogin, principalsFor, type RoleAccess } from "../rbac/access.js";
import { resolveRoles } from "../rbac/template.js";
import type { AuthContext, Caller } from "./context.js";
import { activeLocks, refuseIfLocked } from "./locks.js";
import { decode, keys, load, type IdentityRecord, type InstanceRecord, type NodeRecord, type StoredRole } from "./records.js";

function notAuthorized(): MeziteError {
  return new MeziteError("ERR_NOT_AUTHORIZED", "this call needs an agent identity's output certificate (x509_cert.pem of its destination dir)");
}

/** The RFC 2253-ish issuer text ParsedCert carries, for each trusted User CA key's subject (two during a rotation). */
const subjectsOf = new WeakMap<object, string[]>();
function userCaSubjects(ctx: AuthContext): string[] {
  let s = subjectsOf.get(ctx.cas.user);
  if (s === undefined) {
    s = ctx.cas.user.trusted.map((k) => k.x509Cert.subject.split("\n").join(", "));
    subjectsOf.set(ctx.cas.user, s);
  }
  return s;
}

/** The caller's certificate, when it is an output certificate of the User CA naming an identity and instance. */
export function outputCert(ctx: AuthContext, caller: Caller): ParsedCert & { identityId: string; instanceId: string } {
  const c = caller.cert;
  if (!c || c.kind !== "output" || !c.identityId || !c.instanceId || !userCaSubjects(ctx).includes(c.issuer)) throw notAuthorized();
  return c as ParsedCert & { identityId: string; instanceId: string };
}

/** A page holds at most this many nodes (DEFAULT_PAGE_SIZE when the caller says 0). */
export const DEFAULT_PAGE_SIZE = 500;
export const MAX_PAGE_SIZE = 1000;
/** Nodes read per call at most, matched or not: a call costs the same whatever the fleet's size. */
export const MAX_NODES_READ = 5000;
const READ_CHUNK = 1000;
/** Per identity: a burst of 10 calls, then 5 a second (a listing of a large fleet is a few pages). */
export const LIST_RATE = { perSecond: 5, burst: 10 };

const limiters = new WeakMap<AuthContext, RateLimiter>();
function limiterOf(ctx: AuthContext): RateLimiter {
  let l = limiters.get(ctx);
  if (l === undefined) limiters.set(ctx, (l = new RateLimiter(LIST_RATE)));
  return l;
}

/** The page token is the name of the last node the previous page read. */
function pageStart(token: string): string | undefined {
  if (token === "") return undefined;
  if (isIP(token) === 0 && !isDnsName(token)) throw new MeziteError("ERR_USAGE", "invalid request: page_token is not one this call returned");
  return keys.node(token);
}

export async function listAccessibleNodes(ctx: AuthContext, caller: Caller, req: { pageSize: number; pageToken: string }): Promise<ListAccessibleNodesResponse> {
  const cert = outputCert(ctx, caller);
  const name = cert.subjectCommonName;
  if (!limiterOf(ctx).take(cert.identityId)) {
    throw new MeziteError("ERR_RATE_LIMITED", `too many node listings for agent identity "${name}": at most ${LIST_RATE.perSecond} a second; retry in a second`);
  }
  if (req.pageSize < 0 || req.pageSize > MAX_PAGE_SIZE) throw new MeziteError("ERR_USAGE", `invalid request: page_size must be between 0 (the default, ${DEFAULT_PAGE_SIZE}) and ${MAX_PAGE_SIZE}`);
  const pageSize = req.pageSize || DEFAULT_PAGE_SIZE;
  let after = pageStart(req.pageToken);
  const [identity, instance, locks] = await Promise.all([
    load<IdentityRecord>(ctx.backend, keys.identity(name)),
    load<InstanceRecord>(ctx.backend, keys.instance(cert.identityId, cert.instanceId)),
    activeLocks(ctx.backend, ctx.now()),
  ]);
  // A name reused by a new identity has another id: the old certificate is not its holder.
  if (!identity || identity.value.id !== cert.identityId || !instance) {
    throw new MeziteError("ERR_IDENTITY_DELETED", `agent identity "${name}" (or this instance of it) was deleted`);
  }
  const roleNames = identity.value.roles;
  // A role deleted since grants nothing; the others still count.
  const stored: RoleAccess[] = (await Promise.all(roleNames.map((r) => load<StoredRole>(ctx.backend, keys.role(r))))).flatMap((r) => (r ? [r.value] : []));
  // As this instance's certificates apply them: templates resolved from its join's claims.
  const roles = resolveRoles(stored, instance.value.claims);
  const logins = principalsFor(roles);
  // An identity, instance or role lock refuses the call, as it would refuse a renewal.
  refuseIfLocked(locks, { identityName: name, instanceId: cert.instanceId, roles: roleNames, logins: [] });
  const lockedLogins = new Set(locks.filter((l) => l.kind === "login").map((l) => l.target));
  const usable = logins.filter((l) => !lockedLogins.has(l));

  // In key (node name) order from the page token on, until the page is full or MAX_NODES_READ were read.
  const nodes: AccessibleNode[] = [];
  let next = "";
  for (let read = 0; usable.length > 0; ) {
    const limit = Math.min(READ_CHUNK, MAX_NODES_READ - read);
    const items = await ctx.backend.range(keys.nodes, after !== undefined ? { limit, startAfter: after } : { limit });
    for (const item of items) {
      read++;
      const n = decode<NodeRecord>(item);
      const l = usable.filter((x) => canLogin(roles, x, n.labels));
      if (l.length > 0) nodes.push(create(AccessibleNodeSchema, { name: n.name, labels: n.labels, address: n.address, logins: l, lastHeartbeat: BigInt(n.lastHeartbeat) }));
      if (nodes.length === pageSize || read === MAX_NODES_READ) {
        // More may follow: the next page starts after this node (an empty last page is possible).
        next = n.name;
        break;
      }
    }
    if (next !== "" || items.length < limit) break;
    after = items[items.length - 1]!.key;
  }
  return create(ListAccessibleNodesResponseSchema, { identity: name, roles: roleNames, nodes, nextPageToken: next });
}

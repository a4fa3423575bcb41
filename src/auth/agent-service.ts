/**
 * AgentService (proto/mezite/v1/agent.proto): read-only calls made with an agent identity's
 * output certificate, for `msh ls`. server.ts admits only that kind from the User CA; this module
 * checks again (it is the boundary that decides what an output certificate may read), then
 * answers from the identity's own record alone: no parameter names another identity.
 */
import { create } from "@bufbuild/protobuf";
import { AccessibleNodeSchema, ListAccessibleNodesResponseSchema, type ListAccessibleNodesResponse } from "../api/gen/mezite/v1/agent_pb.js";
import type { ParsedCert } from "../ca/x509.js";
import { MeziteError } from "../lib/errors.js";
import { canLogin, principalsFor, type RoleAccess } from "../rbac/access.js";
import type { AuthContext, Caller } from "./context.js";
import { activeLocks, refuseIfLocked } from "./locks.js";
import { keys, load, loadAll, type IdentityRecord, type InstanceRecord, type NodeRecord, type StoredRole } from "./records.js";

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

export async function listAccessibleNodes(ctx: AuthContext, caller: Caller): Promise<ListAccessibleNodesResponse> {
  const cert = outputCert(ctx, caller);
  const name = cert.subjectCommonName;
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
  const roles: RoleAccess[] = (await Promise.all(roleNames.map((r) => load<StoredRole>(ctx.backend, keys.role(r))))).flatMap((r) => (r ? [r.value] : []));
  const logins = principalsFor(roles);
  // An identity, instance or role lock refuses the call, as it would refuse a renewal.
  refuseIfLocked(locks, { identityName: name, instanceId: cert.instanceId, roles: roleNames, logins: [] });
  const lockedLogins = new Set(locks.filter((l) => l.kind === "login").map((l) => l.target));
  const usable = logins.filter((l) => !lockedLogins.has(l));

  const nodes = (await loadAll<NodeRecord>(ctx.backend, keys.nodes))
    .map(({ value: n }) => ({ n, logins: usable.filter((l) => canLogin(roles, l, n.labels)) }))
    .filter((x) => x.logins.length > 0)
    .sort((a, b) => a.n.name.localeCompare(b.n.name))
    .map(({ n, logins: l }) => create(AccessibleNodeSchema, { name: n.name, labels: n.labels, address: n.address, logins: l, lastHeartbeat: BigInt(n.lastHeartbeat) }));
  return create(ListAccessibleNodesResponseSchema, { identity: name, roles: roleNames, nodes });
}

/** Roles (SPEC §3): create, list, get and delete; a role in use by an identity stays. */
import * as pb from "../../api/gen/mezite/v1/common_pb.js";
import { roleFromProto, roleToProto } from "../../api/roles.js";
import { MeziteError, notFound } from "../../lib/errors.js";
import { templateClaims } from "../../rbac/template.js";
import type { AdminCaller, AuthContext } from "../context.js";
import { RECORDED_CLAIMS } from "../join-methods.js";
import { createResource, keys, load, loadAll, type IdentityRecord, type StoredRole } from "../records.js";

export async function createRole(ctx: AuthContext, by: AdminCaller, m: pb.Role, force: boolean): Promise<{ role: pb.Role; replaced: boolean }> {
  const role = roleFromProto(m);
  // A template naming a claim no join records would never yield anything: refuse it while the admin is looking.
  const known = new Set(Object.values(RECORDED_CLAIMS).flat());
  const unknown = templateClaims(role).filter((c) => !known.has(c));
  if (unknown.length > 0) {
    throw new MeziteError("ERR_BAD_ROLE", `role "${role.role}": {{claims.${unknown[0]}}} names a claim no join records (known: ${[...known].sort().join(", ")})`);
  }
  const stored: StoredRole = { ...role, created: ctx.now() };
  const replaced = await createResource(ctx.backend, keys.role(role.role), stored, force, () => new MeziteError("ERR_ALREADY_EXISTS", `role "${role.role}" already exists: use --force to overwrite it`));
  await ctx.audit.emit({ type: "role.create", ...by.audit, detail: role.role + (replaced ? " (replaced)" : "") });
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

export async function deleteRole(ctx: AuthContext, by: AdminCaller, name: string): Promise<void> {
  if (!(await ctx.backend.get(keys.role(name)))) throw notFound(`role "${name}"`);
  const users = (await loadAll<IdentityRecord>(ctx.backend, keys.identities)).filter((i) => i.value.roles.includes(name)).map((i) => i.value.name);
  if (users.length > 0) throw new MeziteError("ERR_IN_USE", `role "${name}" is used by agent identit${users.length > 1 ? "ies" : "y"} ${users.slice(0, 5).join(", ")}: remove ${users.length > 1 ? "them" : "it"} first`);
  await ctx.backend.delete(keys.role(name));
  await ctx.audit.emit({ type: "role.delete", ...by.audit, detail: name });
}

/** Roles on the wire: the one conversion between rbac's Role and the protobuf message. */
import { create } from "@bufbuild/protobuf";
import { RoleSchema, type Role as RoleMessage, type RoleConditions } from "./gen/mezite/v1/common_pb.js";
import { roleFromDocument, type Role } from "../rbac/role.js";
import { formatDuration } from "../lib/duration.js";
import { MeziteError } from "../lib/errors.js";
import type { LabelRule } from "../rbac/access.js";
import { PERMIT_OPTIONS, optionsToDocument, type RoleOptions } from "../rbac/options.js";

type PermitField = (typeof PERMIT_OPTIONS)[keyof typeof PERMIT_OPTIONS]["field"];
/** The permit_* options that are set (unset means "this role does not say"), under the field names RoleOptions and the message share. */
const permits = (o: Partial<Record<PermitField, boolean | undefined>>): RoleOptions =>
  Object.fromEntries(Object.values(PERMIT_OPTIONS).flatMap((p) => (o[p.field] !== undefined ? [[p.field, o[p.field]]] : [])));

const labelsToProto = (rule: LabelRule) => Object.fromEntries(Object.entries(rule).map(([k, values]) => [k, { values }]));

export function roleToProto(r: Role, created = 0): RoleMessage {
  const o = r.options ?? {};
  return create(RoleSchema, {
    name: r.role,
    description: r.description,
    maxSessionTtlMs: BigInt(r.maxSessionTtlMs),
    allow: { logins: r.allow.logins, nodeLabels: labelsToProto(r.allow.labels) },
    deny: { logins: r.deny.logins, nodeLabels: labelsToProto(r.deny.labels) },
    created: BigInt(created),
    forceCommand: o.forceCommand ?? "",
    sourceAddress: o.sourceAddress ?? [],
    ...permits(o),
  });
}

/** Validates with the same rules as a YAML file, so any gRPC client gets the same errors. */
export function roleFromProto(m: RoleMessage): Role {
  const cond = (c: RoleConditions | undefined, where: string) => {
    const labels = c?.nodeLabels ?? {};
    // A decoded map key "__proto__" is not an entry: the decoder's assignment replaced the map's prototype.
    if (Object.getPrototypeOf(labels) !== Object.prototype) {
      throw new MeziteError("ERR_BAD_ROLE", `${where}.node_labels: "__proto__" is reserved and cannot be a label key`);
    }
    return { logins: c?.logins ?? [], node_labels: Object.fromEntries(Object.entries(labels).map(([k, v]) => [k, v.values])) };
  };
  const options = {
    ...(m.maxSessionTtlMs > 0n ? { max_session_ttl: formatDuration(Number(m.maxSessionTtlMs)) } : {}),
    ...optionsToDocument({
      ...(m.forceCommand !== "" ? { forceCommand: m.forceCommand } : {}),
      ...(m.sourceAddress.length > 0 ? { sourceAddress: m.sourceAddress } : {}),
      ...permits(m),
    }),
  };
  return roleFromDocument({
    kind: "role",
    metadata: { name: m.name, description: m.description },
    spec: { options, allow: cond(m.allow, "spec.allow"), deny: cond(m.deny, "spec.deny") },
  });
}

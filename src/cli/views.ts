/** How resources look to an admin: JSON documents (snake_case) and table rows. */
import type * as pb from "../api/gen/mezite/v1/common_pb.js";
import { isoTime, relTime } from "./output.js";

export function lockDoc(l: pb.Lock) {
  return { id: l.id, target_kind: l.targetKind, target: l.target, reason: l.reason, created: isoTime(l.created), expires: isoTime(l.expires) };
}

export function identityDoc(s: pb.AgentIdentityStatus) {
  return {
    name: s.name,
    id: s.id,
    roles: s.roles,
    locked: s.locked,
    generation: Number(s.generation),
    last_seen: isoTime(s.lastSeen),
    cert_expires: isoTime(s.certExpires),
    created: isoTime(s.created),
    token_state: s.tokenState,
    last_address: s.lastAddress,
    principals: s.principals,
    locks: s.locks.map(lockDoc),
    instances: s.instances.map((i) => ({
      id: i.id,
      generation: Number(i.generation),
      locked: i.locked,
      last_seen: isoTime(i.lastSeen),
      cert_expires: isoTime(i.certExpires),
      address: i.address,
      created: isoTime(i.created),
      join_method: i.joinMethod,
      claims: i.claims,
    })),
  };
}

export function identityStatus(s: pb.AgentIdentityStatus): string {
  return s.locked ? "locked" : s.instances.length === 0 ? (s.tokenState === "unused" ? "awaiting join" : "no instance") : s.instances.every((i) => i.locked) ? "locked" : "active";
}

export function identityRow(s: pb.AgentIdentityStatus): string[] {
  return [s.name, s.roles.join(","), identityStatus(s), String(s.generation), relTime(s.lastSeen), relTime(s.certExpires)];
}
export const IDENTITY_HEADERS = ["NAME", "ROLES", "STATUS", "GENERATION", "LAST SEEN", "CERT EXPIRES"];

export function identityText(s: pb.AgentIdentityStatus): string {
  const out = [
    `Agent identity: ${s.name}`,
    `ID:             ${s.id}`,
    `Roles:          [${s.roles.join(", ")}]`,
    `Status:         ${identityStatus(s)}`,
    `Generation:     ${s.generation}`,
    `Last seen:      ${relTime(s.lastSeen)}${s.lastAddress ? ` from ${s.lastAddress}` : ""}`,
    `Cert expires:   ${relTime(s.certExpires)}`,
    `Created:        ${isoTime(s.created) ?? "unknown"}`,
    `Token:          ${s.tokenState}`,
    `SSH principals: ${s.principals.length ? s.principals.join(", ") : `none (${s.principalsError})`}`,
  ];
  if (s.locks.length) out.push(`Locks:`, ...s.locks.map((l) => `  ${l.id}  ${l.targetKind}=${l.target}${l.reason ? `  "${l.reason}"` : ""}`));
  out.push(`Instances:      ${s.instances.length === 0 ? "none" : ""}`.trimEnd());
  for (const i of s.instances) {
    out.push(`  ${i.id}  generation ${i.generation}  ${i.locked ? "LOCKED" : "active"}  last seen ${relTime(i.lastSeen)}${i.address ? ` from ${i.address}` : ""}  cert expires ${relTime(i.certExpires)}`);
    const claims = Object.entries(i.claims).map(([k, v]) => `${k}=${v}`).join(" ");
    if (i.joinMethod && i.joinMethod !== "token") out.push(`    joined by ${i.joinMethod}${claims ? `: ${claims}` : ""}`);
  }
  return out.join("\n") + "\n";
}

export function auditDoc(e: pb.AuditEvent) {
  return {
    time: isoTime(e.time),
    type: e.type,
    identity: e.identity,
    instance: e.instance,
    roles: e.roles,
    generation: Number(e.generation),
    remote_addr: e.remoteAddr,
    serial: e.serial,
    success: e.success,
    error: e.error,
    detail: e.detail,
    actor: e.actor,
  };
}

export function tokenDoc(t: pb.TokenInfo) {
  return { id: t.id, type: t.type, agent_identity: t.agentIdentity, labels: t.labels, replaces: t.replaces, created: isoTime(t.created), expires: isoTime(t.expires), used: t.used };
}

export function nodeDoc(n: pb.Node) {
  return { name: n.name, labels: n.labels, address: n.address, principals: n.principals, last_heartbeat: isoTime(n.lastHeartbeat), host_cert_expires: isoTime(n.hostCertExpires) };
}

export const labelsText = (l: Record<string, string>) => Object.entries(l).map(([k, v]) => `${k}=${v}`).join(",");

/** How resources look to an admin: JSON documents (snake_case) and table rows. */
import type { BriefStatus } from "../api/brief-page.js";
import type * as pb from "../api/gen/mezite/v1/common_pb.js";
import type { CaStatus, CertificateInfo } from "../api/gen/mezite/v1/admin_pb.js";
import { caName } from "../lib/ca-name.js";
import { escapeText as e } from "../lib/escape.js";
import { isoTime, relTime } from "./output.js";

export function lockDoc(l: pb.Lock) {
  return { id: l.id, target_kind: l.targetKind, target: l.target, reason: l.reason, created: isoTime(l.created), expires: isoTime(l.expires) };
}

export function identityDoc(s: pb.AgentIdentityStatus) {
  return {
    name: s.name,
    id: s.id,
    roles: s.roles,
    status: s.state,
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
      host: i.host ? { host_name: i.host.hostName, os: i.host.os, arch: i.host.arch, version: i.host.version } : null,
      stale: i.stale,
      principals: i.principals,
    })),
  };
}

export function identityRow(s: BriefStatus): string[] {
  return [s.name, s.roles.join(","), s.state, String(s.generation), relTime(s.lastSeen), relTime(s.certExpires)];
}
export const IDENTITY_HEADERS = ["NAME", "ROLES", "STATUS", "GENERATION", "LAST SEEN", "CERT EXPIRES"];

/** Every value shown is escaped (lib/escape.ts): addresses and claims are what daemons and ID tokens sent. */
export function identityText(s: pb.AgentIdentityStatus): string {
  const out = [
    `Agent identity: ${e(s.name)}`,
    `ID:             ${e(s.id)}`,
    `Roles:          [${e(s.roles.join(", "))}]`,
    `Status:         ${s.state}`,
    `Generation:     ${s.generation}`,
    `Last seen:      ${relTime(s.lastSeen)}${s.lastAddress ? ` from ${e(s.lastAddress)}` : ""}`,
    `Cert expires:   ${relTime(s.certExpires)}`,
    `Created:        ${isoTime(s.created) ?? "unknown"}`,
    `Token:          ${e(s.tokenState)}`,
    `SSH principals: ${e(s.principals.length ? s.principals.join(", ") : `none (${s.principalsError})`)}`,
  ];
  if (s.locks.length) out.push(`Locks:`, ...s.locks.map((l) => `  ${e(l.id)}  ${e(`${l.targetKind}=${l.target}`)}${l.reason ? `  "${e(l.reason)}"` : ""}`));
  out.push(`Instances:      ${s.instances.length === 0 ? "none" : ""}`.trimEnd());
  for (const i of s.instances) {
    out.push(`  ${e(i.id)}  generation ${i.generation}  ${i.locked ? "LOCKED" : i.stale ? "STALE (certificates of a retired User CA key: add-token)" : "active"}  last seen ${relTime(i.lastSeen)}${i.address ? ` from ${e(i.address)}` : ""}  cert expires ${relTime(i.certExpires)}`);
    const claims = Object.entries(i.claims).map(([k, v]) => `${k}=${v}`).join(" ");
    if (i.joinMethod && i.joinMethod !== "token") out.push(`    joined by ${e(i.joinMethod)}${claims ? `: ${e(claims)}` : ""}`);
    out.push(`    SSH principals: ${i.principals.length ? e(i.principals.join(", ")) : "none"}`);
    if (i.host) out.push(`    host ${e(i.host.hostName)} (${e(`${i.host.os}/${i.host.arch}`)}, mezd ${e(i.host.version)})`);
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

/**
 * A table row per event. DETAIL, last so a long one cannot push the others apart, is what the
 * event changed: a ca.rotation's phases (`Host CA: init -> update_clients (manual)`) and keys, a
 * lock's target and reason, a join's claims. table() escapes every cell.
 */
export function auditRow(e: pb.AuditEvent): string[] {
  return [new Date(Number(e.time)).toISOString(), e.type, e.identity, e.generation ? String(e.generation) : "", e.serial, e.success ? "ok" : e.error, e.remoteAddr, e.actor, e.detail];
}
export const AUDIT_HEADERS = ["TIME", "TYPE", "IDENTITY", "GEN", "SERIAL", "RESULT", "FROM", "BY", "DETAIL"];

export function tokenDoc(t: pb.TokenInfo) {
  return { id: t.id, type: t.type, agent_identity: t.agentIdentity, labels: t.labels, replaces: t.replaces, created: isoTime(t.created), expires: isoTime(t.expires), used: t.used };
}

export function nodeDoc(n: pb.Node) {
  return { name: n.name, labels: n.labels, address: n.address, principals: n.principals, last_heartbeat: isoTime(n.lastHeartbeat), host_cert_expires: isoTime(n.hostCertExpires) };
}

export const labelsText = (l: Record<string, string>) => Object.entries(l).map(([k, v]) => `${k}=${v}`).join(",");

export const nodeRow = (n: pb.Node) => [n.name, labelsText(n.labels), n.address, relTime(n.lastHeartbeat), relTime(n.hostCertExpires)];
export const NODE_HEADERS = ["NAME", "LABELS", "ADDRESS", "LAST HEARTBEAT", "HOST CERT EXPIRES"];

export function caDoc(c: CaStatus) {
  return {
    type: c.type,
    phase: c.phase,
    mode: c.mode || null,
    started: isoTime(c.started),
    phase_started: isoTime(c.phaseStarted),
    next_phase_at: isoTime(c.nextPhaseAt),
    last_rotated: isoTime(c.lastRotated),
    keys: c.keys.map((k) => ({ role: k.role, ssh_fingerprint: k.sshFingerprint, x509_pin: k.x509Pin, signing: k.signing, trusted: k.trusted, holders: k.holders })),
    holders_total: c.holdersTotal,
    behind: { count: c.behindCount, first: c.behind },
  };
}

/** `mezctl ca status`: per CA its phase, then each key with what it does and who holds its certificates (values escaped). */
export function caText(list: CaStatus[]): string {
  return list
    .map((c) => {
      const how = c.phase === "standby"
        ? c.lastRotated ? `last rotated ${isoTime(c.lastRotated)}` : "never rotated"
        : `${c.mode === "auto" ? "automatic" : "manual"}, started ${relTime(c.started)}${c.nextPhaseAt ? `, next phase ${relTime(c.nextPhaseAt)}` : ""}`;
      const holders = c.type === "user" ? "live instances" : "nodes";
      const rows = c.keys.map((k) => [
        `  ${e(k.role)}`,
        e(k.sshFingerprint),
        [k.signing ? "signing" : "", k.trusted ? "trusted" : "not trusted"].filter(Boolean).join(", "),
        `${k.holders}/${c.holdersTotal} ${holders}`,
      ]);
      const width = (i: number) => Math.max(...rows.map((r) => r[i]!.length));
      const behind = c.behindCount > 0
        ? [e(`  behind: ${c.behindCount} live instance${c.behindCount > 1 ? "s or nodes" : " or node"} not yet in step with ${c.phase} (${c.behind.join(", ")}${c.behindCount > c.behind.length ? ", …" : ""})`)]
        : [];
      return [e(`${caName(c.type)}: phase ${c.phase} (${how})`), ...rows.map((r) => r.map((f, i) => (i < r.length - 1 ? f.padEnd(width(i)) : f)).join("  ")), ...behind].join("\n");
    })
    .join("\n") + "\n";
}

/** `certs show`: the CI claims that say which run it was come first among the claims. */
const RUN_CLAIMS = ["repository", "project_path", "run_id", "pipeline_id", "actor", "user_login", "sha", "ref", "workflow", "environment"];

function orderedClaims(claims: Record<string, string>): [string, string][] {
  const rank = (k: string) => (RUN_CLAIMS.includes(k) ? RUN_CLAIMS.indexOf(k) : RUN_CLAIMS.length);
  return Object.entries(claims).sort(([a], [b]) => rank(a) - rank(b) || a.localeCompare(b));
}

export function certificateDoc(c: CertificateInfo) {
  return {
    serial: c.serial,
    identity: c.identity,
    instance: c.instanceId,
    instance_live: c.instanceLive,
    roles: c.roles,
    principals: c.principals,
    valid_after: isoTime(c.validAfter),
    valid_before: isoTime(c.validBefore),
    issued_by: c.issuedBy,
    issued_at: isoTime(c.issuedAt),
    generation: Number(c.generation),
    remote_addr: c.remoteAddr,
    join_method: c.joinMethod,
    join_token: c.joinToken,
    claims: Object.fromEntries(orderedClaims(c.claims)),
  };
}

/** Every value is escaped: claims and addresses are what ID tokens and daemons sent. */
export function certificateText(c: CertificateInfo, now = Date.now()): string {
  const expired = Number(c.validBefore) <= now;
  const lines = [
    `Certificate:  serial ${e(c.serial)}`,
    `Identity:     ${e(c.identity)}`,
    `Instance:     ${e(c.instanceId)} (${c.instanceLive ? "live" : "ended"})`,
    `Roles:        [${e(c.roles.join(", "))}]`,
    `Principals:   [${e(c.principals.join(", "))}]`,
    `Valid:        ${isoTime(c.validAfter)} to ${isoTime(c.validBefore)} (${expired ? "expired" : `expires ${relTime(c.validBefore, now)}`})`,
    `Issued by:    ${c.issuedBy === "agent_identity.join" ? "join" : "renewal"} at ${isoTime(c.issuedAt)}, generation ${c.generation}${c.remoteAddr ? `, from ${e(c.remoteAddr)}` : ""}`,
    `Join method:  ${e(c.joinMethod)}${c.joinToken ? ` (join token ${e(c.joinToken)})` : ""}`,
  ];
  const claims = orderedClaims(c.claims);
  if (claims.length > 0) {
    const width = Math.max(...claims.map(([k]) => k.length));
    lines.push("Claims:", ...claims.map(([k, v]) => `  ${e(k).padEnd(width)}  ${e(v)}`));
  }
  return lines.join("\n") + "\n";
}

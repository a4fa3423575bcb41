/** msh status: what the identity dir's certificate says, for people (text) and programs (json). */
import { isoTime, relTime } from "../cli/output.js";
import { formatDuration } from "../lib/duration.js";
import { escapeText } from "../lib/escape.js";
import type { IdentityDir } from "./identity-dir.js";

function left(d: IdentityDir, now: number): string {
  if (d.validBeforeMs === Infinity) return "never expires";
  const ms = d.validBeforeMs - now;
  return ms > 0 ? `${formatDuration(Math.floor(ms / 1000) * 1000)} left` : `EXPIRED ${relTime(d.validBeforeMs, now)}`;
}

export function statusText(d: IdentityDir, now = Date.now()): string {
  const rows: [string, string][] = [
    ["Identity", d.identity.name],
    ["Identity ID", d.identity.id],
    ["Instance", d.identity.instance],
    ["Roles", d.roles.join(", ") || "(none)"],
    ["Logins", d.principals.join(", ") || "(none)"],
    ["Serial", String(d.serial)],
    ["Valid until", `${d.validBeforeMs === Infinity ? "forever" : new Date(d.validBeforeMs).toISOString()} (${left(d, now)})`],
    ["Key", d.agentSocket !== undefined ? `agent socket ${d.agentSocket}` : `${d.dir}/ssh_key`],
  ];
  return rows.map(([k, v]) => `${`${k}:`.padEnd(13)}${escapeText(v)}`).join("\n") + "\n";
}

export function statusDoc(d: IdentityDir, now = Date.now()) {
  return {
    identity: d.identity.name,
    identity_id: d.identity.id,
    instance: d.identity.instance,
    roles: d.roles,
    principals: d.principals,
    serial: String(d.serial),
    valid_after: isoTime(d.validAfterMs),
    valid_before: d.validBeforeMs === Infinity ? null : isoTime(d.validBeforeMs),
    seconds_left: d.validBeforeMs === Infinity ? null : Math.max(0, Math.floor((d.validBeforeMs - now) / 1000)),
    expired: d.validBeforeMs <= now,
    agent_socket: d.agentSocket ?? null,
    identity_dir: d.dir,
  };
}

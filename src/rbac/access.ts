/**
 * Role evaluation, pure and dependency-free: the node's principals command imports this on every
 * SSH login, so it must stay cheap to load.
 */
import { MeziteError } from "../lib/errors.js";

export type LabelRule = Record<string, string[]>;

/** What one role grants and forbids; also what a certificate carries for nodes to decide. */
export interface RoleAccess {
  role: string;
  allow: { logins: string[]; labels: LabelRule };
  deny: { logins: string[]; labels: LabelRule };
  /** 0 = no cap. */
  maxSessionTtlMs: number;
}

/**
 * A rule matches a node when every key of the rule is satisfied: the node has that label with
 * one of the listed values. '*' as a key or value matches anything. An empty rule matches no
 * node, so a role without node_labels grants no node (and a deny without them denies none).
 */
export function labelsMatch(rule: LabelRule, nodeLabels: Record<string, string>): boolean {
  const keys = Object.keys(rule);
  if (keys.length === 0) return false;
  return keys.every((key) => {
    const values = rule[key] ?? [];
    if (key === "*") return values.includes("*");
    const have = nodeLabels[key];
    return have !== undefined && (values.includes("*") || values.includes(have));
  });
}

/** Allowed logins minus denied logins over all roles, sorted. */
export function principalsFor(roles: RoleAccess[]): string[] {
  const denied = new Set(roles.flatMap((r) => r.deny.logins));
  const allowed = new Set(roles.flatMap((r) => r.allow.logins).filter((l) => !denied.has(l)));
  return [...allowed].sort();
}

/** Like principalsFor, but refuses a role set that leaves no login at all. */
export function requirePrincipals(roles: RoleAccess[]): string[] {
  const principals = principalsFor(roles);
  if (principals.length === 0) {
    const names = roles.map((r) => r.role).join(", ");
    throw new MeziteError("ERR_NO_LOGINS", `roles [${names}] allow no SSH login after deny rules: add an allowed login to a role`);
  }
  return principals;
}

/** The certificate lifetime: the requested TTL capped by every role's max_session_ttl. */
export function sessionTtlMs(roles: RoleAccess[], requestedMs: number): number {
  return roles.reduce((ttl, r) => (r.maxSessionTtlMs > 0 ? Math.min(ttl, r.maxSessionTtlMs) : ttl), requestedMs);
}

/**
 * May these roles log in as `login` on a node with these labels? Some role must allow both the
 * login and the node; any role denying the login or the node wins over every allow.
 */
export function canLogin(roles: RoleAccess[], login: string, nodeLabels: Record<string, string>): boolean {
  const denied = roles.some((r) => r.deny.logins.includes(login) || labelsMatch(r.deny.labels, nodeLabels));
  if (denied) return false;
  return roles.some((r) => r.allow.logins.includes(login) && labelsMatch(r.allow.labels, nodeLabels));
}

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

/** Own properties only: a rule or label set read from JSON is a plain object, and `constructor` must not reach Object.prototype. */
const own = (o: object, key: string): boolean => Object.prototype.hasOwnProperty.call(o, key);

/** Logins as deny rules compare them: case-insensitively, so a deny of `Root` also denies `root`. */
const denyKey = (login: string): string => login.toLowerCase();

/**
 * A rule matches a node when every key of the rule is satisfied: the node has that label (its own,
 * never an inherited property) with one of the listed values. '*' as a value matches any value;
 * the key '*' (with the value '*', the only one role.ts accepts with it) matches any node. An
 * empty rule matches no node, so a role without node_labels grants no node (and a deny without
 * them denies none).
 */
export function labelsMatch(rule: LabelRule, nodeLabels: Record<string, string>): boolean {
  const keys = Object.keys(rule);
  if (keys.length === 0) return false;
  return keys.every((key) => {
    const values = rule[key];
    if (!Array.isArray(values)) return false;
    if (key === "*") return values.includes("*");
    if (!own(nodeLabels, key)) return false;
    const have = nodeLabels[key];
    return typeof have === "string" && (values.includes("*") || values.includes(have));
  });
}

/**
 * Allowed logins minus denied logins over all roles, sorted. Allowed logins are exact, as OpenSSH
 * compares a certificate's principals with the user name; a denied login denies it in every case.
 */
export function principalsFor(roles: RoleAccess[]): string[] {
  const denied = new Set(roles.flatMap((r) => r.deny.logins.map(denyKey)));
  const allowed = new Set(roles.flatMap((r) => r.allow.logins).filter((l) => !denied.has(denyKey(l))));
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
 * login (exactly) and the node; any role denying the login (in any case) or the node wins over
 * every allow.
 */
export function canLogin(roles: RoleAccess[], login: string, nodeLabels: Record<string, string>): boolean {
  const denied = roles.some((r) => r.deny.logins.some((d) => denyKey(d) === denyKey(login)) || labelsMatch(r.deny.labels, nodeLabels));
  if (denied) return false;
  return roles.some((r) => r.allow.logins.includes(login) && labelsMatch(r.allow.labels, nodeLabels));
}

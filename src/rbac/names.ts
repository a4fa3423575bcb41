/**
 * The shapes of the names that end up in certificates, sshd's principals and node labels. The
 * service checks them when they are made; clients check them again before writing what a reply
 * names (SPEC §4), so a value is the same well-formed thing on both sides.
 */
import { isIP } from "node:net";
import { isDnsName } from "../lib/address.js";

/** A resource's name: roles, agent identities, join tokens. */
export const NAME_PATTERN = /^[a-z0-9][a-z0-9._-]{0,62}$/;

/** A Unix login name as OpenSSH and useradd take it (exact, case-sensitive). */
export const LOGIN_PATTERN = /^[a-z_][a-z0-9_.-]{0,31}\$?$/i;

/** A node label's key and value. */
export const LABEL_KEY_PATTERN = /^[A-Za-z0-9_./-]{1,63}$/;
export const LABEL_VALUE_PATTERN = /^[A-Za-z0-9_./:-]{1,63}$/;

/**
 * A host certificate principal: a DNS name (labels of letters, digits and inner hyphens, 253
 * characters at most) or an IP address. Nothing else: a wildcard or odd text would match hosts
 * the node does not own.
 */
export function isHostPrincipal(s: string): boolean {
  return isIP(s) !== 0 || isDnsName(s);
}

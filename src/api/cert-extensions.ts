/**
 * The non-critical SSH certificate extensions the auth service writes and nodes decide by: part
 * of the contract between them, like the .proto files. Kept import-free: the node's principals
 * command loads it on every login.
 */
export const CERT_EXTENSIONS = {
  /** JSON {name, id, instance}. */
  identity: "mezite-identity@mezite",
  /** The role names, comma-separated. */
  roles: "mezite-roles@mezite",
  /** JSON array of per-role {role, allow: {logins, labels}, deny: {logins, labels}}: each role's rules. */
  roleRules: "mezite-role-rules@mezite",
} as const;

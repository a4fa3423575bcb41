/**
 * admin.identity: one 0600 file holding what mezctl needs — the admin's key and certificate, the
 * CA that signs the auth service's TLS certificate, and the auth address.
 */
import { MeziteError } from "../lib/errors.js";
import { readFileNoFollow, writeFileAtomic } from "../lib/files.js";

export interface AdminIdentity {
  version: 1;
  cluster_name: string;
  auth_server: string;
  cert_pem: string;
  key_pem: string;
  ca_pem: string;
}

export function writeAdminIdentity(path: string, id: AdminIdentity): void {
  writeFileAtomic(path, JSON.stringify(id, null, 2) + "\n", 0o600);
}

export function readAdminIdentity(path: string): AdminIdentity {
  const text = readFileNoFollow(path);
  if (text === undefined) {
    throw new MeziteError("ERR_CONFIG", `no admin identity at ${path}: pass --identity FILE or set MEZITE_IDENTITY (the auth service writes admin.identity into its data dir)`);
  }
  let id: Partial<AdminIdentity>;
  try {
    id = JSON.parse(text) as Partial<AdminIdentity>;
  } catch {
    throw new MeziteError("ERR_CONFIG", `${path} is not an admin identity file (invalid JSON)`);
  }
  for (const k of ["cluster_name", "auth_server", "cert_pem", "key_pem", "ca_pem"] as const) {
    if (typeof id[k] !== "string" || id[k] === "") throw new MeziteError("ERR_CONFIG", `${path} is not an admin identity file (missing ${k})`);
  }
  return id as AdminIdentity;
}

/** Looking up the roles an identity holds. */
import { MeziteError } from "../lib/errors.js";
import type { Backend } from "../backend/backend.js";
import { keys, load, type StoredRole } from "./records.js";

export async function loadRoles(backend: Backend, names: string[]): Promise<StoredRole[]> {
  const roles = await Promise.all(names.map((n) => load<StoredRole>(backend, keys.role(n))));
  const missing = names.filter((_, i) => roles[i] === undefined);
  if (missing.length > 0) throw new MeziteError("ERR_NOT_FOUND", `role${missing.length > 1 ? "s" : ""} ${missing.join(", ")} not found: create ${missing.length > 1 ? "them" : "it"} with mezctl create -f`);
  return roles.map((r) => r!.value);
}

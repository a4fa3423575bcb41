/** Turns the `--backend` setting into an open, migrated Backend. */
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { MeziteError } from "../lib/errors.js";
import type { Backend, BackendOptions } from "./backend.js";
import { MemoryBackend } from "./memory.js";
import { PostgresBackend } from "./postgres.js";
import type { PostgresOptions } from "./postgres.js";
import { SqliteBackend } from "./sqlite.js";

/**
 * "sqlite" → `${dataDir}/mezite.db` (the directory is created 0700 if missing), "memory" → nothing
 * persists, "postgres://…" or "postgresql://…" → that database. Anything else is ERR_CONFIG.
 */
export async function openBackend(spec: string, dataDir: string, options: BackendOptions & PostgresOptions = {}): Promise<Backend> {
  if (spec === "sqlite") {
    try {
      mkdirSync(dataDir, { recursive: true, mode: 0o700 });
    } catch (e) {
      throw new MeziteError("ERR_STORAGE", `cannot create the data directory ${dataDir}: ${(e as Error).message}`, { cause: e });
    }
    return new SqliteBackend(join(dataDir, "mezite.db"), options);
  }
  if (spec === "memory") return new MemoryBackend(options);
  if (/^postgres(ql)?:\/\//.test(spec)) return PostgresBackend.open(spec, options);
  // The spec is not echoed: a mistyped URL may carry a password.
  throw new MeziteError("ERR_CONFIG", "--backend must be sqlite, memory or a postgres:// URL");
}

export { redactBackend } from "../lib/secret-args.js";

/**
 * What `better-sqlite3` resolves to inside the standalone executable (scripts/release.mjs aliases
 * it here): the real package's Database, given the addon embedded in the executable through its
 * `nativeBinding` option instead of a build/Release/*.node file next to it.
 */
import Database from "better-sqlite3";
import { embeddedAddon } from "./sea.js";

class StandaloneDatabase extends Database {
  constructor(filename?: string | Buffer, options: Database.Options = {}) {
    // @types/better-sqlite3 types nativeBinding as a path; the package also takes the loaded addon.
    super(filename, { ...options, nativeBinding: embeddedAddon("better_sqlite3.node") as string });
  }
}

export default StandaloneDatabase;

/**
 * The version and commit baked into the programs at build time (`mezd --version`): the version
 * from package.json, the commit from git when building from a checkout ("-dirty" when tracked
 * files differ from it), else $MEZITE_COMMIT, else "unknown".
 */
import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..");

function git(args) {
  const r = spawnSync("git", args, { cwd: ROOT, encoding: "utf8" });
  return r.status === 0 ? r.stdout.trim() : undefined;
}

export function buildInfo() {
  const version = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")).version;
  const head = git(["rev-parse", "--short=7", "HEAD"]);
  let commit = process.env.MEZITE_COMMIT || "unknown";
  if (head) commit = git(["status", "--porcelain", "--untracked-files=no"]) ? `${head}-dirty` : head;
  return { version, commit };
}

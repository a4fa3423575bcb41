/**
 * The standalone executable's main (scripts/release.mjs builds it; a Node single executable
 * application). The programs are the SEA asset `mezite.js`, one CommonJS bundle of
 * src/cli/standalone.ts wrapped as a function; the asset `mezite.cache` is V8's code cache for
 * it, taken at build time AFTER a real one-shot join and renewal ran (scripts/sea-train.cjs): it
 * holds every function those ran, compiled, where the cache Node's own SEA option makes holds
 * only what V8 compiles before anything runs. A cache V8 rejects (another V8, other flags) only
 * costs the compile it would have saved; MEZITE_DEBUG=1 says on stderr whether it was taken.
 */
import { dirname } from "node:path";
import { getAsset, isSea } from "node:sea";
import { Script } from "node:vm";

function cache(): Buffer | undefined {
  try {
    return Buffer.from(getAsset("mezite.cache"));
  } catch {
    return undefined; // built with --no-code-cache
  }
}

if (isSea()) {
  const cachedData = cache();
  const script = new Script(getAsset("mezite.js", "utf8"), { filename: process.execPath, cachedData });
  if (process.env["MEZITE_DEBUG"] === "1") {
    const what = !cachedData ? "no code cache (built without)" : script.cachedDataRejected ? `V8 rejected the code cache of ${cachedData.length} bytes: compiling as it runs` : `code cache of ${cachedData.length} bytes taken`;
    process.stderr.write(`mezite: ${what}\n`);
  }
  const mod = { exports: {} as { main?: () => void } };
  (script.runInThisContext() as (e: object, r: NodeJS.Require, m: object, f: string, d: string) => void)(mod.exports, require, mod, process.execPath, dirname(process.execPath));
  mod.exports.main!();
}

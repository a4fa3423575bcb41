/**
 * One training run for the standalone executable's code cache (scripts/release.mjs,
 * src/cli/sea-main.ts): compiles the wrapped bundle exactly as the executable does (with the
 * previous run's cache, if any), runs one program on the arguments after this script, and when
 * the process exits writes V8's code cache, which then holds every function that ran. This `node`
 * is the one the executable is made of: same V8, same flags, so the executable accepts the cache.
 * Environment: MEZITE_TRAIN_SOURCE (the asset mezite.js), MEZITE_TRAIN_PROGRAM (mezd, msh or
 * mezctl), MEZITE_TRAIN_CACHE_IN (optional), MEZITE_TRAIN_CACHE_OUT.
 */
"use strict";
const { readFileSync, writeFileSync } = require("node:fs");
const { Script } = require("node:vm");

const env = process.env;
const cachedData = env.MEZITE_TRAIN_CACHE_IN ? readFileSync(env.MEZITE_TRAIN_CACHE_IN) : undefined;
const script = new Script(readFileSync(env.MEZITE_TRAIN_SOURCE, "utf8"), { filename: "mezite.js", cachedData });
if (cachedData && script.cachedDataRejected) {
  process.stderr.write("sea-train: V8 rejected the previous run's code cache\n");
  process.exit(1);
}
process.on("exit", () => writeFileSync(env.MEZITE_TRAIN_CACHE_OUT, script.createCachedData()));
const mod = { exports: {} };
script.runInThisContext()(mod.exports, require, mod, "mezite.js", ".");
mod.exports.main(env.MEZITE_TRAIN_PROGRAM);

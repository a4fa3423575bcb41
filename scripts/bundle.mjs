#!/usr/bin/env node
/**
 * Bundles bin/mezd, bin/mezctl and bin/msh into dist/bundle/ (run after tsc, by `npm run build`): loading a
 * few large files costs Node far less than resolving and loading hundreds of small ones.
 * - Code splitting keeps each subcommand's program in chunks of its own, loaded when it runs, and
 *   code shared between them in one copy (one MeziteError class, so `instanceof` holds).
 * - `mezd node principals` (sshd runs it on every login) is also built alone, as one file that
 *   mezd's fast path loads instead of the shared chunks.
 * - Every file sits directly in dist/bundle/, as deep below the root as dist/node/: paths made
 *   relative to import.meta.url (node/join.ts's bin/mezd) hold from both.
 */
import { build } from "esbuild";
import { existsSync, readFileSync, renameSync, rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { buildInfo } from "./build-info.mjs";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..");
const OUT = join(ROOT, "dist/bundle");

const common = {
  absWorkingDir: ROOT,
  bundle: true,
  platform: "node",
  target: "node20",
  format: "esm",
  // Native code (better-sqlite3), or optional parts required at run time (pg: pg-native,
  // pg-cloudflare): left to node_modules. Only the auth service loads them.
  external: ["better-sqlite3", "pg"],
  // CommonJS dependencies (commander) require() Node's modules: give the ESM chunks a require.
  banner: { js: 'import { createRequire as __mezCreateRequire } from "node:module"; const require = __mezCreateRequire(import.meta.url);' },
  logLevel: "warning",
  // `--version` (src/lib/version.ts): fixed now, so a running program never asks git.
  define: { MEZITE_BUILD: JSON.stringify(buildInfo()) },
};

/** mezd's fast path imports ../node/principals.js: point it at the stand-alone principals.js. */
const principalsAlone = {
  name: "principals-alone",
  setup(b) {
    b.onResolve({ filter: /\/node\/principals\.js$/ }, (a) =>
      a.kind === "dynamic-import" && a.importer === join(ROOT, "src/cli/mezd.ts") ? { path: "./principals.js", external: true } : undefined,
    );
  },
};

/** Whether Node loads this file as CommonJS: .cjs, or .js under a package.json without "type": "module". */
function isCommonJs(file) {
  if (file.endsWith(".cjs")) return true;
  if (!file.endsWith(".js")) return false;
  for (let d = dirname(file); d !== dirname(d); d = dirname(d)) {
    const pkg = join(d, "package.json");
    if (existsSync(pkg)) return JSON.parse(readFileSync(pkg, "utf8")).type !== "module";
  }
  return true;
}

/**
 * A split bundle gives a dynamically imported CommonJS package only a default export (esbuild
 * cannot know its names), so `const { parse } = await import("yaml")` would get undefined. Such
 * lazy imports stay external: Node loads them from node_modules and finds the names itself.
 */
const lazyCommonJs = {
  name: "lazy-commonjs",
  setup(b) {
    b.onResolve({ filter: /^[^./]/ }, async (a) => {
      if (a.kind !== "dynamic-import" || a.pluginData === "inner") return undefined;
      const r = await b.resolve(a.path, { kind: a.kind, importer: a.importer, resolveDir: a.resolveDir, pluginData: "inner" });
      return r.errors.length === 0 && isCommonJs(r.path) ? { path: a.path, external: true } : undefined;
    });
  },
};

// Built beside, then swapped in: binaries running meanwhile never find the directory half made.
const next = `${OUT}.${process.pid}`;
const old = `${OUT}.old.${process.pid}`;
try {
  await Promise.all([
    build({ ...common, outdir: next, entryPoints: { mezd: "src/cli/mezd.ts", mezctl: "src/cli/mezctl.ts", msh: "src/cli/msh.ts" }, splitting: true, plugins: [principalsAlone, lazyCommonJs] }),
    build({ ...common, outdir: next, entryPoints: { principals: "src/node/principals.ts" } }),
  ]);
  if (existsSync(OUT)) renameSync(OUT, old);
  renameSync(next, OUT);
} finally {
  rmSync(next, { recursive: true, force: true });
  rmSync(old, { recursive: true, force: true });
}

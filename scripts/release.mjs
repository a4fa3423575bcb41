#!/usr/bin/env node
/**
 * `npm run release`: dist/release/mezite-VERSION-linux-amd64.tar.gz and SHA256SUMS (SPEC §17).
 * The tarball holds, at its root, `mezd`, `msh` and `mezctl` as standalone executables (Node
 * single executable applications: they run where no Node and no node_modules exist), the
 * systemd units of deploy/systemd/, and a SHA256SUMS of those files.
 *
 * Per program:
 *  1. esbuild bundles src/cli/<program>.ts into ONE CommonJS file (a SEA main is a single script
 *     that can require only Node's built-in modules). `better-sqlite3` resolves to
 *     src/lib/sea-sqlite.ts, which hands the real package the addon embedded in the executable
 *     (its `nativeBinding` option); pg is bundled, its optional pg-native stays unreachable.
 *  2. `node --experimental-sea-config` makes the preparation blob, with V8's code cache (start-up)
 *     and, for mezd, better-sqlite3's `.node` file as an asset (src/lib/sea.ts loads it).
 *  3. A stripped copy of this `node` gets the blob injected with postject, which also flips the
 *     SEA fuse.
 *
 * Flags: --if-stale (do nothing when dist/release was built from the same inputs: tests and
 * bench call this), --no-code-cache (for measuring what the cache buys), --out=DIR.
 */
import { spawn, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { chmodSync, copyFileSync, existsSync, mkdirSync, readFileSync, readdirSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join, relative, resolve } from "node:path";
import { build } from "esbuild";
import { ROOT, buildInfo } from "./build-info.mjs";

const FUSE = "NODE_SEA_FUSE_fce680ab2cc467b6e072b8b5df1996b2";
const PROGRAMS = ["mezd", "msh", "mezctl"];
const UNITS_DIR = join(ROOT, "deploy/systemd");
const require = createRequire(import.meta.url);
const SQLITE_ADDON = join(dirname(require.resolve("better-sqlite3/package.json")), "build/Release/better_sqlite3.node");
const UPLOT_ASSETS = Object.fromEntries(["uPlot.iife.min.js", "uPlot.min.css"].map((f) => [f, require.resolve(`uplot/dist/${f}`)]));

const args = process.argv.slice(2);
const flag = (name) => args.includes(name);
const outArg = args.find((a) => a.startsWith("--out="));
const OUT = outArg ? resolve(outArg.slice("--out=".length)) : join(ROOT, "dist/release");
const codeCache = !flag("--no-code-cache");
for (const a of args) {
  if (!["--if-stale", "--no-code-cache"].includes(a) && !a.startsWith("--out=")) {
    console.error(`release: unknown argument ${a} (flags: --if-stale, --no-code-cache, --out=DIR)`);
    process.exit(2);
  }
}

/** Every file under `dir` (relative to ROOT), sorted. */
function files(dir) {
  if (!existsSync(dir)) return [];
  return readdirSync(dir, { withFileTypes: true })
    .flatMap((e) => (e.isDirectory() ? files(join(dir, e.name)) : [join(dir, e.name)]))
    .sort();
}

/** What the release is made from: when this hash matches the stamp, the release is current. */
function inputsHash(info) {
  const h = createHash("sha256");
  h.update(JSON.stringify({ info, node: process.version, execPath: process.execPath, codeCache }));
  const inputs = [
    ...files(join(ROOT, "src")),
    ...files(UNITS_DIR),
    ...["package.json", "package-lock.json", "scripts/release.mjs", "scripts/build-info.mjs"].map((f) => join(ROOT, f)),
    SQLITE_ADDON,
    process.execPath,
  ];
  for (const f of inputs) {
    const st = statSync(f);
    // node itself is large: its size and mtime stand for its content.
    h.update(`${relative(ROOT, f)}\0${f === process.execPath ? `${st.size}:${st.mtimeMs}` : createHash("sha256").update(readFileSync(f)).digest("hex")}\0`);
  }
  return h.digest("hex");
}

function run(cmd, argv, opts = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, argv, { stdio: ["ignore", "pipe", "pipe"], ...opts });
    let out = "";
    child.stdout.on("data", (d) => (out += d));
    child.stderr.on("data", (d) => (out += d));
    child.on("error", reject);
    child.on("close", (code) => (code === 0 ? resolve(out) : reject(new Error(`${cmd} ${argv.join(" ")} failed (${code}):\n${out.slice(-2000)}`))));
  });
}

/** esbuild → one CommonJS file per program. */
async function bundle(program, work, info) {
  const shim = join(ROOT, "src/lib/sea-sqlite.ts");
  const standaloneSqlite = {
    name: "standalone-better-sqlite3",
    setup(b) {
      b.onResolve({ filter: /^better-sqlite3$/ }, (a) => (a.importer === shim ? undefined : { path: shim }));
    },
  };
  const file = join(work, `${program}.cjs`);
  await build({
    absWorkingDir: ROOT,
    entryPoints: [join(ROOT, `src/cli/${program}.ts`)],
    outfile: file,
    bundle: true,
    platform: "node",
    target: "node20",
    format: "cjs",
    // pg's optional native client and its Cloudflare socket are required only on paths we never
    // take (pg.native, a Workers runtime); left out, a require of them would throw.
    external: ["pg-native", "pg-cloudflare"],
    define: {
      MEZITE_BUILD: JSON.stringify(info),
      // src/node/join.ts resolves bin/mezd against its own URL; here the module is the executable.
      "import.meta.url": "__mezModuleUrl",
    },
    banner: { js: 'var __mezModuleUrl = require("node:url").pathToFileURL(process.execPath).href;' },
    plugins: [standaloneSqlite],
    logLevel: "warning",
  });
  return file;
}

/** The preparation blob, then a stripped node with the blob injected. */
async function executable(program, main, work, base) {
  const blob = join(work, `${program}.blob`);
  const config = {
    main,
    output: blob,
    disableExperimentalSEAWarning: true,
    useCodeCache: codeCache,
    useSnapshot: false,
    // mezd also carries uPlot for the dashboard (src/web/assets.ts reads it from the blob).
    ...(program === "mezd" ? { assets: { "better_sqlite3.node": SQLITE_ADDON, ...UPLOT_ASSETS } } : {}),
  };
  const configFile = join(work, `${program}.sea.json`);
  writeFileSync(configFile, JSON.stringify(config));
  await run(process.execPath, ["--experimental-sea-config", configFile], { cwd: work });
  const exe = join(work, "out", program);
  copyFileSync(base, exe);
  chmodSync(exe, 0o755);
  // postject's LIEF prints warnings about node's notes: shown only when it fails.
  await run(process.execPath, [require.resolve("postject/dist/cli.js"), exe, "NODE_SEA_BLOB", blob, "--sentinel-fuse", FUSE]);
  return exe;
}

function sha256File(f) {
  return createHash("sha256").update(readFileSync(f)).digest("hex");
}

async function main() {
  const info = buildInfo();
  const name = `mezite-${info.version}-linux-amd64.tar.gz`;
  const tarball = join(OUT, name);
  const stampFile = join(OUT, ".inputs");
  const stamp = inputsHash(info);
  if (flag("--if-stale") && existsSync(tarball) && existsSync(stampFile) && readFileSync(stampFile, "utf8") === stamp) {
    console.log(`release: ${relative(process.cwd(), tarball)} is up to date`);
    return;
  }
  if (process.platform !== "linux" || process.arch !== "x64") throw new Error(`release builds linux-amd64 and must run there (this is ${process.platform}-${process.arch})`);

  const t0 = performance.now();
  mkdirSync(OUT, { recursive: true });
  const work = join(OUT, `.work-${process.pid}`);
  rmSync(work, { recursive: true, force: true });
  mkdirSync(join(work, "out"), { recursive: true });
  try {
    // One stripped node for all three: its debug info is dead weight in a release.
    const base = join(work, "node");
    const strip = spawnSync("strip", ["-o", base, process.execPath]);
    if (strip.status !== 0) copyFileSync(process.execPath, base);

    const mains = await Promise.all(PROGRAMS.map((p) => bundle(p, work, info)));
    await Promise.all(PROGRAMS.map((p, i) => executable(p, mains[i], work, base)));
    // Each program must run and know its version before it ships.
    for (const p of PROGRAMS) {
      const v = spawnSync(join(work, "out", p), ["--version"], { encoding: "utf8", env: { PATH: "/usr/bin:/bin" } });
      const want = `${p} ${info.version} (commit ${info.commit})`;
      if (v.stdout.trim() !== want) throw new Error(`${p} --version printed ${JSON.stringify(v.stdout + v.stderr)}, not ${JSON.stringify(want)}`);
    }

    const units = readdirSync(UNITS_DIR).filter((f) => f.endsWith(".service")).sort();
    for (const u of units) copyFileSync(join(UNITS_DIR, u), join(work, "out", u));
    const members = [...PROGRAMS, ...units];
    writeFileSync(join(work, "out", "SHA256SUMS"), members.map((m) => `${sha256File(join(work, "out", m))}  ${m}\n`).join(""));
    members.push("SHA256SUMS");

    // Root-owned, fixed times, fixed order: two builds of one commit give one tarball content.
    const tmpTar = join(work, name);
    const tar = spawnSync(
      "tar",
      ["-C", join(work, "out"), "--owner=0", "--group=0", "--numeric-owner", "--mtime=@0", "--sort=name", "-czf", tmpTar, ...members],
      { encoding: "utf8" },
    );
    if (tar.status !== 0) throw new Error(`tar failed: ${tar.stderr}`);
    for (const f of readdirSync(OUT)) if (f.startsWith("mezite-") && f.endsWith(".tar.gz")) rmSync(join(OUT, f));
    renameSync(tmpTar, tarball);
    writeFileSync(join(OUT, "SHA256SUMS"), `${sha256File(tarball)}  ${name}\n`);
    writeFileSync(stampFile, stamp);

    const mb = (n) => `${(n / 1e6).toFixed(1)} MB`;
    const sizes = PROGRAMS.map((p) => `${p} ${mb(statSync(join(work, "out", p)).size)}`).join(", ");
    console.log(`release: ${relative(process.cwd(), tarball)}: ${mb(statSync(tarball).size)} (${sizes} unpacked; code cache ${codeCache ? "on" : "off"}; ${((performance.now() - t0) / 1000).toFixed(1)} s)`);
    console.log(`release: ${info.version} (commit ${info.commit}), node ${process.version}; SHA256SUMS beside it`);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

main().catch((e) => {
  console.error(`release: ${e.message}`);
  process.exit(1);
});

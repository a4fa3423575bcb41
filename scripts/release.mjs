#!/usr/bin/env node
/**
 * `npm run release`: dist/release/mezite-VERSION-linux-amd64.tar.gz and SHA256SUMS (SPEC §17).
 * The tarball holds, at its root, `mezd`, `msh` and `mezctl`: ONE standalone executable (a Node
 * single executable application: it runs where no Node and no node_modules exist) stored as
 * `mezd`, with `msh` and `mezctl` hard links to it (src/cli/standalone.ts runs the program the
 * executable is called as); the systemd units of deploy/systemd/, and a SHA256SUMS of those files.
 * Node is most of the executable (about 86 MB stripped, 32 MB gzipped), so it ships once.
 *
 * Tar stores the first member of a hard-linked set as a file and the later ones as links to it:
 * `mezd` comes first, so `tar -x mezd msh` (the seed's install line) extracts a file and a link
 * to it. A link extracted without `mezd` has nothing to point at (`tar -x msh` alone fails).
 *
 *  1. esbuild bundles src/cli/standalone.ts (and through it mezd, msh and mezctl) into ONE
 *     CommonJS file (a SEA main is a single script that can require only Node's built-in modules).
 *     `better-sqlite3` resolves to src/lib/sea-sqlite.ts, which hands the real package the addon
 *     embedded in the executable (its `nativeBinding` option); pg is bundled, its optional
 *     pg-native stays unreachable.
 *  2. `node --experimental-sea-config` makes the preparation blob, with V8's code cache (start-up)
 *     and better-sqlite3's `.node` file as an asset (src/lib/sea.ts loads it).
 *  3. A stripped copy of this `node` gets the blob injected with postject, which also flips the
 *     SEA fuse.
 *
 * Flags: --if-stale (do nothing when dist/release was built from the same inputs: tests and
 * bench call this), --no-code-cache (for measuring what the cache buys), --out=DIR.
 */
import { spawn, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { chmodSync, copyFileSync, existsSync, linkSync, mkdirSync, readFileSync, readdirSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join, relative, resolve } from "node:path";
import { build } from "esbuild";
import { ROOT, buildInfo } from "./build-info.mjs";

const FUSE = "NODE_SEA_FUSE_fce680ab2cc467b6e072b8b5df1996b2";
/** The executable is stored as the first; the others are hard links to it, in this order. */
const PROGRAMS = ["mezd", "msh", "mezctl"];
const UNITS_DIR = join(ROOT, "deploy/systemd");
const require = createRequire(import.meta.url);
const SQLITE_ADDON = join(dirname(require.resolve("better-sqlite3/package.json")), "build/Release/better_sqlite3.node");

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

/** esbuild → one CommonJS file for the three programs. */
async function bundle(work, info) {
  const shim = join(ROOT, "src/lib/sea-sqlite.ts");
  const standaloneSqlite = {
    name: "standalone-better-sqlite3",
    setup(b) {
      b.onResolve({ filter: /^better-sqlite3$/ }, (a) => (a.importer === shim ? undefined : { path: shim }));
    },
  };
  const file = join(work, "mezite.cjs");
  await build({
    absWorkingDir: ROOT,
    entryPoints: [join(ROOT, "src/cli/standalone.ts")],
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

/** The preparation blob, then a stripped node with the blob injected: `out/mezd`. */
async function executable(main, work, base) {
  const blob = join(work, "mezite.blob");
  const config = {
    main,
    output: blob,
    disableExperimentalSEAWarning: true,
    useCodeCache: codeCache,
    useSnapshot: false,
    assets: { "better_sqlite3.node": SQLITE_ADDON },
  };
  const configFile = join(work, "mezite.sea.json");
  writeFileSync(configFile, JSON.stringify(config));
  await run(process.execPath, ["--experimental-sea-config", configFile], { cwd: work });
  const exe = join(work, "out", PROGRAMS[0]);
  copyFileSync(base, exe);
  chmodSync(exe, 0o755);
  // postject's LIEF prints warnings about node's notes: shown only when it fails.
  await run(process.execPath, [require.resolve("postject/dist/cli.js"), exe, "NODE_SEA_BLOB", blob, "--sentinel-fuse", FUSE]);
  for (const p of PROGRAMS.slice(1)) linkSync(exe, join(work, "out", p));
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

    const exe = await executable(await bundle(work, info), work, base);
    // Each program must run under its name and know its version before it ships.
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

    // Root-owned, fixed times, fixed order (the members as listed: mezd before its links): two
    // builds of one commit give one tarball. gzip -9 (the seed unpacks with tar -z): -n keeps
    // no name or time in the gzip header.
    const tmpTar = join(work, name);
    const tar = spawnSync(
      "tar",
      ["-C", join(work, "out"), "--owner=0", "--group=0", "--numeric-owner", "--mtime=@0", "--use-compress-program=gzip -9n", "-cf", tmpTar, ...members],
      { encoding: "utf8" },
    );
    if (tar.status !== 0) throw new Error(`tar failed: ${tar.stderr}`);
    for (const f of readdirSync(OUT)) if (f.startsWith("mezite-") && f.endsWith(".tar.gz")) rmSync(join(OUT, f));
    renameSync(tmpTar, tarball);
    writeFileSync(join(OUT, "SHA256SUMS"), `${sha256File(tarball)}  ${name}\n`);
    writeFileSync(stampFile, stamp);

    const mb = (n) => `${(n / 1e6).toFixed(1)} MB`;
    const sizes = `${PROGRAMS.join(", ")}: one executable of ${mb(statSync(exe).size)}`;
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

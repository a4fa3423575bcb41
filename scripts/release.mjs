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
 *     The bundle, wrapped as a function, becomes the asset mezite.js; the executable's main is
 *     src/cli/sea-main.ts, which compiles and runs it.
 *  2. `node --experimental-sea-config` makes the preparation blob, with better-sqlite3's `.node`
 *     file as an asset too (src/lib/sea.ts loads it).
 *  3. A stripped copy of this `node` gets the blob injected with postject, which also flips the
 *     SEA fuse.
 *  4. V8's code cache for mezite.js, trained on what a CI job runs (train() below): that
 *     executable serves an auth service, and the programs' source run under this node (the same
 *     V8) does a one-shot join and renewal against it; the cache then holds every function they
 *     ran. Steps 2 and 3 again, with the cache as the asset mezite.cache.
 *
 * Flags: --if-stale (do nothing when dist/release was built from the same inputs: tests and
 * bench call this), --no-code-cache (no step 4 and no cache at all: for measuring what the
 * cache buys), --out=DIR.
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
    ...["package.json", "package-lock.json", "scripts/release.mjs", "scripts/sea-train.cjs", "scripts/build-info.mjs", "examples/ci-deployer.yaml"].map((f) => join(ROOT, f)),
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

/**
 * esbuild → the programs, one CommonJS bundle wrapped as a function (the asset mezite.js), and
 * the executable's main, src/cli/sea-main.ts, which compiles and runs that asset.
 */
async function bundle(work, info) {
  const shim = join(ROOT, "src/lib/sea-sqlite.ts");
  const standaloneSqlite = {
    name: "standalone-better-sqlite3",
    setup(b) {
      b.onResolve({ filter: /^better-sqlite3$/ }, (a) => (a.importer === shim ? undefined : { path: shim }));
    },
  };
  const common = { absWorkingDir: ROOT, bundle: true, platform: "node", target: "node20", format: "cjs", logLevel: "warning" };
  const programs = join(work, "mezite.cjs");
  const loader = join(work, "sea-main.cjs");
  await Promise.all([
    build({
      ...common,
      entryPoints: [join(ROOT, "src/cli/standalone.ts")],
      outfile: programs,
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
    }),
    build({ ...common, entryPoints: [join(ROOT, "src/cli/sea-main.ts")], outfile: loader }),
  ]);
  // What Node's CommonJS loader would wrap it in; sea-main.ts and sea-train.cjs compile this text.
  const asset = join(work, "mezite.js");
  writeFileSync(asset, `(function (exports, require, module, __filename, __dirname) {${readFileSync(programs, "utf8")}\n})`);
  return { loader, asset };
}

/**
 * The preparation blob (sea-main.cjs as main; the programs, their code cache when given and
 * better-sqlite3's addon as assets), then a stripped node with the blob injected: `DIR/mezd`,
 * and `DIR/msh`, `DIR/mezctl` hard links to it.
 */
async function executable(files, work, base, dir, cache) {
  const blob = join(work, "mezite.blob");
  const config = {
    // Relative to `work` (node runs there): the blob records this name, which must not carry
    // the work dir's pid.
    main: relative(work, files.loader),
    output: blob,
    disableExperimentalSEAWarning: true,
    useCodeCache: codeCache,
    useSnapshot: false,
    // Besides the program and its code cache: the SQLite addon, and uPlot for the dashboard (src/web/assets.ts reads it from the blob).
    assets: { "better_sqlite3.node": SQLITE_ADDON, ...UPLOT_ASSETS, "mezite.js": files.asset, ...(cache ? { "mezite.cache": cache } : {}) },
  };
  const configFile = join(work, "mezite.sea.json");
  writeFileSync(configFile, JSON.stringify(config));
  await run(process.execPath, ["--experimental-sea-config", configFile], { cwd: work });
  mkdirSync(dir, { recursive: true });
  const exe = join(dir, PROGRAMS[0]);
  copyFileSync(base, exe);
  chmodSync(exe, 0o755);
  // postject's LIEF prints warnings about node's notes: shown only when it fails.
  await run(process.execPath, [require.resolve("postject/dist/cli.js"), exe, "NODE_SEA_BLOB", blob, "--sentinel-fuse", FUSE]);
  for (const p of PROGRAMS.slice(1)) linkSync(exe, join(dir, p));
  return exe;
}

/** Starts `cmd` and waits until `re` shows on its output; the child and the match. */
function startUntil(cmd, argv, re, opts) {
  const child = spawn(cmd, argv, { stdio: ["ignore", "pipe", "pipe"], ...opts });
  return new Promise((resolve, reject) => {
    let out = "";
    let settled = false;
    const settle = (why, m) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (m) return resolve({ child, match: m });
      child.kill("SIGKILL");
      reject(new Error(`${why}:\n${out.slice(-2000)}`));
    };
    const timer = setTimeout(() => settle(`${cmd} ${argv[0]} did not start within 60 s`), 60_000);
    const seen = (d) => {
      out += d;
      const m = re.exec(out);
      if (m) settle("", m);
    };
    child.stdout.on("data", seen);
    child.stderr.on("data", seen);
    child.on("exit", (code) => settle(`${cmd} ${argv[0]} exited ${code}`));
  });
}

/**
 * V8's code cache after what a CI job runs (scripts/sea-train.cjs): the executable built without
 * it runs an auth service on a private port and makes an identity; then, from the programs'
 * source under this node, a one-shot join and a one-shot renewal, each run adding what it
 * compiled to the cache. Returns the cache's path.
 */
async function train(files, exe, work) {
  const dir = join(work, "train");
  mkdirSync(join(dir, "home"), { recursive: true, mode: 0o700 });
  const env = { PATH: "/usr/bin:/bin", HOME: join(dir, "home") };
  const { child: auth, match } = await startUntil(exe, ["auth", "start", `--data-dir=${join(dir, "auth")}`, "--listen=127.0.0.1:0", "--cluster-name=train.mezite"], /auth service listening on (\S+)/, { env });
  try {
    const mezctl = (...a) => run(join(dirname(exe), "mezctl"), [`--identity=${join(dir, "auth", "admin.identity")}`, ...a], { env });
    await mezctl("create", "-f", join(ROOT, "examples/ci-deployer.yaml"));
    const token = /^Token: ([0-9a-f]{64})$/m.exec(await mezctl("agent-identities", "add", "--name=train", "--roles=ci-deployer", "--token-ttl=1h"))?.[1];
    if (!token) throw new Error("mezctl agent-identities add printed no token");
    const oneShot = ["identity", "start", `--auth-server=${match[1]}`, `--destination-dir=${join(dir, "dest")}`, "--one-shot"];
    const trainEnv = { ...env, MEZITE_TRAIN_SOURCE: files.asset, MEZITE_TRAIN_PROGRAM: "mezd" };
    const trainer = join(ROOT, "scripts/sea-train.cjs");
    await run(process.execPath, [trainer, ...oneShot], { env: { ...trainEnv, MEZITE_TOKEN: token, MEZITE_TRAIN_CACHE_OUT: join(dir, "join.cache") } });
    await run(process.execPath, [trainer, ...oneShot], { env: { ...trainEnv, MEZITE_TRAIN_CACHE_IN: join(dir, "join.cache"), MEZITE_TRAIN_CACHE_OUT: join(dir, "mezite.cache") } });
    return join(dir, "mezite.cache");
  } finally {
    const gone = new Promise((r) => auth.once("exit", r));
    auth.kill("SIGTERM");
    await gone;
  }
}

function sha256File(f) {
  return createHash("sha256").update(readFileSync(f)).digest("hex");
}

/** The tarball's name without its version, beside the versioned one. */
const LATEST_NAME = "mezite-linux-amd64.tar.gz";

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

    const files = await bundle(work, info);
    // Built once without the code cache to train it, then again with it.
    const cache = codeCache ? await train(files, await executable(files, work, base, join(work, "train", "bin")), work) : undefined;
    const exe = await executable(files, work, base, join(work, "out"), cache);
    if (cache) {
      const taken = spawnSync(exe, ["--version"], { encoding: "utf8", env: { PATH: "/usr/bin:/bin", MEZITE_DEBUG: "1" } });
      if (!/^mezite: code cache of \d+ bytes taken$/m.test(taken.stderr)) throw new Error(`the executable does not take its code cache: ${taken.stderr.trim()}`);
    }
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

    // Root-owned, fixed times, fixed order (the members as listed: mezd before its links), gzip -9
    // (the seed unpacks with tar -z) with -n: no name or time in the gzip header. Two builds of
    // one commit with --no-code-cache give one tarball; the trained code cache is not the same
    // bytes twice (V8 writes what a run compiled, and runs differ), so with it they differ there.
    const tmpTar = join(work, name);
    const tar = spawnSync(
      "tar",
      ["-C", join(work, "out"), "--owner=0", "--group=0", "--numeric-owner", "--mtime=@0", "--use-compress-program=gzip -9n", "-cf", tmpTar, ...members],
      { encoding: "utf8" },
    );
    if (tar.status !== 0) throw new Error(`tar failed: ${tar.stderr}`);
    for (const f of readdirSync(OUT)) if (f.startsWith("mezite-") && f.endsWith(".tar.gz")) rmSync(join(OUT, f));
    renameSync(tmpTar, tarball);
    // The same bytes under the name that does not change with the version: what a "latest"
    // download fetches (the seed's install line). SHA256SUMS covers both names.
    const latest = join(OUT, LATEST_NAME);
    linkSync(tarball, latest);
    const sum = sha256File(tarball);
    writeFileSync(join(OUT, "SHA256SUMS"), `${sum}  ${name}\n${sum}  ${LATEST_NAME}\n`);
    writeFileSync(stampFile, stamp);

    const mb = (n) => `${(n / 1e6).toFixed(1)} MB`;
    const sizes = `${PROGRAMS.join(", ")}: one executable of ${mb(statSync(exe).size)}${cache ? `, its trained code cache ${mb(statSync(cache).size)}` : ""}`;
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

/**
 * `npm run bench [-- --quick] [-- --only=floor,throughput,scale,agents,revocations,fleet,ha,fleet-ha]`: what Mezite exists for,
 * against the physical limit, in one run. Prints a table (progress goes to stderr) and writes
 * bench/results.json. Every figure that is judged is a ratio of two things measured side by side
 * in this run, because absolute figures on a shared 2-core machine drift from run to run.
 * Everything it starts is stopped on exit, on failure and on Ctrl-C (see lib.ts).
 */
import { existsSync, readdirSync, statSync, writeFileSync } from "node:fs";
import { cpus, loadavg } from "node:os";
import { join, relative } from "node:path";
import { agents } from "./agents.js";
import { fleet } from "./fleet.js";
import { fleetHa } from "./fleet-ha.js";
import { ha } from "./ha.js";
import { revocations } from "./revocations.js";
import { ROOT, TSX, mustRun, note } from "./lib.js";
import { sections, targetLines, targets, type FloorFigures, type Results } from "./report.js";
import { scale } from "./scale.js";
import { throughput } from "./throughput.js";

const SECTIONS = ["floor", "throughput", "scale", "agents", "revocations", "fleet", "ha", "fleet-ha"] as const;
type Section = (typeof SECTIONS)[number];

const args = process.argv.slice(2);
const quick = args.includes("--quick");
const onlyArg = args.find((a) => a.startsWith("--only="))?.slice("--only=".length);
const only = new Set<Section>(onlyArg ? (onlyArg.split(",") as Section[]) : SECTIONS);
for (const a of args) {
  if (a !== "--quick" && !a.startsWith("--only=")) {
    process.stderr.write(`usage: npm run bench -- [--quick] [--only=${SECTIONS.join(",")}]\n`);
    process.exit(2);
  }
}
for (const s of only) {
  if (!SECTIONS.includes(s)) {
    process.stderr.write(`unknown section ${s}: use ${SECTIONS.join(", ")}\n`);
    process.exit(2);
  }
}

/** Sizes and durations: --quick for development (under a minute), the full run for the record. */
const config = quick
  ? {
      floor: { windowMs: 800, rounds: 1 },
      throughput: { identities: 48, jitWarmupMs: 1500, rounds: 1, warmupMs: 1000, windowMs: 2000, concurrency: 6 },
      scale: { identities: 10_000, joins: 8, renewals: 16, lsRuns: 1, statusRuns: 2 },
      agents: { runs: 3, principalsRuns: 6, settleMs: 2000, idleMs: 2000 },
      revocations: { serials: 100_000, rounds: 2 },
      fleet: { daemons: 200, nodes: 20, poll: { daemons: 200, nodes: 20 }, credentials: { daemons: 20, nodes: 4 }, windowMs: 10_000, renewals: 100, latencyWindowMs: 5_000 },
      ha: { identities: 48, jitWarmupMs: 2000, rounds: 1, warmupMs: 1000, windowMs: 3000, concurrency: 6 },
      fleetHa: { daemons: 200, nodes: 20, credentials: { daemons: 20, nodes: 4 }, windowMs: 10_000, renewals: 100, locks: 1 },
    }
  : {
      floor: { windowMs: 3000, rounds: 2 },
      throughput: { identities: 128, jitWarmupMs: 10_000, rounds: 2, warmupMs: 3000, windowMs: 8000, concurrency: 8 },
      scale: { identities: 100_000, joins: 30, renewals: 60, lsRuns: 3, statusRuns: 5 },
      agents: { runs: 10, principalsRuns: 20, settleMs: 2000, idleMs: 24_000, noCodeCache: true },
      revocations: { serials: 100_000, rounds: 5 },
      fleet: { daemons: 10_000, nodes: 1_000, poll: { daemons: 1_000, nodes: 100 }, credentials: { daemons: 100, nodes: 20 }, windowMs: 60_000, renewals: 400, latencyWindowMs: 15_000 },
      ha: { identities: 128, jitWarmupMs: 10_000, rounds: 3, warmupMs: 3000, windowMs: 8000, concurrency: 8 },
      fleetHa: { daemons: 10_000, nodes: 1_000, credentials: { daemons: 100, nodes: 20 }, windowMs: 60_000, renewals: 400, locks: 3 },
    };

/** Source files newer than their build: the run would measure old code. */
function staleBuild(): string[] {
  // The bench runs the bundles (bin/mezd, bin/mezctl): what `npm run build` made last.
  const bundle = join(ROOT, "dist/bundle/mezd.js");
  const built = existsSync(bundle) ? statSync(bundle).mtimeMs : 0;
  const stale: string[] = [];
  const walk = (dir: string) => {
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      const p = join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else if (p.endsWith(".ts") && statSync(p).mtimeMs > built) stale.push(relative(ROOT, p));
    }
  };
  walk(join(ROOT, "src"));
  return stale;
}

async function floor(): Promise<FloorFigures> {
  note("crypto floor: TLS handshakes, signatures, and the gRPC stack, in one process");
  const r = await mustRun(process.execPath, [...TSX, join(ROOT, "bench/workers/floor.ts"), String(config.floor.windowMs), String(config.floor.rounds)], { timeoutMs: 300_000 });
  return JSON.parse(r.stdout.trim().split("\n").pop()!) as FloorFigures;
}

const started = new Date();
const stale = staleBuild();
// The shell's Node variables are left out of everything the bench starts: they change what a node
// does at start, and not equally for a bare `node` and a Mezite program. NODE_EXTRA_CA_CERTS (set
// on this machine) makes a node parse its public roots and the file's certificates as it starts,
// ~30 ms that a bare `node -e 0` pays in full, so every "× a bare node" looked better than it was
// (BENCHMARKS.md, the one-shot finding). The bench talks only to services it starts.
const droppedEnv = ["NODE_EXTRA_CA_CERTS", "NODE_OPTIONS"].filter((v) => process.env[v] !== undefined);
for (const v of droppedEnv) delete process.env[v];
if (stale.length > 0) {
  process.stderr.write(`bench: WARNING: the bundles in dist/bundle/ are older than ${stale.length} source file(s) (${stale.slice(0, 3).join(", ")}${stale.length > 3 ? ", ..." : ""}): run npm run build first, or this measures old code\n`);
}
const load0 = loadavg()[0]!;
process.stderr.write(`bench: ${quick ? "quick" : "full"} run of ${[...only].join(", ")}\n`);

const results: Results = {};
const failures: string[] = [];
const runSection = async (name: Section, fn: () => Promise<void>) => {
  if (!only.has(name)) return;
  const t0 = performance.now();
  try {
    await fn();
  } catch (e) {
    failures.push(`${name}: ${(e as Error).stack ?? String(e)}`);
    process.stderr.write(`bench: section ${name} failed: ${(e as Error).message}\n`);
  }
  note(`${name} took ${((performance.now() - t0) / 1000).toFixed(0)} s`);
};
await runSection("floor", async () => void (results.floor = await floor()));
await runSection("throughput", async () => void (results.throughput = await throughput(config.throughput)));
await runSection("scale", async () => void (results.scale = await scale(config.scale)));
await runSection("agents", async () => {
  const a = await agents(config.agents);
  results.daemon = a.daemon;
  results.node = a.node;
  results.standalone = a.standalone;
});
await runSection("revocations", async () => void (results.revocations = await revocations(config.revocations)));
await runSection("fleet", async () => void (results.fleet = await fleet(config.fleet)));
await runSection("ha", async () => void (results.ha = await ha(config.ha)));
await runSection("fleet-ha", async () => void (results.fleetHa = await fleetHa(config.fleetHa)));

const rows = targets(results);
const header = [
  `Mezite benchmark: ${quick ? "QUICK run (smaller sizes, shorter windows; not for the record)" : "full run"}, ${started.toISOString()}`,
  `node ${process.version}, OpenSSL ${process.versions.openssl}, ${cpus().length} cores (${cpus()[0]?.model.trim()}), load average ${load0.toFixed(1)} → ${loadavg()[0]!.toFixed(1)}, ${((Date.now() - started.getTime()) / 1000).toFixed(0)} s`,
  ...(stale.length ? [`WARNING: dist/bundle/ older than src/ (${stale.length} files): figures are for the old build`] : []),
  ...(droppedEnv.length ? [`${droppedEnv.join(" and ")} of this shell left out of every process measured`] : []),
  "",
];
process.stdout.write([...header, ...sections(results), ...targetLines(rows), ...failures.map((f) => `FAILED ${f.split("\n")[0]}`), ""].join("\n"));
writeFileSync(
  join(ROOT, "bench/results.json"),
  JSON.stringify({ started: started.toISOString(), quick, node: process.version, openssl: process.versions.openssl, cores: cpus().length, loadavg: [load0, loadavg()[0]], staleBuild: stale, config, results, targets: rows, failures }, null, 2) + "\n",
);
process.exit(failures.length ? 1 : 0);

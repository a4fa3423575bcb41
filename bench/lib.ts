/**
 * What every bench section shares: processes that always stop (exit, failure, Ctrl-C), temp dirs
 * that always go, CPU time from /proc, and the few statistics the table needs.
 */
import { spawn, spawnSync, type ChildProcess, type SpawnOptions } from "node:child_process";
import { mkdtempSync, readFileSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

export const ROOT = resolve(import.meta.dirname, "..");
/** What bin/mezd and bin/mezctl run: the bundles `npm run build` makes. */
export const MEZD_JS = join(ROOT, "dist/bundle/mezd.js");
export const MEZCTL_JS = join(ROOT, "dist/bundle/mezctl.js");
/** Node flags that let a child run a bench/*.ts worker. */
export const TSX = ["--import", "tsx"];

// ---- cleanup: every child gets its own process group, killed whole (auth workers included)

const groups = new Set<number>();
const dirs = new Set<string>();

function killAll(): void {
  for (const pgid of groups) {
    try {
      process.kill(-pgid, "SIGKILL");
    } catch {
      // already gone
    }
  }
  groups.clear();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
  dirs.clear();
}

process.on("exit", killAll);
for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
  process.once(sig, () => {
    process.stderr.write(`\nbench: ${sig}, stopping everything it started\n`);
    killAll();
    process.exit(130);
  });
}

/** Spawns a child in its own process group; it is killed with its descendants when the bench exits. */
export function spawnTracked(cmd: string, args: string[], opts: SpawnOptions = {}): ChildProcess {
  const child = spawn(cmd, args, { ...opts, detached: true });
  const pgid = child.pid;
  if (pgid === undefined) throw new Error(`could not start ${cmd}`);
  groups.add(pgid);
  child.once("exit", () => {
    // The group may outlive its leader (auth workers): kill what is left, then forget it.
    try {
      process.kill(-pgid, "SIGKILL");
    } catch {
      // nothing left
    }
    groups.delete(pgid);
  });
  return child;
}

/** Stops a tracked child politely (SIGTERM), then firmly after `graceMs`. */
export function stopChild(child: ChildProcess, graceMs = 5_000): Promise<void> {
  return new Promise((res) => {
    if (child.exitCode !== null || child.signalCode !== null) return res();
    const t = setTimeout(() => child.kill("SIGKILL"), graceMs);
    child.once("exit", () => {
      clearTimeout(t);
      res();
    });
    child.kill("SIGTERM");
  });
}

export function tempDir(prefix: string): string {
  const d = mkdtempSync(join(tmpdir(), `mezite-bench-${prefix}-`));
  dirs.add(d);
  return d;
}

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
  ms: number;
}

/** Runs a command to completion and times it (spawn to exit, as a shell would see it). */
export function timed(cmd: string, args: string[], opts: { env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): Promise<RunResult> {
  return new Promise((res) => {
    const t0 = performance.now();
    const p = spawnTracked(cmd, args, { env: opts.env ?? process.env, stdio: ["ignore", "pipe", "pipe"] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    p.stdout!.on("data", (d: Buffer) => out.push(d));
    p.stderr!.on("data", (d: Buffer) => err.push(d));
    const timer = setTimeout(() => p.kill("SIGKILL"), opts.timeoutMs ?? 60_000);
    p.on("close", (code, signal) => {
      const ms = performance.now() - t0;
      clearTimeout(timer);
      res({ code: code ?? (signal ? 128 : 1), stdout: Buffer.concat(out).toString(), stderr: Buffer.concat(err).toString(), ms });
    });
  });
}

export async function mustRun(cmd: string, args: string[], opts: { env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): Promise<RunResult> {
  const r = await timed(cmd, args, opts);
  if (r.code !== 0) throw new Error(`${[cmd, ...args].join(" ").slice(0, 200)} exited ${r.code}: ${r.stderr.slice(-2000)}`);
  return r;
}

// ---- /proc

const CLK_TCK = Number(spawnSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).stdout.trim()) || 100;

/** utime + stime of a live process, in seconds (0 once it is gone). */
export function cpuSeconds(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    // After "pid (comm) ": state is field 0, utime field 11, stime field 12.
    return (Number(f[11]) + Number(f[12])) / CLK_TCK;
  } catch {
    return 0;
  }
}

/**
 * CPU seconds of a live process's threads at nanosecond resolution (schedstat), for windows where
 * /proc/PID/stat's 10 ms ticks are too coarse (an idle daemon). Exited threads are not counted.
 */
export function cpuSecondsPrecise(pid: number): number {
  let ns = 0;
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    try {
      ns += Number(readFileSync(`/proc/${pid}/task/${tid}/schedstat`, "utf8").split(" ")[0]);
    } catch {
      // the thread exited
    }
  }
  return ns / 1e9;
}

/** The pid's live descendants (auth workers), from each process's parent pid. */
export function descendants(pid: number): number[] {
  const parent = new Map<number, number>();
  for (const name of readdirSync("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, "utf8");
      parent.set(Number(name), Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]));
    } catch {
      // exited while we looked
    }
  }
  const out: number[] = [];
  const walk = (p: number) => {
    for (const [child, pp] of parent) if (pp === p) out.push(child), walk(child);
  };
  walk(pid);
  return out;
}

/**
 * CPU seconds of a process and all its descendants, the exited ones included: utime + stime of
 * each live one, plus what the root has reaped (cutime + cstime). For PostgreSQL's postmaster,
 * whose backends come and go.
 */
export function treeCpuSeconds(pid: number): number {
  let reaped = 0;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    reaped = (Number(f[13]) + Number(f[14])) / CLK_TCK; // cutime, cstime
  } catch {
    return 0;
  }
  return reaped + [pid, ...descendants(pid)].reduce((s, p) => s + cpuSeconds(p), 0);
}

/** Busy and total jiffies of the whole machine, from /proc/stat. */
export function machineTicks(): { busy: number; total: number } {
  const f = readFileSync("/proc/stat", "utf8").split("\n")[0]!.trim().split(/\s+/).slice(1).map(Number);
  const total = sum(f);
  return { busy: total - (f[3] ?? 0) - (f[4] ?? 0), total };
}

/** Resident set size in KiB (VmRSS). */
export function rssKiB(pid: number): number {
  const m = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  if (!m) throw new Error(`no VmRSS for pid ${pid}`);
  return Number(m[1]);
}

// ---- statistics

export function percentile(xs: number[], p: number): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))]!;
}

export const median = (xs: number[]): number => percentile(xs, 50);
export const sum = (xs: number[]): number => xs.reduce((a, b) => a + b, 0);

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Progress goes to stderr, so stdout holds only the table. */
export function note(msg: string): void {
  process.stderr.write(`  ${msg}\n`);
}

/** Cumulative counts of a histogram of the service's (its /metrics), by upper bound in seconds. */
export type Buckets = Map<number, number>;

/** One histogram's buckets, summed over the label sets that hold `labels` (e.g. `method="Renew",`; "": all). */
export function histogramBuckets(metrics: string, name: string, labels = ""): Buckets {
  const out: Buckets = new Map();
  for (const m of metrics.matchAll(new RegExp(`^${name}_bucket\\{(.*)le="([^"]+)"\\} (\\d+)$`, "gm"))) {
    if (!m[1]!.includes(labels)) continue;
    const le = m[2] === "+Inf" ? Infinity : Number(m[2]);
    out.set(le, (out.get(le) ?? 0) + Number(m[3]));
  }
  return out;
}

/** One histogram's sum of observations (seconds), over all its label sets. */
export function histogramSum(metrics: string, name: string): number {
  return [...metrics.matchAll(new RegExp(`^${name}_sum(?:\\{.*\\})? (\\S+)$`, "gm"))].reduce((n, m) => n + Number(m[1]), 0);
}

/** The service's Renew handler times. */
export const renewBuckets = (metrics: string): Buckets => histogramBuckets(metrics, "mezite_auth_request_duration_seconds", 'method="Renew",');

/** Adds to `into` what the histogram counted between `before` and `after` (a window's renewals). */
export function addBuckets(into: Buckets, after: Buckets, before: Buckets): Buckets {
  for (const [le, n] of after) into.set(le, (into.get(le) ?? 0) + n - (before.get(le) ?? 0));
  return into;
}

/** The upper bound (ms) of the first bucket holding the q-quantile: a histogram says no more. */
export function bucketQuantile(b: Buckets, q: number): number {
  const bounds = [...b.keys()].sort((x, y) => x - y);
  const total = b.get(Infinity) ?? 0;
  return 1000 * (bounds.find((le) => (b.get(le) ?? 0) >= q * total) ?? Infinity);
}

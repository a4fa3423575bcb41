/**
 * Bench section 2: renewals against the real auth service (SQLite default) with --workers=1 and
 * --workers=2, both running side by side and measured in alternating windows, so a neighbour's
 * load on the shared machine hits both alike.
 *
 * Per window: renewals completed (wall rate), CPU seconds of the service's processes (primary and
 * workers, from /proc) and of the load generators, and how busy the whole machine was. On 2 cores
 * the load generators take CPU the service would otherwise get, so the wall rate understates what
 * the service does with a core; renewals per service CPU-second is the figure compared with the
 * crypto floor and across worker counts.
 */
import type { ChildProcess } from "node:child_process";
import { setPriority } from "node:os";
import { join } from "node:path";
import type { Run, RunResult, Setup } from "./workers/loadgen.js";
import { ROOT, TSX, addBuckets, bucketQuantile, cpuSeconds, machineTicks, note, percentile, renewBuckets, spawnTracked, sum, type Buckets } from "./lib.js";
import { freePort } from "../test/harness/net.js";
import { createSeedRole, joinMany, startService, type Joined, type Service, type ServiceOptions } from "./service.js";

export interface ThroughputOptions {
  identities: number;
  /** Unmeasured saturation before the first round: the JIT warms up, as in a long-running service. */
  jitWarmupMs: number;
  rounds: number;
  warmupMs: number;
  windowMs: number;
  /** Renewals in flight per load generator at saturation. */
  concurrency: number;
}

export interface WindowFigures {
  renewals: number;
  errors: number;
  firstError: string;
  rate: number;
  serviceCores: number;
  /** Of which the primary process (connection hand-off to workers). */
  primaryCores: number;
  loadgenCores: number;
  machineBusy: number;
  perCpuSecond: number;
}

export interface WorkersFigures {
  workers: number;
  saturation: WindowFigures[];
  /** Means over the saturation windows. */
  rate: number;
  perCpuSecond: number;
  serviceCores: number;
  primaryCores: number;
  loadgenCores: number;
  machineBusy: number;
  halfRate: number;
  p50: number;
  p99: number;
  /** The one-worker service's own Renew handler time at half load, as histogram bucket bounds (ms). */
  handlerP50?: number;
  handlerP99?: number;
  /** The load generators' own event loop delay at half load, p99 (ms), the largest of any window: the client side's share of the tail. */
  loadgenLoopDelayP99: number;
  halfRenewals: number;
  /** Failed renewals in all windows, saturation and half load; the first one's message. */
  errors: number;
  firstError: string;
}

const LOADGENS = 2;

export class LoadGen {
  readonly proc: ChildProcess;
  private waiters: ((m: unknown) => void)[] = [];

  constructor() {
    this.proc = spawnTracked(process.execPath, [...TSX, join(ROOT, "bench/workers/loadgen.ts")], { stdio: ["ignore", "inherit", "inherit", "ipc"] });
    this.proc.on("message", (m) => this.waiters.shift()?.(m));
    this.proc.on("exit", (code) => {
      for (const w of this.waiters.splice(0)) w({ type: "result", completed: 0, errors: 1, firstError: `load generator exited ${code}`, latencies: [], loopDelayP99Ms: 0 });
    });
  }

  private ask<T>(m: Setup | Run): Promise<T> {
    return new Promise((res) => {
      this.waiters.push(res as (m: unknown) => void);
      this.proc.send(m);
    });
  }

  setup(s: Omit<Setup, "type">): Promise<unknown> {
    return this.ask({ type: "setup", ...s });
  }

  run(r: Omit<Run, "type">): Promise<RunResult> {
    return this.ask({ type: "run", ...r });
  }

  cpu(): number {
    return cpuSeconds(this.proc.pid!);
  }

  /**
   * Saturation runs the load generators niced, so the service gets the CPU it asks for first;
   * latency runs them at the daemons' normal priority, so their own waits for CPU do not count
   * as the service's latency. (Raising priority back needs root; otherwise it stays niced.)
   */
  nice(n: number): void {
    try {
      setPriority(this.proc.pid!, n);
    } catch {
      // not root: keep the current niceness
    }
  }
}

export interface Target {
  workers: number;
  svc: Service;
  gens: LoadGen[];
}

export async function prepare(svcOptions: ServiceOptions & { workers: number }, o: Pick<ThroughputOptions, "identities">): Promise<Target> {
  const workers = svcOptions.workers;
  const svc = await startService(svcOptions);
  await createSeedRole(svc);
  const { joined, caPem } = await joinMany(svc, "agent", o.identities);
  const gens = Array.from({ length: LOADGENS }, () => new LoadGen());
  const share = (i: number): Joined[] => joined.filter((_, j) => j % LOADGENS === i);
  await Promise.all(gens.map((g, i) => g.setup({ addr: svc.addr, caPem, identities: share(i), poolSize: 32 })));
  return { workers, svc, gens };
}

/** One measured window: every load generator runs `r`; CPU is read at the window's edges. */
export async function window(t: Target, r: Omit<Run, "type" | "startAt" | "warmupMs" | "durationMs">, o: Pick<ThroughputOptions, "warmupMs" | "windowMs">) {
  for (const g of t.gens) g.nice(r.mode === "closed" ? 10 : 0);
  const startAt = Date.now() + 300;
  const from = startAt + o.warmupMs;
  const to = from + o.windowMs;
  const sample = () => ({ svc: t.svc.cpu(), primary: t.svc.primaryCpu(), gens: sum(t.gens.map((g) => g.cpu())), machine: machineTicks() });
  const at = (when: number) => new Promise<ReturnType<typeof sample>>((res) => setTimeout(() => res(sample()), when - Date.now()));
  const [results, a, b] = await Promise.all([
    Promise.all(t.gens.map((g) => g.run({ ...r, startAt, warmupMs: o.warmupMs, durationMs: o.windowMs }))),
    at(from),
    at(to),
  ]);
  const secs = o.windowMs / 1000;
  const renewals = sum(results.map((x) => x.completed));
  const svcCpu = b.svc - a.svc;
  const figures: WindowFigures = {
    renewals,
    errors: sum(results.map((x) => x.errors)),
    firstError: results.find((x) => x.firstError)?.firstError ?? "",
    rate: renewals / secs,
    serviceCores: svcCpu / secs,
    primaryCores: (b.primary - a.primary) / secs,
    loadgenCores: (b.gens - a.gens) / secs,
    machineBusy: (b.machine.busy - a.machine.busy) / (b.machine.total - a.machine.total),
    perCpuSecond: svcCpu > 0 ? renewals / svcCpu : 0,
  };
  return { figures, results };
}

const mean = (xs: number[]) => sum(xs) / xs.length;

export async function throughput(o: ThroughputOptions): Promise<WorkersFigures[]> {
  note(`starting auth services (--workers=1 and --workers=2) and joining ${o.identities} agent identities in each`);
  // The one-worker service also serves /metrics: its Renew handler times, apart from the client's.
  const targets = [await prepare({ workers: 1, diagPort: await freePort() }, o), await prepare({ workers: 2 }, o)];
  try {
    for (const t of targets) await window(t, { mode: "closed", concurrency: o.concurrency, rate: 0 }, { warmupMs: 0, windowMs: o.jitWarmupMs });
    const sat = new Map<number, WindowFigures[]>(targets.map((t) => [t.workers, []]));
    for (let round = 0; round < o.rounds; round++) {
      for (const t of targets) {
        const { figures } = await window(t, { mode: "closed", concurrency: o.concurrency, rate: 0 }, o);
        sat.get(t.workers)!.push(figures);
        note(`saturation, --workers=${t.workers}, round ${round + 1}: ${figures.rate.toFixed(0)} renewals/s, service ${figures.serviceCores.toFixed(2)} cores, ${figures.perCpuSecond.toFixed(0)} per CPU-s`);
      }
    }
    const out: WorkersFigures[] = [];
    const half = new Map<number, { lat: number[]; renewals: number; errors: number; firstError: string; handler: Buckets; clientLoop: number }>(
      targets.map((t) => [t.workers, { lat: [], renewals: 0, errors: 0, firstError: "", handler: new Map(), clientLoop: 0 }]),
    );
    const rateOf = (w: number) => mean(sat.get(w)!.map((f) => f.rate));
    for (let round = 0; round < o.rounds; round++) {
      for (const t of targets) {
        const before = t.workers === 1 ? renewBuckets(await t.svc.metrics()) : undefined;
        const { results } = await window(t, { mode: "open", concurrency: 0, rate: rateOf(t.workers) / 2 / LOADGENS }, o);
        const h = half.get(t.workers)!;
        if (before) addBuckets(h.handler, renewBuckets(await t.svc.metrics()), before);
        h.lat.push(...results.flatMap((r) => r.latencies));
        h.clientLoop = Math.max(h.clientLoop, ...results.map((r) => r.loopDelayP99Ms));
        h.renewals += sum(results.map((r) => r.completed));
        h.errors += sum(results.map((r) => r.errors));
        h.firstError ||= results.find((r) => r.firstError)?.firstError ?? "";
        note(`half load, --workers=${t.workers}, round ${round + 1}: p50 ${percentile(h.lat, 50).toFixed(1)} ms, p99 ${percentile(h.lat, 99).toFixed(1)} ms`);
      }
    }
    for (const t of targets) {
      const s = sat.get(t.workers)!;
      const h = half.get(t.workers)!;
      const satErrors = sum(s.map((f) => f.errors));
      out.push({
        workers: t.workers,
        saturation: s,
        rate: rateOf(t.workers),
        perCpuSecond: sum(s.map((f) => f.renewals)) / sum(s.map((f) => f.renewals / (f.perCpuSecond || Infinity))),
        serviceCores: mean(s.map((f) => f.serviceCores)),
        primaryCores: mean(s.map((f) => f.primaryCores)),
        loadgenCores: mean(s.map((f) => f.loadgenCores)),
        machineBusy: mean(s.map((f) => f.machineBusy)),
        halfRate: rateOf(t.workers) / 2,
        p50: percentile(h.lat, 50),
        p99: percentile(h.lat, 99),
        ...(h.handler.size ? { handlerP50: bucketQuantile(h.handler, 0.5), handlerP99: bucketQuantile(h.handler, 0.99) } : {}),
        loadgenLoopDelayP99: h.clientLoop,
        halfRenewals: h.renewals,
        errors: h.errors + satErrors,
        firstError: s.find((f) => f.firstError)?.firstError || h.firstError,
      });
    }
    return out;
  } finally {
    for (const t of targets) {
      for (const g of t.gens) g.proc.kill("SIGKILL");
      await t.svc.stop();
    }
  }
}

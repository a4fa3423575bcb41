/**
 * Bench section 9: high availability on PostgreSQL. A private PostgreSQL (the tests' own harness),
 * service A on it, then service B on the same database with A's cluster key (as the HA tests start
 * it). The same renewal load (bench/workers/loadgen.ts: real joins, a new mTLS connection per
 * renewal) goes in alternating windows all to A ("one service") or half to each ("two services"),
 * so a neighbour's load on the shared machine hits both alike.
 *
 * Per window: renewals completed, CPU of each service, of PostgreSQL (postmaster and backends)
 * and of the load generators from /proc, how busy the whole machine was, and the statements the
 * services sent PostgreSQL (their mezite_backend_queries_total), i.e. round trips per renewal.
 */
import { copyFileSync, readFileSync } from "node:fs";
import { cpus } from "node:os";
import { join } from "node:path";
import pg from "pg";
import { freePort } from "../test/harness/net.js";
import { startPostgres } from "../test/harness/postgres.js";
import { PG_BIN_DIR } from "../test/harness/require.js";
import { machineTicks, note, sleep, sum, tempDir, treeCpuSeconds } from "./lib.js";
import { joinOnce } from "./rpc.js";
import { addIdentity, createSeedRole, startService, type Joined, type Service } from "./service.js";
import { LoadGen, type ThroughputOptions } from "./throughput.js";

/** Sizes and windows as section 2's: the same load generators, spread over one or two services. */
export type HaOptions = ThroughputOptions;

/** Statement name → count. */
type Queries = Record<string, number>;

/** Renewals/s and where the machine's CPU went: over a window, or the mean over windows. */
interface HaLoad {
  rate: number;
  /** Cores used by A and by B. */
  serviceCores: [number, number];
  postgresCores: number;
  loadgenCores: number;
  /** Share of all cores busy, whoever used them. */
  machineBusy: number;
  /** Cores busy with anything else: this bench's own process, other people's jobs. */
  otherCores: number;
}

export interface HaWindow extends HaLoad {
  services: 1 | 2;
  renewals: number;
  errors: number;
  firstError: string;
  /**
   * Statements the services sent from before the load started to after its last renewal was
   * answered (no renewal half done at either end), and the renewals they answered meanwhile.
   */
  queries: Queries;
  answered: number;
}

/** HaLoad's figures are the means over the windows. */
export interface HaSetup extends HaLoad {
  services: 1 | 2;
  windows: HaWindow[];
  /** Renewals per CPU-second of the services (A + B). */
  perServiceCpuSecond: number;
  /** CPU per renewal, ms: the services (A + B), PostgreSQL, the load generators (the daemons' side). */
  serviceCpuMs: number;
  postgresCpuMs: number;
  loadgenCpuMs: number;
  /** Statements sent per renewal answered, by name, over all windows (background ones included). */
  queriesPerRenewal: Queries;
  errors: number;
  firstError: string;
}

export interface HaFigures {
  identities: number;
  /** The machine's, which services, PostgreSQL and the load generators share. */
  cores: number;
  one: HaSetup;
  two: HaSetup;
  /** Statements per call: adding an identity through the admin API, and its join. */
  queriesPerAdd: Queries;
  queriesPerJoin: Queries;
  /** Statements per second both services send with no load (watchers, sweeps). */
  idleQueriesPerSecond: number;
}

const LOADGENS = 2;

/** The services' statements so far, by name, and the renewals they answered, from /metrics. */
async function counts(svcs: Service[]): Promise<{ queries: Queries; answered: number }> {
  const queries: Queries = {};
  let answered = 0;
  for (const text of await Promise.all(svcs.map((s) => s.metrics()))) {
    for (const m of text.matchAll(/^mezite_backend_queries_total\{statement="([^"]+)"\} (\d+)$/gm)) {
      queries[m[1]!] = (queries[m[1]!] ?? 0) + Number(m[2]);
    }
    answered += Number(/^mezite_auth_requests_total\{method="Renew",result="ok"\} (\d+)$/m.exec(text)?.[1] ?? 0);
  }
  return { queries, answered };
}
export const queries = async (svcs: Service[]) => (await counts(svcs)).queries;

const minus = (b: Queries, a: Queries): Queries => Object.fromEntries(Object.entries(b).map(([k, v]) => [k, v - (a[k] ?? 0)]).filter(([, v]) => v !== 0));
const add = (a: Queries, b: Queries): Queries => Object.fromEntries([...new Set([...Object.keys(a), ...Object.keys(b)])].map((k) => [k, (a[k] ?? 0) + (b[k] ?? 0)]));
const per = (q: Queries, n: number): Queries => Object.fromEntries(Object.entries(q).map(([k, v]) => [k, v / n]));
export const total = (q: Queries): number => sum(Object.values(q));

/** The postmaster's pid: the parent of a backend it started for us. */
async function postmasterPid(url: string): Promise<number> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    const backend = Number((await c.query<{ pid: number }>("SELECT pg_backend_pid() AS pid")).rows[0]!.pid);
    const stat = readFileSync(`/proc/${backend}/stat`, "utf8");
    return Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
  } finally {
    await c.end();
  }
}

/** Runs `fn` over `lanes` parallel lanes until `n` items are done. */
async function inLanes(n: number, lanes: number, fn: (i: number) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: lanes }, async () => {
    while (next < n) await fn(next++);
  }));
}

/** Two auth services on one private PostgreSQL, with /metrics; stop() stops all three. */
export interface Pair {
  a: Service;
  b: Service;
  /** PostgreSQL's postmaster: its CPU with its backends' is treeCpuSeconds(postmaster). */
  postmaster: number;
  stop(): Promise<void>;
}

/**
 * A private PostgreSQL (the tests' own harness), service A on it with the seed role, then service B
 * on the same database with A's cluster key (as the HA tests start it). `args`: more flags for both.
 */
export async function startPair(args: string[] = []): Promise<Pair> {
  // A missing PostgreSQL fails the section: a skipped HA figure must not look like a measured one.
  if (PG_BIN_DIR === undefined) throw new Error("PostgreSQL server binaries are missing (apt-get install postgresql): this section needs a real PostgreSQL");
  const db = await startPostgres();
  const started: Service[] = [];
  const stop = async () => {
    for (const s of started) await s.stop();
    await db.stop();
  };
  try {
    const postmaster = await postmasterPid(db.url);
    const a = await startService({ backend: db.url, diagPort: await freePort(), args });
    started.push(a);
    await createSeedRole(a);
    // B shares the database; it needs A's cluster key to unseal the CAs stored there.
    const bDir = tempDir("auth-b");
    copyFileSync(join(a.dataDir, "cluster.key"), join(bDir, "cluster.key"));
    const b = await startService({ backend: db.url, dataDir: bDir, diagPort: await freePort(), args });
    started.push(b);
    return { a, b, postmaster, stop };
  } catch (e) {
    await stop();
    throw e;
  }
}

export async function ha(o: HaOptions): Promise<HaFigures> {
  note("ha: starting PostgreSQL and auth services A and B on it");
  const pair = await startPair();
  const gens: LoadGen[] = [];
  try {
    const { a, b, postmaster } = pair;
    const both = [a, b];

    note(`ha: adding and joining ${o.identities} agent identities`);
    const tokens: string[] = [];
    const q0 = await queries(both);
    await inLanes(o.identities, 4, async (i) => void (tokens[i] = await addIdentity(a, `agent-${i}`)));
    const q1 = await queries(both);
    const joined: Joined[] = [];
    let caPem = "";
    // Half the joins through each service: either must serve what the other created.
    await inLanes(o.identities, 4, async (i) => {
      const r = await joinOnce(both[i % 2]!.addr, tokens[i]!);
      caPem = r.caPem;
      joined.push({ name: `agent-${i}`, certPem: r.certPem, keyPem: r.keyPem });
    });
    const q2 = await queries(both);

    gens.push(...Array.from({ length: LOADGENS }, () => new LoadGen()));
    await Promise.all(gens.map((g, i) => g.setup({ addr: a.addr, caPem, identities: joined.filter((_, j) => j % LOADGENS === i), poolSize: 32 })));

    /** One closed-loop window: every load generator on A (one service) or one on each (two). */
    const window = async (services: 1 | 2, w: { warmupMs: number; windowMs: number }): Promise<HaWindow> => {
      for (const g of gens) g.nice(10); // the services and PostgreSQL get the CPU they ask for first
      const startAt = Date.now() + 300;
      const from = startAt + w.warmupMs;
      const to = from + w.windowMs;
      const sample = () => ({ svc: both.map((s) => s.cpu()), pg: treeCpuSeconds(postmaster), gens: sum(gens.map((g) => g.cpu())), machine: machineTicks() });
      const at = async (when: number) => (await sleep(when - Date.now()), sample());
      const c0 = await counts(both);
      const [results, s0, s1] = await Promise.all([
        Promise.all(gens.map((g, i) => g.run({ addr: services === 2 ? both[i % 2]!.addr : a.addr, mode: "closed", concurrency: o.concurrency, rate: 0, startAt, warmupMs: w.warmupMs, durationMs: w.windowMs }))),
        at(from),
        at(to),
      ]);
      const c1 = await counts(both);
      const secs = w.windowMs / 1000;
      const renewals = sum(results.map((r) => r.completed));
      const serviceCores: [number, number] = [(s1.svc[0]! - s0.svc[0]!) / secs, (s1.svc[1]! - s0.svc[1]!) / secs];
      const postgresCores = (s1.pg - s0.pg) / secs;
      const loadgenCores = (s1.gens - s0.gens) / secs;
      const machineBusy = (s1.machine.busy - s0.machine.busy) / (s1.machine.total - s0.machine.total);
      return {
        services,
        renewals,
        errors: sum(results.map((r) => r.errors)),
        firstError: results.find((r) => r.firstError)?.firstError ?? "",
        rate: renewals / secs,
        serviceCores,
        postgresCores,
        loadgenCores,
        machineBusy,
        otherCores: Math.max(0, machineBusy * cpus().length - serviceCores[0] - serviceCores[1] - postgresCores - loadgenCores),
        queries: minus(c1.queries, c0.queries),
        answered: c1.answered - c0.answered,
      };
    };

    note("ha: warming up both services");
    await window(2, { warmupMs: 0, windowMs: o.jitWarmupMs });
    await window(1, { warmupMs: 0, windowMs: o.jitWarmupMs / 2 });
    const windows: HaWindow[] = [];
    for (let round = 0; round < o.rounds; round++) {
      for (const services of [1, 2] as const) {
        const w = await window(services, o);
        windows.push(w);
        const rt = w.answered ? (total(w.queries) / w.answered).toFixed(2) : "-";
        note(`ha: ${services} service(s), round ${round + 1}: ${w.rate.toFixed(0)} renewals/s, services ${w.serviceCores.map((c) => c.toFixed(2)).join("+")} cores, PostgreSQL ${w.postgresCores.toFixed(2)}, load ${w.loadgenCores.toFixed(2)}, machine ${(100 * w.machineBusy).toFixed(0)} %, ${rt} statements/renewal`);
      }
    }

    // No load: what the services send PostgreSQL on their own, over the figures above.
    const idleMs = Math.min(o.windowMs, 5000);
    const qi = await queries(both);
    await sleep(idleMs);
    const idleQueriesPerSecond = total(minus(await queries(both), qi)) / (idleMs / 1000);

    const summarize = (services: 1 | 2): HaSetup => {
      const ws = windows.filter((w) => w.services === services);
      const mean = (f: (w: HaWindow) => number) => sum(ws.map(f)) / ws.length;
      const renewals = sum(ws.map((w) => w.renewals));
      const secs = (ws.length * o.windowMs) / 1000;
      const cpuMs = (cores: (w: HaWindow) => number) => (renewals > 0 ? sum(ws.map((w) => cores(w) * o.windowMs)) / renewals : 0);
      const serviceCpuMs = cpuMs((w) => w.serviceCores[0] + w.serviceCores[1]);
      return {
        services,
        windows: ws,
        rate: renewals / secs,
        serviceCores: [mean((w) => w.serviceCores[0]), mean((w) => w.serviceCores[1])],
        postgresCores: mean((w) => w.postgresCores),
        loadgenCores: mean((w) => w.loadgenCores),
        machineBusy: mean((w) => w.machineBusy),
        otherCores: mean((w) => w.otherCores),
        perServiceCpuSecond: serviceCpuMs > 0 ? 1000 / serviceCpuMs : 0,
        serviceCpuMs,
        postgresCpuMs: cpuMs((w) => w.postgresCores),
        loadgenCpuMs: cpuMs((w) => w.loadgenCores),
        queriesPerRenewal: per(ws.map((w) => w.queries).reduce(add, {}), sum(ws.map((w) => w.answered)) || 1),
        errors: sum(ws.map((w) => w.errors)),
        firstError: ws.find((w) => w.firstError)?.firstError ?? "",
      };
    };
    return {
      identities: o.identities,
      cores: cpus().length,
      one: summarize(1),
      two: summarize(2),
      queriesPerAdd: per(minus(q1, q0), o.identities),
      queriesPerJoin: per(minus(q2, q1), o.identities),
      idleQueriesPerSecond,
    };
  } finally {
    for (const g of gens) g.proc.kill("SIGKILL");
    await pair.stop();
  }
}

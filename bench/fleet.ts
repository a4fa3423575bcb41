/**
 * Bench section 8, fleet (SPEC §20): what connected agents cost the auth service when nothing
 * happens, pushed (change streams) and polled (the old path), against one service on SQLite.
 *
 * A load generator (workers/fleet-gen.ts) holds N simulated identity daemons and M simulated node
 * agents, each on its own TLS connection with a real client certificate, speaking the real
 * protocol. Certificates come from real joins, but not one per simulated agent: joining 10,000
 * identities takes minutes here, and what a connection costs the service (the mTLS handshake with
 * its client certificate, authentication, the per-stream state) does not depend on whether two
 * connections present the same certificate. So `credentials` daemons and nodes are joined and
 * each certificate is shared by N / credentials connections.
 *
 * Service CPU is read from /proc (primary and workers) over a window at steady state, minus the
 * same window of the idle service, per agent-hour; memory is the service's RSS with the agents
 * connected minus before, per agent. A renewal's own service CPU is measured in the same run (a
 * new mTLS connection each, as daemons renew), and the target compares an agent-hour with three
 * of them (the default 20-minute interval). The service ends a daemon's stream after a day
 * (src/auth/watch.ts), so each daemon reconnects (a new mTLS handshake) once a day: that is
 * measured too and counted as 1/24 an hour. Then a lock's time to reach every node agent, renewal
 * latency at half the saturation rate with the fleet connected, and the same CPU and lock figures
 * with polling.
 */
import type { ChildProcess } from "node:child_process";
import { join } from "node:path";
import { WATCH_KEEPALIVE } from "../src/api/stream.js";
import { parseToken } from "../src/ca/jointoken.js";
import { joinNode } from "../src/node/join.js";
import { readNodeConfig, readNodeTls } from "../src/node/layout.js";
import { tokenFrom } from "../test/harness/auth.js";
import type { Run, RunResult, Setup } from "./workers/loadgen.js";
import type { Cred, FleetMessage, FleetReply } from "./workers/fleet-gen.js";
import { ROOT, TSX, addBuckets, bucketQuantile, cpuSecondsPrecise, histogramBuckets, histogramSum, mustRun, note, percentile, renewBuckets, rssKiB, sleep, spawnTracked, tempDir, type Buckets } from "./lib.js";
import { freePort } from "../test/harness/net.js";
import { renewOnce, joinOnce, type Renewer } from "./rpc.js";
import { addIdentity, createSeedRole, joinMany, mezctl, startService, type Service } from "./service.js";

export interface FleetOptions {
  /** Streams: simulated daemons and node agents. */
  daemons: number;
  nodes: number;
  /** Polling, for comparison: fewer (10,000 daemons polling would need more than this machine has). */
  poll: { daemons: number; nodes: number };
  /** Joined identities and nodes whose certificates the simulated agents share. */
  credentials: { daemons: number; nodes: number };
  windowMs: number;
  /** Renewals measured for a renewal's service CPU. */
  renewals: number;
  /** Open-loop renewals at half saturation, with the fleet connected. */
  latencyWindowMs: number;
}

export interface PathFigures {
  /** Service CPU per connected agent-hour, daemons and nodes together, ms. */
  agentCpuMsPerHour: number;
  /** Service CPU per connected agent-hour, ms. */
  daemonCpuMsPerHour: number;
  nodeCpuMsPerHour: number;
  /** A lock's time to reach every node agent (from before mezctl ran), ms; -1 when not all saw it. */
  lockMs: number;
  lockSeen: number;
  errors: number;
  firstError: string;
}

export interface FleetFigures {
  daemons: number;
  nodes: number;
  polled: { daemons: number; nodes: number };
  credentials: { daemons: number; nodes: number };
  windowMs: number;
  /** The stream path's windows: whole PING intervals (streamWindowMs). */
  streamWindowMs: number;
  idleCpuMsPerHour: number;
  renewalCpuMs: number;
  stream: PathFigures & {
    /** Reconnecting a daemon's stream (a new mTLS connection; once a day), ms of service CPU. */
    reopenCpuMs: number;
    rssKiBPerAgent: number;
    rssBeforeKiB: number;
    rssAfterKiB: number;
    /** The floor: a bare node:http2 TLS server holding as many idle streams, per connection. */
    bareRssKiBPerConnection: number;
  };
  poll: PathFigures;
  halfRate: number;
  renewP50Ms: number;
  renewP99Ms: number;
  renewErrors: number;
  /** The same rate with no agent connected, just before. */
  baseP50Ms: number;
  baseP99Ms: number;
  /**
   * The service's own Renew handler time, p99, as its histogram's bucket bound (ms), with the
   * fleet connected and without: whether the tail is inside the handler or around it (the TLS
   * handshake, the event loop before the handler runs, the load generators' share of the cores).
   */
  handlerP99Ms: { fleet: number; base: number };
  /** The event loop's delay (sampled every 200 ms), p99 as a bucket bound (ms), in the same windows. */
  loopDelayP99Ms: { fleet: number; base: number };
  /** The load generator's own event loop delay, p99 (ms), in the same windows: the client side's share of the tail. */
  loadgenLoopDelayP99Ms: { fleet: number; base: number };
  /** The service's GC pauses in the same windows: how many, their total and longest bucket (ms). */
  gc: { fleet: GcPauses; base: GcPauses };
}

export interface GcPauses {
  count: number;
  totalMs: number;
  maxMs: number;
}

/** What the service's /metrics says of a latency window: its Renew handler times, the event loop's delay, GC pauses. */
interface Inside {
  handler: Buckets;
  loop: Buckets;
  gc: Buckets;
  gcSeconds: number;
}

const newInside = (): Inside => ({ handler: new Map(), loop: new Map(), gc: new Map(), gcSeconds: 0 });

function addInside(into: Inside, after: string, before: string): void {
  addBuckets(into.handler, renewBuckets(after), renewBuckets(before));
  addBuckets(into.loop, histogramBuckets(after, "mezite_event_loop_delay_seconds"), histogramBuckets(before, "mezite_event_loop_delay_seconds"));
  addBuckets(into.gc, histogramBuckets(after, "mezite_gc_pause_seconds"), histogramBuckets(before, "mezite_gc_pause_seconds"));
  into.gcSeconds += histogramSum(after, "mezite_gc_pause_seconds") - histogramSum(before, "mezite_gc_pause_seconds");
}

function gcOf(w: Inside): GcPauses {
  const count = w.gc.get(Infinity) ?? 0;
  // With no pause, the lowest bucket would read as one: 0 instead.
  return { count, totalMs: w.gcSeconds * 1000, maxMs: count > 0 ? bucketQuantile(w.gc, 1) : 0 };
}

export class Gen {
  readonly proc: ChildProcess;
  private waiters: ((m: FleetReply) => void)[] = [];
  constructor(script: string) {
    this.proc = spawnTracked(process.execPath, [...TSX, "--max-old-space-size=4096", join(ROOT, script)], { stdio: ["ignore", "inherit", "inherit", "ipc"] });
    this.proc.on("message", (m) => this.waiters.shift()?.(m as FleetReply));
    this.proc.on("exit", (code) => {
      for (const w of this.waiters.splice(0)) w({ type: "error", ok: 0, failed: 1, firstError: `generator exited ${code}` });
    });
  }
  ask<T = FleetReply>(m: FleetMessage | Setup | Run): Promise<T> {
    return new Promise((res) => {
      this.waiters.push(res as unknown as (m: FleetReply) => void);
      this.proc.send(m);
    });
  }
  stop(): void {
    this.proc.disconnect();
  }
}

/**
 * After agents connect, before a window: connecting thousands of TLS connections leaves garbage,
 * and V8 collects it in major GCs over the next half minute or so (a service profiled with 5,000
 * daemons just connected: ~1 s of GC per 10 s for ~25 s, then 0.25 s once more 20 s later, then
 * 2-16 ms of CPU per 10 s). In a window, that is a burst's cost counted as steady state; it is
 * counted with the reconnect's cost instead.
 */
export const SETTLE_MS = 60_000;

export const serviceCpu = (svc: Service) => svc.pids().reduce((s, p) => s + cpuSecondsPrecise(p), 0);

/**
 * Service CPU seconds over `ms`. With `what`, each 10 s slice's CPU is noted too: a one-off (a
 * major GC) shows apart from a steady cost.
 */
async function cpuOver(svc: Service, ms: number, what?: string): Promise<number> {
  const a = serviceCpu(svc);
  const slices: string[] = [];
  for (let t = 0; t < ms; t += 10_000) {
    const s = serviceCpu(svc);
    await sleep(Math.min(10_000, ms - t));
    slices.push(((serviceCpu(svc) - s) * 1000).toFixed(0));
  }
  if (what) note(`fleet: ${what}: service CPU ms per 10 s: ${slices.join(" ")}`);
  return serviceCpu(svc) - a;
}

/**
 * The joins a simulated fleet stands on, through `svc`: the certificates its agents share, four
 * identities that renew (a renewal's cost, latency with the fleet connected) and "fleet-lock".
 */
export async function fleetSetup(svc: Service, credentials: { daemons: number; nodes: number }): Promise<{ daemons: Cred[]; nodes: Cred[]; renewers: Renewer[] }> {
  const { joined, caPem } = await joinMany(svc, "fleet-d", credentials.daemons);
  const daemons = joined.map((j) => ({ certPem: j.certPem, keyPem: j.keyPem, caPem }));
  const nodes = await joinNodes(svc, credentials.nodes);
  const renewers = await Promise.all(Array.from({ length: 4 }, async (_, i) => joinOnce(svc.addr, await addIdentity(svc, `fleet-r-${i}`))));
  await joinOnce(svc.addr, await addIdentity(svc, "fleet-lock"));
  return { daemons, nodes, renewers };
}

/** `count` renewals through `addr`, one in flight per renewer. */
export async function renewTimes(addr: string, renewers: Renewer[], count: number): Promise<void> {
  let next = 0;
  await Promise.all(renewers.map(async (r) => {
    while (next++ < count) await renewOnce(addr, r);
  }));
}

async function joinNodes(svc: Service, n: number): Promise<Cred[]> {
  const out: Cred[] = [];
  for (let i = 0; i < n; i++) {
    const token = tokenFrom((await mezctl(svc, "tokens", "add", "--type=node", "--labels=env=bench")).stdout);
    const dir = tempDir(`fleet-node-${i}`);
    await joinNode({ authServer: svc.addr, token: parseToken(token), hostname: `fleet-node-${i}`, principals: [], sshDir: dir, caPins: [], principalsUser: "nobody", mezdPath: join(ROOT, "bin/mezd"), force: false });
    const tls = readNodeTls(dir);
    out.push({ certPem: tls.cert_pem, keyPem: tls.key_pem, caPem: readNodeConfig(dir).tls_ca_pem });
  }
  return out;
}

export function check(what: string, r: FleetReply): void {
  if (r.type === "error") throw new Error(`fleet generator: ${what}: ${r.firstError}`);
  if (r.failed > 0) note(`fleet: ${what}: ${r.failed} failed, e.g. ${r.firstError}`);
}

/**
 * A lock on `identity` made through `svc`, from before mezctl runs to every node agent of each
 * generator having seen it (one result per generator: they may stream from other services).
 */
export async function lockTime(svc: Service, gens: Gen[], identity: string): Promise<{ ms: number; seen: number }[]> {
  const seen = gens.map((g) => g.ask({ type: "arm" }));
  await sleep(200); // armed before the lock exists
  const t0 = Date.now();
  await mezctl(svc, "agent-identities", "lock", identity, "--reason=bench");
  const rs = await Promise.all(seen);
  await mezctl(svc, "agent-identities", "unlock", identity);
  return rs.map((r) => ({ ms: r.seen === undefined || r.lastSeenAt === undefined ? -1 : r.lastSeenAt - t0, seen: r.seen ?? 0 }));
}

/**
 * A streaming agent's only traffic is a PING every WATCH_KEEPALIVE interval, each from the moment
 * its stream opened: a window shorter than that interval counts whichever agents happened to
 * connect in step with it. Whole intervals count each agent's PINGs exactly.
 */
export const streamWindowMs = (o: { windowMs: number }) => Math.ceil(o.windowMs / WATCH_KEEPALIVE.pingIntervalMs) * WATCH_KEEPALIVE.pingIntervalMs;

async function measurePath(svc: Service, gen: Gen, o: FleetOptions, n: { daemons: number; nodes: number }, mode: "stream" | "poll", idleCpuPerSec: number, lockIdentity: string): Promise<PathFigures & { reopenCpuMs?: number; rssBeforeKiB: number; rssAfterKiB: number }> {
  const windowMs = mode === "stream" ? streamWindowMs(o) : o.windowMs;
  const hour = (cpuS: number, agents: number) => (((cpuS / (windowMs / 1000)) * 3600) / agents) * 1000;
  const rssBeforeKiB = rssKiB(svc.pids()[0]!);
  note(`fleet (${mode}): connecting ${n.daemons} daemons`);
  let r = await gen.ask({ type: "connect", kind: "daemon", count: n.daemons, mode });
  check(`${mode} daemons`, r);
  let errors = r.failed;
  let firstError = r.firstError;
  await sleep(SETTLE_MS);
  const daemonsCpu = await cpuOver(svc, windowMs, `${mode}, daemons`);
  const daemonCpuMsPerHour = hour(daemonsCpu - idleCpuPerSec * (windowMs / 1000), n.daemons);
  note(`fleet (${mode}): connecting ${n.nodes} node agents`);
  r = await gen.ask({ type: "connect", kind: "node", count: n.nodes, mode });
  check(`${mode} nodes`, r);
  errors += r.failed;
  firstError ||= r.firstError;
  await sleep(SETTLE_MS);
  const allCpu = await cpuOver(svc, windowMs, `${mode}, all`);
  const nodeCpuMsPerHour = hour(allCpu - daemonsCpu, n.nodes);
  const agentCpuMsPerHour = hour(allCpu - idleCpuPerSec * (windowMs / 1000), n.daemons + n.nodes);
  const rssAfterKiB = rssKiB(svc.pids()[0]!);
  let reopenCpuMs: number | undefined;
  if (mode === "stream") {
    // Through the settling after it (its GCs), minus what the connected fleet costs meanwhile.
    const steadyCpuPerSec = allCpu / (windowMs / 1000);
    const before = serviceCpu(svc);
    const t0 = performance.now();
    r = await gen.ask({ type: "reopen" });
    check("reopen", r);
    await sleep(SETTLE_MS);
    const cpu = serviceCpu(svc) - before - steadyCpuPerSec * ((performance.now() - t0) / 1000);
    reopenCpuMs = (cpu / n.daemons) * 1000;
  }
  note(`fleet (${mode}): a lock's way to ${n.nodes} node agents`);
  const lock = (await lockTime(svc, [gen], lockIdentity))[0]!;
  return { agentCpuMsPerHour, daemonCpuMsPerHour, nodeCpuMsPerHour, lockMs: lock.seen === n.nodes ? lock.ms : -1, lockSeen: lock.seen, errors, firstError, rssBeforeKiB, rssAfterKiB, ...(reopenCpuMs !== undefined ? { reopenCpuMs } : {}) };
}

/** A service's flags for a simulated fleet of `agents`: one source address (127.0.0.1) for all, so the per-source caps must let it in. */
export const fleetServiceArgs = (agents: number): string[] => [
  `--max-change-streams=${Math.max(20_000, agents + 100)}`,
  `--max-change-streams-per-source=${agents + 100}`,
  `--max-connections=${agents + 4096}`,
  `--max-connections-per-source=${agents + 4096}`,
];

export async function fleet(o: FleetOptions): Promise<FleetFigures> {
  const agents = o.daemons + o.nodes;
  const svc = await startService({ args: fleetServiceArgs(agents), diagPort: await freePort() });
  const gen = new Gen("bench/workers/fleet-gen.ts");
  try {
    await createSeedRole(svc);
    note(`fleet: joining ${o.credentials.daemons} identities and ${o.credentials.nodes} nodes for the simulated agents' certificates`);
    const { daemons, nodes, renewers } = await fleetSetup(svc, o.credentials);
    const latency = await joinMany(svc, "fleet-l", 32);
    check("setup", await gen.ask({ type: "setup", addr: svc.addr, daemons, nodes }));

    note("fleet: the idle service, and a renewal's cost");
    await sleep(10_000); // what the joins left behind (GC, SQLite) settles
    const idleCpu = await cpuOver(svc, o.windowMs, "idle");
    const idleCpuPerSec = idleCpu / (o.windowMs / 1000);
    const c0 = serviceCpu(svc);
    const t0 = performance.now();
    await renewTimes(svc.addr, renewers, o.renewals);
    const renewalCpuMs = ((serviceCpu(svc) - c0 - idleCpuPerSec * ((performance.now() - t0) / 1000)) / o.renewals) * 1000;

    // Renewal latency at half the saturation rate (closed loop, 8 in flight, as section 2 does),
    // open loop: first with no agent connected, then with the fleet's streams.
    note("fleet: renewal saturation, then half of it with no agent connected");
    const lg = new Gen("bench/workers/loadgen.ts");
    const inside = { fleet: newInside(), base: newInside() };
    const half = async (rate: number, into: Inside) => {
      const before = await svc.metrics();
      const r = await lg.ask<RunResult>({ type: "run", mode: "open", concurrency: 0, rate, startAt: Date.now() + 500, warmupMs: 2000, durationMs: o.latencyWindowMs } as Run);
      addInside(into, await svc.metrics(), before);
      return r;
    };
    let base: RunResult;
    let lat: RunResult;
    let halfRate: number;
    let stream: Awaited<ReturnType<typeof measurePath>>;
    try {
      await lg.ask({ type: "setup", addr: svc.addr, caPem: latency.caPem, identities: latency.joined, poolSize: 64 } as Setup);
      const sat = await lg.ask<RunResult>({ type: "run", mode: "closed", concurrency: 8, rate: 0, startAt: Date.now() + 500, warmupMs: 2000, durationMs: o.latencyWindowMs } as Run);
      halfRate = Math.max(1, Math.floor(sat.completed / (o.latencyWindowMs / 1000) / 2));
      note(`fleet: saturation ${(sat.completed / (o.latencyWindowMs / 1000)).toFixed(0)}/s; renewals at ${halfRate}/s`);
      await sleep(2000);
      base = await half(halfRate, inside.base);
      await sleep(5000);
      stream = await measurePath(svc, gen, o, o, "stream", idleCpuPerSec, "fleet-lock");
      note(`fleet: renewals at ${halfRate}/s with the fleet connected`);
      lat = await half(halfRate, inside.fleet);
    } finally {
      lg.stop();
    }
    const { rssBeforeKiB, rssAfterKiB } = stream;

    check("close", await gen.ask({ type: "close" }));
    await sleep(6000); // the closed connections' sessions end
    const poll = await measurePath(svc, gen, o, o.poll, "poll", idleCpuPerSec, "fleet-lock");
    check("close", await gen.ask({ type: "close" }));

    note(`fleet: the floor, a bare node:http2 server holding ${agents} streams`);
    const bare = JSON.parse((await mustRun(process.execPath, [...TSX, join(ROOT, "bench/workers/bare-h2.ts"), String(agents)], { timeoutMs: 300_000 })).stdout.trim().split("\n").pop()!) as { rssKiBPerConnection: number };

    return {
      daemons: o.daemons,
      nodes: o.nodes,
      credentials: o.credentials,
      windowMs: o.windowMs,
      streamWindowMs: streamWindowMs(o),
      polled: o.poll,
      idleCpuMsPerHour: idleCpuPerSec * 3600 * 1000,
      renewalCpuMs,
      stream: {
        agentCpuMsPerHour: stream.agentCpuMsPerHour,
        daemonCpuMsPerHour: stream.daemonCpuMsPerHour,
        nodeCpuMsPerHour: stream.nodeCpuMsPerHour,
        lockMs: stream.lockMs,
        lockSeen: stream.lockSeen,
        errors: stream.errors,
        firstError: stream.firstError,
        reopenCpuMs: stream.reopenCpuMs ?? 0,
        rssBeforeKiB,
        rssAfterKiB,
        rssKiBPerAgent: (rssAfterKiB - rssBeforeKiB) / agents,
        bareRssKiBPerConnection: bare.rssKiBPerConnection,
      },
      poll: { agentCpuMsPerHour: poll.agentCpuMsPerHour, daemonCpuMsPerHour: poll.daemonCpuMsPerHour, nodeCpuMsPerHour: poll.nodeCpuMsPerHour, lockMs: poll.lockMs, lockSeen: poll.lockSeen, errors: poll.errors, firstError: poll.firstError },
      halfRate,
      renewP50Ms: percentile(lat.latencies, 50),
      renewP99Ms: percentile(lat.latencies, 99),
      renewErrors: lat.errors,
      baseP50Ms: percentile(base.latencies, 50),
      baseP99Ms: percentile(base.latencies, 99),
      handlerP99Ms: { fleet: bucketQuantile(inside.fleet.handler, 0.99), base: bucketQuantile(inside.base.handler, 0.99) },
      loopDelayP99Ms: { fleet: bucketQuantile(inside.fleet.loop, 0.99), base: bucketQuantile(inside.base.loop, 0.99) },
      gc: { fleet: gcOf(inside.fleet), base: gcOf(inside.base) },
      loadgenLoopDelayP99Ms: { fleet: lat.loopDelayP99Ms, base: base.loopDelayP99Ms },
    };
  } finally {
    gen.stop();
    await svc.stop();
  }
}

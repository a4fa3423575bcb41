/**
 * Bench section 10, the fleet on two services (SPEC §20): section 8's simulated fleet split evenly
 * over auth services A and B on one PostgreSQL (section 9's set-up), each half held by its own load
 * generator (workers/fleet-gen.ts) against its own service.
 *
 * What matters with two services: a lock made through one reaches the node agents streaming from
 * the other, which learns of it only through the shared database (its revocation state re-reads a
 * change mark each second, src/auth/revocations.ts). So locks are made through A and through B in
 * turn, and each generator reports when the last of its node agents saw the lock, from mezctl's
 * start. And an idle fleet must cost neither service nor the database per agent: each service's
 * CPU (from /proc), PostgreSQL's (postmaster and backends), and the statements the services send
 * it (their mezite_backend_queries_total) over a window with no agent connected, then over one of
 * the same length with the fleet connected. A renewal's cost on each service (a new mTLS connection
 * each) is the yardstick, as in section 8.
 */
import { note, rssKiB, sleep, treeCpuSeconds } from "./lib.js";
import type { Service } from "./service.js";
import { Gen, SETTLE_MS, check, fleetServiceArgs, fleetSetup, lockTime, renewTimes, serviceCpu, streamWindowMs, type FleetOptions } from "./fleet.js";
import type { FleetReply } from "./workers/fleet-gen.js";
import { queries, startPair, total } from "./ha.js";

/** Section 8's sizes (daemons and nodes in all, half on each service; renewals on each), and locks made through each service. */
export type FleetHaOptions = Pick<FleetOptions, "daemons" | "nodes" | "credentials" | "windowMs" | "renewals"> & { locks: number };

export interface FleetHaService {
  daemons: number;
  nodes: number;
  /** This service's CPU with no agent connected, per hour, ms (subtracted below). */
  idleCpuMsPerHour: number;
  /** Its CPU per connected agent-hour, daemons and nodes together, ms. */
  agentCpuMsPerHour: number;
  /** Reconnecting a daemon's stream (once a day), ms of its CPU. */
  reopenCpuMs: number;
  /** A renewal through it (new mTLS connection): its CPU, and PostgreSQL's, ms. */
  renewalCpuMs: number;
  renewalPostgresCpuMs: number;
  rssBeforeKiB: number;
  rssAfterKiB: number;
  rssKiBPerAgent: number;
  /** Statements it sends PostgreSQL per second: no agent connected, half its agents, all of them. */
  idleQueriesPerSecond: number;
  halfQueriesPerSecond: number;
  fleetQueriesPerSecond: number;
}

/** One lock: through which service, and per service, when the last of its node agents saw it. */
export interface FleetHaLock {
  via: "A" | "B";
  /** From mezctl's start, ms; -1 when not all of that service's node agents saw it (within 30 s). */
  ms: [number, number];
  seen: [number, number];
}

export interface FleetHaFigures {
  daemons: number;
  nodes: number;
  credentials: { daemons: number; nodes: number };
  windowMs: number;
  services: [FleetHaService, FleetHaService];
  /** PostgreSQL's CPU per hour, no agent connected and with the fleet, ms. */
  postgresIdleCpuMsPerHour: number;
  postgresFleetCpuMsPerHour: number;
  locks: FleetHaLock[];
  errors: number;
  firstError: string;
}

/** Long enough for a few of the services' once-a-second looks. */
const STATEMENTS_WINDOW_MS = 10_000;

/** Everything the windows compare, at one instant. */
async function sample(svcs: Service[], postmaster: number) {
  const q = await Promise.all(svcs.map((s) => queries([s])));
  return { cpu: svcs.map(serviceCpu), pg: treeCpuSeconds(postmaster), queries: q.map(total), at: performance.now() };
}
type Sample = Awaited<ReturnType<typeof sample>>;

/** CPU seconds and statements per second of each service, and PostgreSQL's CPU seconds, from `s0` to `s1`. */
function between(s0: Sample, s1: Sample) {
  const secs = (s1.at - s0.at) / 1000;
  return { secs, cpu: s1.cpu.map((c, i) => c - s0.cpu[i]!), pg: s1.pg - s0.pg, qps: s1.queries.map((q, i) => (q - s0.queries[i]!) / secs) };
}

export async function fleetHa(o: FleetHaOptions): Promise<FleetHaFigures> {
  const half = (n: number): [number, number] => [Math.ceil(n / 2), Math.floor(n / 2)];
  const daemons = half(o.daemons);
  const nodes = half(o.nodes);
  note("fleet-ha: starting PostgreSQL and auth services A and B on it");
  const pair = await startPair(fleetServiceArgs(o.daemons + o.nodes));
  const { a, b, postmaster } = pair;
  const svcs = [a, b];
  const gens = [new Gen("bench/workers/fleet-gen.ts"), new Gen("bench/workers/fleet-gen.ts")];
  try {
    note(`fleet-ha: joining ${o.credentials.daemons} identities and ${o.credentials.nodes} nodes (through A) for the simulated agents' certificates`);
    const { daemons: daemonCreds, nodes: nodeCreds, renewers } = await fleetSetup(a, o.credentials);
    await Promise.all(gens.map(async (g, i) => check(`setup ${"AB"[i]}`, await g.ask({ type: "setup", addr: svcs[i]!.addr, daemons: daemonCreds, nodes: nodeCreds }))));

    note("fleet-ha: both services with no agent connected, and a renewal's cost on each");
    await sleep(10_000); // what the joins left behind (GC, autovacuum) settles
    let s0 = await sample(svcs, postmaster);
    await sleep(o.windowMs);
    const idle = between(s0, await sample(svcs, postmaster));
    const idleCpuPerSec = idle.cpu.map((c) => c / idle.secs);
    const renewal: { cpuMs: number; pgCpuMs: number }[] = [];
    for (const [i, svc] of svcs.entries()) {
      s0 = await sample(svcs, postmaster);
      await renewTimes(svc.addr, renewers, o.renewals);
      const d = between(s0, await sample(svcs, postmaster));
      renewal.push({ cpuMs: ((d.cpu[i]! - idleCpuPerSec[i]! * d.secs) / o.renewals) * 1000, pgCpuMs: ((d.pg - (idle.pg / idle.secs) * d.secs) / o.renewals) * 1000 });
    }

    const rssBeforeKiB = svcs.map((s) => rssKiB(s.pids()[0]!));
    let errors = 0;
    let firstError = "";
    const tally = (what: string, r: FleetReply) => {
      check(what, r);
      errors += r.failed;
      firstError ||= r.firstError;
    };
    // In two halves, counting the statements sent with half the fleet connected: what an idle
    // fleet costs the database must not grow with it. (Statements are counted exactly, so a short
    // window does; CPU needs the long one.)
    let halfQueriesPerSecond: number[] = [];
    for (const part of [0, 1]) {
      for (const kind of ["daemon", "node"] as const) {
        const count = (kind === "daemon" ? daemons : nodes).map((n) => half(n)[part]!);
        note(`fleet-ha: connecting ${count.join(" + ")} ${kind}s to A + B`);
        await Promise.all(gens.map(async (g, i) => tally(`${kind}s on ${"AB"[i]}`, await g.ask({ type: "connect", kind, count: count[i]!, mode: "stream" }))));
      }
      if (part === 0) {
        await sleep(3000);
        s0 = await sample(svcs, postmaster);
        await sleep(STATEMENTS_WINDOW_MS);
        halfQueriesPerSecond = between(s0, await sample(svcs, postmaster)).qps;
      }
    }
    await sleep(SETTLE_MS);
    s0 = await sample(svcs, postmaster);
    await sleep(streamWindowMs(o)); // whole PING intervals, as section 8's stream windows
    const connected = between(s0, await sample(svcs, postmaster));
    const rssAfterKiB = svcs.map((s) => rssKiB(s.pids()[0]!));

    note("fleet-ha: every daemon's stream reconnected (once a day each)");
    s0 = await sample(svcs, postmaster);
    await Promise.all(gens.map(async (g, i) => tally(`reopen on ${"AB"[i]}`, await g.ask({ type: "reopen" }))));
    const reopen = between(s0, await sample(svcs, postmaster));

    const locks: FleetHaLock[] = [];
    for (let round = 0; round < o.locks; round++) {
      for (const [i, via] of (["A", "B"] as const).entries()) {
        await sleep(3000); // the last unlock reached every node agent
        const r = await lockTime(svcs[i]!, gens, "fleet-lock");
        const lock: FleetHaLock = { via, ms: [0, 1].map((j) => (r[j]!.seen === nodes[j] ? r[j]!.ms : -1)) as [number, number], seen: [r[0]!.seen, r[1]!.seen] };
        note(`fleet-ha: a lock through ${via}: A's node agents ${lock.ms[0]} ms, B's ${lock.ms[1]} ms`);
        locks.push(lock);
      }
    }
    for (const [i, g] of gens.entries()) check(`close on ${"AB"[i]}`, await g.ask({ type: "close" }));

    const perHour = (cpuS: number, secs: number) => (cpuS / secs) * 3600 * 1000;
    const service = (i: number): FleetHaService => {
      const agents = daemons[i]! + nodes[i]!;
      return {
        daemons: daemons[i]!,
        nodes: nodes[i]!,
        idleCpuMsPerHour: idleCpuPerSec[i]! * 3600 * 1000,
        agentCpuMsPerHour: perHour(connected.cpu[i]! - idleCpuPerSec[i]! * connected.secs, connected.secs) / agents,
        reopenCpuMs: ((reopen.cpu[i]! - idleCpuPerSec[i]! * reopen.secs) / daemons[i]!) * 1000,
        renewalCpuMs: renewal[i]!.cpuMs,
        renewalPostgresCpuMs: renewal[i]!.pgCpuMs,
        rssBeforeKiB: rssBeforeKiB[i]!,
        rssAfterKiB: rssAfterKiB[i]!,
        rssKiBPerAgent: (rssAfterKiB[i]! - rssBeforeKiB[i]!) / agents,
        idleQueriesPerSecond: idle.qps[i]!,
        halfQueriesPerSecond: halfQueriesPerSecond[i]!,
        fleetQueriesPerSecond: connected.qps[i]!,
      };
    };
    return {
      daemons: o.daemons,
      nodes: o.nodes,
      credentials: o.credentials,
      windowMs: streamWindowMs(o),
      services: [service(0), service(1)],
      postgresIdleCpuMsPerHour: perHour(idle.pg, idle.secs),
      postgresFleetCpuMsPerHour: perHour(connected.pg, connected.secs),
      locks,
      errors,
      firstError,
    };
  } finally {
    for (const g of gens) g.stop();
    await pair.stop();
  }
}

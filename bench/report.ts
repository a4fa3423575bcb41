/**
 * The bench's table: every figure of a section on its own line, then each target with its value
 * and whether it is met. Ratios are of figures measured side by side in the same run.
 */
import type { DaemonFigures, NodeFigures, StandaloneFigures } from "./agents.js";
import type { FleetFigures, GcPauses } from "./fleet.js";
import type { FleetHaFigures, FleetHaService } from "./fleet-ha.js";
import type { HaFigures, HaSetup } from "./ha.js";
import type { RevocationsFigures } from "./revocations.js";
import type { ScaleFigures } from "./scale.js";
import type { WorkersFigures } from "./throughput.js";

export interface FloorFigures {
  handshakeUs: number;
  handshakeTicketsUs: number;
  h2CallUs: number;
  grpcCallUs: number;
  ed25519Us: number;
  p256Us: number;
  issueUs: number;
  floorUs: number;
  floorPerCore: number;
}

export interface Results {
  floor?: FloorFigures;
  throughput?: WorkersFigures[];
  scale?: ScaleFigures;
  daemon?: DaemonFigures;
  node?: NodeFigures;
  standalone?: StandaloneFigures;
  revocations?: RevocationsFigures;
  fleet?: FleetFigures;
  ha?: HaFigures;
  fleetHa?: FleetHaFigures;
}

export interface TargetRow {
  target: string;
  value: string;
  met: boolean;
}

const ms = (us: number) => `${(us / 1000).toFixed(us < 1000 ? 3 : 2)} ms`;
const pct = (x: number) => `${(100 * x).toFixed(0)} %`;
const x = (r: number) => `${r.toFixed(2)}×`;
const f0 = (n: number) => n.toFixed(0);
const f1 = (n: number) => n.toFixed(1);
/** Statements by name → all of them. */
const total = (q: Record<string, number>) => Object.values(q).reduce((a, b) => a + b, 0);

function line(label: string, ...values: string[]): string {
  return `  ${label.padEnd(56)}${values.map((v) => v.padStart(14)).join("")}`;
}

/** Renewals per service CPU-second, as a share of what the floor allows one core. */
export const floorShare = (w: WorkersFigures, f: FloorFigures) => w.perCpuSecond / f.floorPerCore;
/** 1 → 2 workers if each had its own core: per-CPU-second efficiency, times the cores. */
export const cpuScaling = (w1: WorkersFigures, w2: WorkersFigures) => (2 * w2.perCpuSecond) / w1.perCpuSecond;

export function sections(r: Results): string[] {
  const out: string[] = [];
  const { floor: f, throughput: t, scale: s, daemon: d, node: n } = r;
  if (f) {
    out.push("1. Crypto floor: CPU one renewal cannot avoid, one core (CPU time, not wall)");
    out.push(line("TLS 1.3 handshake with client cert, server side", ms(f.handshakeUs)));
    out.push(line("  the same with TLS 1.3 session tickets (Node's default)", ms(f.handshakeTicketsUs)));
    out.push(line("Ed25519 signature (SSH certificate)", ms(f.ed25519Us)));
    out.push(line("2 × ECDSA P-256 signature (X.509 certificates)", ms(2 * f.p256Us)));
    out.push(line("floor per renewal", ms(f.floorUs)));
    out.push(line("floor: renewals/s per core", f0(f.floorPerCore)));
    out.push(line("[why] Renew, canned reply, gRPC framed by hand", ms(f.h2CallUs)));
    out.push(line("[why]   the same through connect-node", ms(f.grpcCallUs)));
    out.push(line("[why] issueAgentCertificates (3 signatures inside)", ms(f.issueUs)));
    out.push("");
  }
  if (t) {
    const [w1, w2] = t;
    out.push("2. Auth service throughput, SQLite, new mTLS connection per renewal");
    out.push(line("", ...t.map((w) => `--workers=${w.workers}`)));
    out.push(line("renewals/s at saturation (wall)", ...t.map((w) => f0(w.rate))));
    out.push(line("service CPU, cores (primary + workers)", ...t.map((w) => w.serviceCores.toFixed(2))));
    out.push(line("  of which the primary (hands out connections)", ...t.map((w) => (w.workers > 1 ? w.primaryCores.toFixed(2) : "-"))));
    out.push(line("load generators' CPU, cores", ...t.map((w) => w.loadgenCores.toFixed(2))));
    out.push(line("whole machine busy", ...t.map((w) => pct(w.machineBusy))));
    out.push(line("service CPU per renewal", ...t.map((w) => ms(1e6 / w.perCpuSecond))));
    out.push(line("renewals per service CPU-second", ...t.map((w) => f0(w.perCpuSecond))));
    if (f) {
      out.push(line("vs crypto floor, per CPU-second (fair)", ...t.map((w) => pct(floorShare(w, f)))));
      out.push(line("vs crypto floor, wall (rate / floor / workers)", ...t.map((w) => pct(w.rate / (f.floorPerCore * w.workers)))));
    }
    out.push(line("open-loop rate for latency (half of saturation)", ...t.map((w) => `${f0(w.halfRate)}/s`)));
    out.push(line("latency p50 at half load", ...t.map((w) => `${f1(w.p50)} ms`)));
    out.push(line("latency p99 at half load", ...t.map((w) => `${f1(w.p99)} ms`)));
    const bound = (ms: number | undefined) => (ms === undefined ? "-" : `≤ ${ms} ms`);
    out.push(line("  of which the service's Renew handler, p50", ...t.map((w) => bound(w.handlerP50))));
    out.push(line("  of which the service's Renew handler, p99", ...t.map((w) => bound(w.handlerP99))));
    out.push(line("  the load generators' own event loop delay, p99", ...t.map((w) => `${f1(w.loadgenLoopDelayP99)} ms`)));
    out.push(line("failed renewals", ...t.map((w) => String(w.errors))));
    for (const w of t) if (w.firstError) out.push(`  first failure, --workers=${w.workers}: ${w.firstError}`);
    if (w1 && w2) {
      out.push(line("1 → 2 workers, wall (2 cores shared with load)", x(w2.rate / w1.rate)));
      out.push(line("1 → 2 workers, per CPU-second × 2 cores (fair)", x(cpuScaling(w1, w2))));
    }
    out.push("");
  }
  if (s) {
    const n100 = s.identities.toLocaleString("en");
    out.push(`3. Scale: ${n100} identities against a nearly empty service (same run)`);
    out.push(line("", "empty", n100, "ratio"));
    out.push(line("join latency (median)", `${f1(s.join.empty)} ms`, `${f1(s.join.full)} ms`, x(s.join.full / s.join.empty)));
    out.push(line("renewal latency (median)", `${f1(s.renew.empty)} ms`, `${f1(s.renew.full)} ms`, x(s.renew.full / s.renew.empty)));
    out.push(line("mezctl agent-identities ls: first row (wall)", `${f0(s.ls.empty.firstMs)} ms`, `${f0(s.ls.full.firstMs)} ms`, x(s.ls.full.firstMs / s.ls.empty.firstMs)));
    out.push(line("mezctl agent-identities ls: all rows (wall)", `${f0(s.ls.empty.allMs)} ms`, `${f0(s.ls.full.allMs)} ms`, x(s.ls.full.allMs / s.ls.empty.allMs)));
    out.push(line("  --format=json (every field): first / all", "", `${f0(s.ls.fullJson.firstMs)} ms`, `${f0(s.ls.fullJson.allMs)} ms`));
    out.push(line("mezctl agent-identities status NAME (wall)", `${f0(s.status.empty)} ms`, `${f0(s.status.full)} ms`, x(s.status.full / s.status.empty)));
    out.push(line("dashboard: identities, first page (HTML over HTTPS)", `${f0(s.web.identities.empty)} ms`, `${f0(s.web.identities.full)} ms`, x(s.web.identities.full / s.web.identities.empty)));
    out.push(line("dashboard: identities, search + deep page cursor", `${f0(s.web.search.empty)} ms`, `${f0(s.web.search.full)} ms`, x(s.web.search.full / s.web.search.empty)));
    out.push(line("dashboard: one identity's page", `${f0(s.web.identity.empty)} ms`, `${f0(s.web.identity.full)} ms`, x(s.web.identity.full / s.web.identity.empty)));
    out.push(line("dashboard: overview (counts, CA holders, chart)", `${f0(s.web.overview.empty)} ms`, `${f0(s.web.overview.full)} ms`, x(s.web.overview.full / s.web.overview.empty)));
    out.push(line("bulk insert / database size", `${f1(s.insertSeconds)} s`, `${f0(s.dbMiB)} MiB`));
    out.push("");
  }
  if (d) {
    out.push("4. Agent identity daemon (bin/mezd) against a bare node, same run");
    out.push(line("", "mezd", "bare node", "ratio"));
    out.push(line("--one-shot renewal, wall (median)", `${f0(d.oneShotMs)} ms`, `${f0(d.bareNodeMs)} ms`, x(d.oneShotMs / d.bareNodeMs)));
    out.push(line("--one-shot join, wall (once)", `${f0(d.joinOneShotMs)} ms`));
    out.push(line("idle RSS", `${f1(d.idleRssKiB / 1024)} MiB`, `${f1(d.bareRssKiB / 1024)} MiB`, x(d.idleRssKiB / d.bareRssKiB)));
    out.push(line("idle CPU, steady (median second × 60)", `${f1(d.idleSteadyCpuMsPerMin)} ms/min`, `${f1(d.bareSteadyCpuMsPerMin)} ms/min`));
    out.push(line("idle CPU, whole window (with the post-renewal GC)", `${f1(d.idleCpuMsPerMin)} ms/min`, `${f1(d.bareCpuMsPerMin)} ms/min`));
    out.push("");
  }
  if (n) {
    out.push("5. Node: sshd's AuthorizedPrincipalsCommand");
    out.push(line("", "mezd", "bare node", "ratio"));
    out.push(line("mezd node principals, wall (median)", `${f0(n.principalsMs)} ms`, `${f0(n.bareNodeMs)} ms`, x(n.principalsMs / n.bareNodeMs)));
    out.push(line("  beyond Node's own start-up", `${f0(n.principalsMs - n.bareNodeMs)} ms`));
    out.push("");
  }
  const sa = r.standalone;
  if (sa) {
    out.push(`6. Standalone mezd (release tarball ${f1(sa.tarballBytes / 1e6)} MB; mezd, msh and mezctl one executable of ${f1(sa.mezdBytes / 1e6)} MB) against the bundle and a bare node, same rounds`);
    out.push(line("", "standalone", "bundle", "bare node", "ratio"));
    out.push(line("--one-shot renewal, wall (median)", `${f0(sa.oneShotMs)} ms`, `${f0(sa.bundleOneShotMs)} ms`, `${f0(sa.bareNodeMs)} ms`, x(sa.oneShotMs / sa.bareNodeMs)));
    if (sa.noCacheOneShotMs !== undefined) out.push(line("  the standalone built without code cache", `${f0(sa.noCacheOneShotMs)} ms`, "", "", x(sa.noCacheOneShotMs / sa.bareNodeMs)));
    out.push(line("  Node's floor: a bare node's one mTLS HTTP/2 request", "", "", `${f0(sa.clientFloorMs)} ms`, x(sa.clientFloorMs / sa.bareNodeMs)));
    out.push(line("mezd node principals, wall (median)", `${f0(sa.principalsMs)} ms`, `${f0(sa.bundlePrincipalsMs)} ms`));
    out.push(line("idle daemon RSS", `${f1(sa.idleRssKiB / 1024)} MiB`, `${f1(sa.bundleIdleRssKiB / 1024)} MiB`, `${f1(sa.bareRssKiB / 1024)} MiB`, x(sa.idleRssKiB / sa.bareRssKiB)));
    out.push("");
  }
  const rv = r.revocations;
  if (rv) {
    out.push(`7. Revocations: ${rv.serials.toLocaleString("en")} revoked serials (deleted instances' tombstones, SQLite), one process`);
    out.push(line("KRL rebuild past the cache, wall (median)", `${f0(rv.rebuildMs)} ms`));
    out.push(line("  a look past the cache with nothing changed (each second)", `${f0(rv.unchangedMs * 1000)} µs`, x(rv.rebuildMs / rv.unchangedMs)));
    out.push(line("longest event-loop hold during rebuilds, CPU", `${f1(rv.stallCpuMs)} ms`));
    out.push(line("  the same, wall (with time not scheduled at all)", `${f1(rv.stallMs)} ms`));
    out.push(line("KRL size (nodes fetch it only when it changed)", `${f0(rv.krlBytes / 1024)} KiB`, `${(rv.krlBytes / rv.serials).toFixed(2)} B/serial`));
    out.push(line("", "CPU", "wall"));
    out.push(line("ssh-keygen -Q of a revoked cert (sshd, per login)", `${f0(rv.queryCpuMs)} ms`, `${f0(rv.queryMs)} ms`));
    out.push(line("  the same with a one-serial KRL (its start-up)", `${f0(rv.queryOneSerialCpuMs)} ms`, `${f0(rv.queryOneSerialMs)} ms`));
    out.push(line("bulk insert of the tombstones", `${f1(rv.insertMs / 1000)} s`));
    out.push("");
  }
  const fl = r.fleet;
  if (fl) {
    const s = fl.stream;
    const p = fl.poll;
    out.push(`8. Fleet: ${fl.daemons.toLocaleString("en")} simulated daemons and ${fl.nodes.toLocaleString("en")} node agents, one service (SQLite), each agent on its own mTLS connection`);
    out.push(`   (certificates of ${fl.credentials.daemons} joined identities and ${fl.credentials.nodes} joined nodes, shared; CPU over ${f0(fl.windowMs / 1000)} s windows, ${f0(fl.streamWindowMs / 1000)} s on streams (whole PING intervals), minus the idle service's)`);
    out.push(line("", `streams`, `polling`));
    out.push(line("  agents: daemons + nodes", `${fl.daemons}+${fl.nodes}`, `${fl.polled.daemons}+${fl.polled.nodes}`));
    out.push(line("service CPU per connected agent-hour (all connected)", ms(s.agentCpuMsPerHour * 1000), ms(p.agentCpuMsPerHour * 1000)));
    out.push(line("  + a daemon's reconnect a day (its stream's lifetime)", ms(fleetAgentHour(fl) * 1000), "-"));
    out.push(line("  daemons alone (window before the nodes joined)", ms(s.daemonCpuMsPerHour * 1000), ms(p.daemonCpuMsPerHour * 1000)));
    out.push(line("  nodes alone (the next window's increase)", ms(s.nodeCpuMsPerHour * 1000), ms(p.nodeCpuMsPerHour * 1000)));
    out.push(line("a lock seen by every node agent (from mezctl's start)", s.lockMs >= 0 ? `${f0(s.lockMs)} ms` : `${s.lockSeen}/${fl.nodes} saw it`, p.lockMs >= 0 ? `${f0(p.lockMs)} ms` : `${p.lockSeen}/${fl.polled.nodes} saw it`));
    out.push(line("agents that failed to connect or poll", f0(s.errors), f0(p.errors)));
    out.push(line("a renewal's service CPU (new mTLS connection)", ms(fl.renewalCpuMs * 1000)));
    out.push(line("  3 renewals an hour (the 20-minute interval)", ms(3 * fl.renewalCpuMs * 1000)));
    out.push(line("a daemon's stream reconnected (mTLS handshake + open)", ms(s.reopenCpuMs * 1000)));
    out.push(line("idle service CPU per hour (subtracted)", ms(fl.idleCpuMsPerHour * 1000)));

    out.push(line("service RSS before / with the streams", `${f1(s.rssBeforeKiB / 1024)} MiB`, `${f1(s.rssAfterKiB / 1024)} MiB`));
    out.push(line("  per connected agent", `${f1(s.rssKiBPerAgent)} KiB`));
    out.push(line("  floor: bare node:http2 + TLS, one idle stream each", `${f1(s.bareRssKiBPerConnection)} KiB`));
    out.push(line(`renewals at ${fl.halfRate}/s (half saturation), fleet connected`, `p50 ${f1(fl.renewP50Ms)} ms`, `p99 ${f1(fl.renewP99Ms)} ms`));
    out.push(line("  the same rate with no agent connected", `p50 ${f1(fl.baseP50Ms)} ms`, `p99 ${f1(fl.baseP99Ms)} ms`));
    out.push(line("  the service's Renew handler alone, p99: connected / not", `≤ ${fl.handlerP99Ms.fleet} ms`, `≤ ${fl.handlerP99Ms.base} ms`));
    out.push(line("  its event loop's delay, p99: connected / not", `≤ ${fl.loopDelayP99Ms.fleet} ms`, `≤ ${fl.loopDelayP99Ms.base} ms`));
    const gc = (g: GcPauses) => `${f0(g.count)} / ${f0(g.totalMs)} ms`;
    out.push(line("  its GC pauses, how many / their total: connected / not", gc(fl.gc.fleet), gc(fl.gc.base)));
    out.push(line("  its longest GC pause: connected / not", `≤ ${fl.gc.fleet.maxMs} ms`, `≤ ${fl.gc.base.maxMs} ms`));
    out.push(line("  the load generator's own event loop delay, p99: connected / not", `${f1(fl.loadgenLoopDelayP99Ms.fleet)} ms`, `${f1(fl.loadgenLoopDelayP99Ms.base)} ms`));
    if (fl.renewErrors > 0) out.push(line("  renewals that failed", f0(fl.renewErrors)));
    const k = 100_000;
    const cores = (1.1 * k * fleetAgentHour(fl)) / 3_600_000;
    const pollCores = (1.1 * k * p.agentCpuMsPerHour) / 3_600_000;
    out.push(line("extrapolated: 100,000 daemons + 10,000 nodes, cores", cores.toFixed(2), pollCores.toFixed(2)));
    out.push(line("  service memory for their streams", `${f0((1.1 * k * s.rssKiBPerAgent) / 1024)} MiB`));
    out.push("   (linear in the per-agent figures above: an idle stream's cost is its own; a push costs one write per stream)");
    if (s.firstError || p.firstError) out.push(`   first error: ${s.firstError || p.firstError}`);
    out.push("");
  }
  const h = r.ha;
  if (h) {
    const both = [h.one, h.two];
    const rt = (q: Record<string, number>) => total(q).toFixed(1);
    const byStatement = (q: Record<string, number>) => Object.entries(q).filter(([, v]) => v >= 0.05).sort(([, a], [, b]) => b - a).map(([k, v]) => `${k} ${v.toFixed(1)}`).join(", ");
    out.push(`9. HA: auth services on one PostgreSQL (the tests' server: local, fsync=off), ${h.identities} joined identities, a new mTLS connection per renewal; alternating windows`);
    out.push(line("", "one service", "two services"));
    out.push(line("renewals/s at saturation (wall)", ...both.map((s) => f0(s.rate))));
    out.push(line("service A CPU, cores", ...both.map((s) => s.serviceCores[0].toFixed(2))));
    out.push(line("service B CPU, cores (idle in the one-service windows)", ...both.map((s) => s.serviceCores[1].toFixed(2))));
    out.push(line("PostgreSQL CPU, cores (postmaster and backends)", ...both.map((s) => s.postgresCores.toFixed(2))));
    out.push(line("load generators' CPU, cores (niced)", ...both.map((s) => s.loadgenCores.toFixed(2))));
    out.push(line("anything else (other people's jobs, this bench)", ...both.map((s) => s.otherCores.toFixed(2))));
    out.push(line("whole machine busy", ...both.map((s) => pct(s.machineBusy))));
    out.push(line("CPU per renewal: the services (A + B)", ...both.map((s) => ms(1000 * s.serviceCpuMs))));
    out.push(line("  PostgreSQL", ...both.map((s) => ms(1000 * s.postgresCpuMs))));
    out.push(line("  the load generators (the daemons' side of it)", ...both.map((s) => ms(1000 * s.loadgenCpuMs))));
    out.push(line(`  all three: ceiling on ${h.cores} cores, renewals/s`, ...both.map((s) => f0(haCeiling(h, s)))));
    out.push(line("PostgreSQL round trips per renewal (statements sent)", ...both.map((s) => rt(s.queriesPerRenewal))));
    out.push(`    by statement (two services): ${byStatement(h.two.queriesPerRenewal)} (BEGIN to COMMIT: one transaction)`);
    out.push(line("PostgreSQL round trips per join / per identity added", `${rt(h.queriesPerJoin)} / ${rt(h.queriesPerAdd)}`));
    out.push(line("  statements per second with no load (both services)", f1(h.idleQueriesPerSecond)));
    out.push(line("failed renewals", ...both.map((s) => String(s.errors))));
    for (const s of both) if (s.firstError) out.push(`  first failure, ${s.services} service(s): ${s.firstError}`);
    out.push(line("two services / one, wall", x(h.two.rate / h.one.rate)));
    out.push(line("  per service CPU-s × 2 (each service on its own core)", x(haCpuScaling(h))));
    out.push(line("renewals/s one PostgreSQL core serves at this cost", f0(1000 / h.two.postgresCpuMs)));
    const busy = h.two.machineBusy >= 0.9;
    out.push(
      busy
        ? `   limit: CPU. The machine was ${pct(h.two.machineBusy)} busy with two services (other jobs ${h.two.otherCores.toFixed(2)} cores of it); a renewal costs ${f1(haCpuMs(h.two))} ms of CPU here all told, so ${h.cores} cores cap either set-up at ~${f0(haCeiling(h, h.two))}/s, and 1.7× one service would be ${f0(1.7 * h.one.rate)}/s`
        : `   limit: not CPU (machine ${pct(h.two.machineBusy)} busy): the services wait, on PostgreSQL's round trips or on the load generators`,
    );
    out.push("");
  }
  const fh = r.fleetHa;
  if (fh) {
    const [sa, sb] = fh.services;
    const both = [sa, sb];
    const agents = fh.daemons + fh.nodes;
    out.push(`10. Fleet on two services: ${fh.daemons.toLocaleString("en")} simulated daemons and ${fh.nodes.toLocaleString("en")} node agents split evenly over services A and B on one PostgreSQL (section 9's), each agent on its own mTLS connection`);
    out.push(`   (certificates of ${fh.credentials.daemons} joined identities and ${fh.credentials.nodes} joined nodes, shared; CPU over a ${f0(fh.windowMs / 1000)} s window with the fleet connected (whole PING intervals) minus the rate with no agent connected)`);
    out.push(line("", "service A", "service B"));
    out.push(line("  agents: daemons + nodes", ...both.map((s) => `${s.daemons}+${s.nodes}`)));
    out.push(line("service CPU per connected agent-hour", ...both.map((s) => ms(s.agentCpuMsPerHour * 1000))));
    out.push(line("  + a daemon's reconnect a day (its stream's lifetime)", ...both.map((s) => ms(fleetHaAgentHour(s) * 1000))));
    out.push(line("a renewal's service CPU (new mTLS connection)", ...both.map((s) => ms(s.renewalCpuMs * 1000))));
    out.push(line("  3 renewals an hour (the 20-minute interval)", ...both.map((s) => ms(3 * s.renewalCpuMs * 1000))));
    out.push(line("  PostgreSQL's CPU for it", ...both.map((s) => ms(s.renewalPostgresCpuMs * 1000))));
    out.push(line("a daemon's stream reconnected (mTLS handshake + open)", ...both.map((s) => ms(s.reopenCpuMs * 1000))));
    out.push(line("idle service CPU per hour (subtracted)", ...both.map((s) => ms(s.idleCpuMsPerHour * 1000))));
    out.push(line("service RSS before / with the streams, MiB", ...both.map((s) => `${f1(s.rssBeforeKiB / 1024)} / ${f1(s.rssAfterKiB / 1024)}`)));
    out.push(line("  per connected agent", ...both.map((s) => `${f1(s.rssKiBPerAgent)} KiB`)));
    out.push(line("statements/s to PostgreSQL: no agent connected", ...both.map((s) => f1(s.idleQueriesPerSecond))));
    out.push(line("  half the fleet connected / all of it", ...both.map((s) => `${f1(s.halfQueriesPerSecond)} / ${f1(s.fleetQueriesPerSecond)}`)));
    out.push(line("PostgreSQL CPU per hour: no agent / fleet connected", ms(fh.postgresIdleCpuMsPerHour * 1000), ms(fh.postgresFleetCpuMsPerHour * 1000)));
    out.push(line("  per connected agent-hour", ms(((fh.postgresFleetCpuMsPerHour - fh.postgresIdleCpuMsPerHour) / agents) * 1000)));
    out.push(line("a lock seen by every node agent (from mezctl's start)", "A's nodes", "B's nodes"));
    const lockMs = (t: number, seen: number, of: number) => (t >= 0 ? `${f0(t)} ms` : `${seen}/${of} saw it`);
    for (const l of fh.locks) out.push(line(`  made through ${l.via}`, ...[0, 1].map((i) => lockMs(l.ms[i]!, l.seen[i]!, both[i]!.nodes))));
    out.push(line("agents that failed to connect or reconnect", f0(fh.errors)));
    if (fh.firstError) out.push(`   first error: ${fh.firstError}`);
    out.push("   (B hears of a lock made through A only through the database: its revocation state re-reads a change mark each second)");
    out.push("");
  }
  return out;
}

/** CPU one renewal costs on this machine: services, PostgreSQL and load generators, ms. */
const haCpuMs = (s: HaSetup) => s.serviceCpuMs + s.postgresCpuMs + s.loadgenCpuMs;
/** The renewal rate the machine's cores allow at that cost, had the bench every core to itself. */
const haCeiling = (h: HaFigures, s: HaSetup) => (1000 * h.cores) / haCpuMs(s);

/** Two services against one if each had a core of its own: per-CPU-second efficiency, times two. */
const haCpuScaling = (h: HaFigures) => (2 * h.two.perServiceCpuSecond) / h.one.perServiceCpuSecond;

/** The same on one service of section 10. */
export const fleetHaAgentHour = (s: FleetHaService) => s.agentCpuMsPerHour + s.reopenCpuMs / 24;

/** An agent-hour on a stream, with a daemon's one reconnect a day (counted for every agent). */
export const fleetAgentHour = (fl: FleetFigures) => fl.stream.agentCpuMsPerHour + fl.stream.reopenCpuMs / 24;

export function targets(r: Results): TargetRow[] {
  const rows: TargetRow[] = [];
  const { floor: f, throughput: t, scale: s, daemon: d, node: n } = r;
  const w1 = t?.[0];
  const w2 = t?.[1];
  if (f && w1) rows.push({ target: "auth renewals ≥ 50 % of the crypto floor (per CPU-s, 1 worker)", value: pct(floorShare(w1, f)), met: floorShare(w1, f) >= 0.5 });
  if (w1 && w2) rows.push({ target: "≥ 1.7× from 1 to 2 cores (per CPU-s × cores)", value: x(cpuScaling(w1, w2)), met: cpuScaling(w1, w2) >= 1.7 });
  for (const w of t ?? []) rows.push({ target: `p99 ≤ 25 ms at half load, --workers=${w.workers}`, value: `${f1(w.p99)} ms`, met: w.p99 <= 25 });
  if (s) {
    const k = `${Math.round(s.identities / 1000)}k`;
    rows.push({ target: `${k} identities: join ≤ 1.2× the empty case`, value: x(s.join.full / s.join.empty), met: s.join.full <= 1.2 * s.join.empty });
    rows.push({ target: `${k} identities: renewal ≤ 1.2× the empty case`, value: x(s.renew.full / s.renew.empty), met: s.renew.full <= 1.2 * s.renew.empty });
    rows.push({ target: `${k} identities: agent-identities ls first row ≤ 0.3 s`, value: `${f0(s.ls.full.firstMs)} ms`, met: s.ls.full.firstMs <= 300 });
    rows.push({ target: `${k} identities: agent-identities ls all rows ≤ 1 s`, value: `${f0(s.ls.full.allMs)} ms`, met: s.ls.full.allMs <= 1000 });
    rows.push({ target: `${k} identities: agent-identities status ≤ 1 s`, value: `${f0(s.status.full)} ms`, met: s.status.full <= 1000 });
    const slowest = Math.max(s.web.identities.full, s.web.search.full);
    rows.push({ target: `${k} identities: dashboard identities page ≤ 1 s`, value: `${f0(slowest)} ms`, met: slowest <= 1000 });
    rows.push({ target: `${k} identities: dashboard identity page ≤ 1 s`, value: `${f0(s.web.identity.full)} ms`, met: s.web.identity.full <= 1000 });
  }
  if (d) {
    rows.push({ target: "one-shot ≤ 3× bare node", value: x(d.oneShotMs / d.bareNodeMs), met: d.oneShotMs <= 3 * d.bareNodeMs });
    rows.push({ target: "daemon idle RSS ≤ 1.5× bare node", value: x(d.idleRssKiB / d.bareRssKiB), met: d.idleRssKiB <= 1.5 * d.bareRssKiB });
  }
  if (n) rows.push({ target: "mezd node principals ≤ 100 ms", value: `${f0(n.principalsMs)} ms`, met: n.principalsMs <= 100 });
  const rv = r.revocations;
  if (rv) {
    const k = `${Math.round(rv.serials / 1000)}k serials`;
    rows.push({ target: `${k}: KRL rebuild ≤ 1 s (the cache's age)`, value: `${f0(rv.rebuildMs)} ms`, met: rv.rebuildMs <= 1000 });
    rows.push({ target: `${k}: event loop held ≤ 20 ms (CPU) during a rebuild`, value: `${f1(rv.stallCpuMs)} ms`, met: rv.stallCpuMs <= 20 });
    rows.push({ target: `${k}: KRL ≤ 8 bytes per serial + 1 KiB`, value: `${f0(rv.krlBytes / 1024)} KiB`, met: rv.krlBytes <= 8 * rv.serials + 1024 });
    const beyond = rv.queryCpuMs - rv.queryOneSerialCpuMs;
    rows.push({ target: `${k}: ssh-keygen -Q ≤ 100 ms CPU beyond its start-up`, value: `${f0(beyond)} ms`, met: beyond <= 100 });
  }
  const fl = r.fleet;
  if (fl) {
    const budget = 0.1 * 3 * fl.renewalCpuMs;
    const k = `${fl.daemons >= 1000 ? `${Math.round(fl.daemons / 1000)}k` : fl.daemons}+${fl.nodes}`;
    rows.push({ target: `fleet ${k}: agent-hour on a stream ≤ 10 % of its 3 renewals`, value: pct(fleetAgentHour(fl) / (3 * fl.renewalCpuMs)), met: fleetAgentHour(fl) <= budget });
    rows.push({ target: `fleet ${k}: service memory per connected agent ≤ 20 KiB`, value: `${f1(fl.stream.rssKiBPerAgent)} KiB`, met: fl.stream.rssKiBPerAgent <= 20 });
    rows.push({ target: `fleet ${k}: a lock reaches all ${fl.nodes} node agents' KRL ≤ 5 s`, value: fl.stream.lockMs >= 0 ? `${f0(fl.stream.lockMs)} ms` : "not all", met: fl.stream.lockMs >= 0 && fl.stream.lockMs <= 5000 });
    rows.push({ target: `fleet ${k}: renewal p99 ≤ 50 ms at half saturation, connected`, value: `${f1(fl.renewP99Ms)} ms`, met: fl.renewP99Ms <= 50 && fl.renewErrors === 0 });
  }
  const sa = r.standalone;
  if (sa) {
    rows.push({ target: "release tarball under 40 MB", value: `${f1(sa.tarballBytes / 1e6)} MB`, met: sa.tarballBytes < 40e6 });
    rows.push({ target: "standalone one-shot ≤ 2× bare node", value: x(sa.oneShotMs / sa.bareNodeMs), met: sa.oneShotMs <= 2 * sa.bareNodeMs });
    rows.push({ target: "standalone one-shot no slower than the bundle", value: x(sa.oneShotMs / sa.bundleOneShotMs), met: sa.oneShotMs <= sa.bundleOneShotMs });
  }
  const h = r.ha;
  if (h) {
    const ratio = h.two.rate / h.one.rate;
    rows.push({ target: `HA: two services on PostgreSQL ≥ 1.7× one (wall; ${f1(total(h.two.queriesPerRenewal))} round trips/renewal)`, value: x(ratio), met: ratio >= 1.7 && h.one.errors + h.two.errors === 0 });
  }
  const fh = r.fleetHa;
  if (fh) {
    const k = `${fh.daemons >= 1000 ? `${Math.round(fh.daemons / 1000)}k` : fh.daemons}+${fh.nodes} on A+B`;
    const worstShare = Math.max(...fh.services.map((s) => fleetHaAgentHour(s) / (3 * s.renewalCpuMs)));
    rows.push({ target: `fleet ${k}: agent-hour on a stream ≤ 10 % of 3 renewals (worse)`, value: pct(worstShare), met: worstShare <= 0.1 });
    const worstRss = Math.max(...fh.services.map((s) => s.rssKiBPerAgent));
    rows.push({ target: `fleet ${k}: service memory per agent ≤ 20 KiB (worse)`, value: `${f1(worstRss)} KiB`, met: worstRss <= 20 });
    const all = fh.locks.flatMap((l) => l.ms);
    const slowest = Math.max(...all);
    const reached = all.length > 0 && all.every((t) => t >= 0);
    rows.push({ target: `fleet ${k}: a lock via either reaches all ${fh.nodes} nodes ≤ 5 s (slowest)`, value: reached ? `${f0(slowest)} ms` : "not all", met: reached && slowest <= 5000 });
  }
  return rows;
}

export function targetLines(rows: TargetRow[]): string[] {
  return ["Targets", ...rows.map((r) => `  ${r.target.padEnd(62)}${r.value.padStart(10)}   ${r.met ? "met" : "MISSED"}`)];
}

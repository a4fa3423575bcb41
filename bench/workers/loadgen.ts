/**
 * A renewal load generator (bench section 2), run as a child process with an IPC channel. It
 * renews as many joined daemons, each renewal on a new mTLS connection closed after the reply,
 * as `mezd identity` does; a daemon has at most one renewal in flight.
 *
 * To spend its CPU on the connections rather than on key generation, it draws the keys of each
 * request from a pool made up front: the server's work is the same (it neither can nor does check
 * that keys are new; every request still carries a new request id).
 *
 * Messages in: { setup }, then { run } any number of times. Out: { ready }, { result } per run.
 *  - closed: `concurrency` renewals in flight at all times (saturation);
 *  - open: renewals started at a fixed rate whatever the replies do (latency at a given load),
 *    latency measured from the scheduled start, so a slow server cannot hide queueing.
 * Only renewals that complete inside [startAt + warmupMs, startAt + warmupMs + durationMs] count.
 */
import { randomBytes } from "node:crypto";
import { monitorEventLoopDelay } from "node:perf_hooks";
import { create } from "@bufbuild/protobuf";
import { RenewRequestSchema, RenewService } from "../../src/api/gen/mezite/v1/renew_pb.js";
import { formatAuthorizedKey } from "../../src/ca/sshkey.js";
import { privateKeyToPem, publicKeyToDer } from "../../src/ca/x509.js";
import { generateIssueKeys } from "../../src/identity/protocol.js";
import { once } from "../rpc.js";

export interface Setup {
  type: "setup";
  addr: string;
  caPem: string;
  identities: { name: string; certPem: string; keyPem: string }[];
  poolSize: number;
}

export interface Run {
  type: "run";
  /** The service this run renews against; default the setup's (the daemons' state carries over). */
  addr?: string;
  mode: "closed" | "open";
  /** closed: renewals in flight. */
  concurrency: number;
  /** open: renewals started per second by this process. */
  rate: number;
  /** Epoch ms at which to start (all load generators start together). */
  startAt: number;
  warmupMs: number;
  durationMs: number;
}

export interface RunResult {
  type: "result";
  completed: number;
  errors: number;
  firstError: string;
  /** ms, of the renewals counted. */
  latencies: number[];
  /**
   * This process's own event loop delay over the counted window, p99 (ms): how long a reply or a
   * scheduled start may have waited here, on the client's side, behind other renewals' handshakes.
   */
  loopDelayP99Ms: number;
}

interface Daemon {
  name: string;
  certPem: string;
  keyPem: string;
  /** A request sent but not answered: retried as is, as the daemon does, so it is never a clone. */
  pending?: { requestId: Buffer; keys: PoolKeys };
}

interface PoolKeys {
  parts: { sshPublicKey: string; x509PublicKey: Uint8Array; renewalPublicKey: Uint8Array };
  renewalKeyPem: string;
}

let setup: Setup;
let addr = "";
let pool: PoolKeys[] = [];
let idle: Daemon[] = [];

function makePool(n: number): PoolKeys[] {
  return Array.from({ length: n }, () => {
    const k = generateIssueKeys();
    return {
      parts: { sshPublicKey: formatAuthorizedKey(k.ssh), x509PublicKey: publicKeyToDer(k.x509), renewalPublicKey: publicKeyToDer(k.renewal) },
      renewalKeyPem: privateKeyToPem(k.renewal),
    };
  });
}

/** One renewal on its own connection; the daemon then holds the new renewal certificate. */
async function renewOnce(d: Daemon): Promise<void> {
  d.pending ??= { requestId: randomBytes(16), keys: pool[Math.floor(Math.random() * pool.length)]! };
  const { requestId, keys } = d.pending;
  const tls = { certPem: d.certPem, keyPem: d.keyPem, caPem: setup.caPem };
  const res = await once(RenewService, addr, tls, (c) => c.renew(create(RenewRequestSchema, { requestId, ...keys.parts, requestedTtlMs: 3_600_000n })));
  const pem = res.certificates?.renewalCertificatePem;
  if (!pem) throw new Error("renew reply without a renewal certificate");
  d.certPem = pem;
  d.keyPem = keys.renewalKeyPem;
  delete d.pending;
}

async function run(r: Run): Promise<RunResult> {
  addr = r.addr ?? setup.addr;
  const from = r.startAt + r.warmupMs;
  const to = from + r.durationMs;
  const out: RunResult = { type: "result", completed: 0, errors: 0, firstError: "", latencies: [], loopDelayP99Ms: 0 };
  const loop = monitorEventLoopDelay({ resolution: LOOP_SAMPLE_MS });
  const counting = [setTimeout(() => loop.enable(), Math.max(0, from - Date.now())), setTimeout(() => loop.disable(), Math.max(0, to - Date.now()))];
  const waiting: ((d: Daemon) => void)[] = [];
  const take = (): Promise<Daemon> => {
    const d = idle.pop();
    if (d) return Promise.resolve(d);
    return new Promise((res) => waiting.push(res));
  };
  const give = (d: Daemon) => {
    const w = waiting.shift();
    if (w) w(d);
    else idle.unshift(d); // oldest first: spread renewals over every daemon
  };
  const one = async (scheduled: number): Promise<void> => {
    const d = await take();
    try {
      await renewOnce(d);
      const done = Date.now();
      if (done >= from && done <= to) {
        out.completed++;
        out.latencies.push(performance.now() - scheduled);
      }
    } catch (e) {
      if (Date.now() >= from && Date.now() <= to) out.errors++;
      out.firstError ||= (e as Error).message;
    } finally {
      give(d);
    }
  };
  await new Promise((res) => setTimeout(res, Math.max(0, r.startAt - Date.now())));
  const inflight = new Set<Promise<void>>();
  if (r.mode === "closed") {
    const lane = async () => {
      while (Date.now() < to) await one(performance.now());
    };
    await Promise.all(Array.from({ length: r.concurrency }, lane));
  } else {
    const t0 = performance.now();
    const end = t0 + (to - Date.now());
    const interval = 1000 / r.rate;
    for (let i = 0; ; i++) {
      const at = t0 + i * interval;
      if (at >= end) break;
      const wait = at - performance.now();
      if (wait > 1) await new Promise((res) => setTimeout(res, wait));
      const p = one(at);
      inflight.add(p);
      void p.finally(() => inflight.delete(p));
    }
    await Promise.all(inflight);
  }
  for (const t of counting) clearTimeout(t);
  loop.disable();
  // The histogram holds whole intervals between samples: the delay is what exceeds the interval.
  if (loop.count > 0) out.loopDelayP99Ms = Math.max(0, loop.percentile(99) / 1e6 - LOOP_SAMPLE_MS);
  return out;
}

const LOOP_SAMPLE_MS = 10;

process.on("message", (m: Setup | Run) => {
  if (m.type === "setup") {
    setup = m;
    idle = m.identities.map((i) => ({ ...i }));
    pool = makePool(m.poolSize);
    process.send!({ type: "ready" });
  } else {
    void run(m).then((r) => process.send!(r));
  }
});
process.on("disconnect", () => process.exit(0));

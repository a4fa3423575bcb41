/**
 * Runs the auth service in the foreground until SIGTERM or SIGINT. With --workers N the primary
 * process creates the CAs once, then forks N workers that share the listening port (node:cluster),
 * so one service uses every core; all state is in the backend, so any worker answers any call.
 */
import cluster, { type Worker } from "node:cluster";
import { startDiagServer } from "../lib/diag.js";
import { createLogger, type Logger } from "../lib/log.js";
import { renderMetrics, type MetricState } from "../lib/metrics.js";
import { caPin } from "../ca/x509.js";
import { ensureDir } from "../lib/files.js";
import { takeDirLock } from "../lib/pidlock.js";
import { openBackend, redactBackend } from "../backend/open.js";
import { openCaStore } from "./cas.js";
import { defaultNameNotice, resolveClusterName } from "./cluster.js";
import { startAuthService, type AuthConfig } from "./server.js";

/**
 * What a cluster's processes say to each other. /metrics must count every worker's calls, so the
 * primary serves --diag-addr itself and sums the state each worker sends when asked; a worker
 * answering /metrics on the TLS port (--single-port) asks the primary for that sum.
 */
type Message =
  | { mezite: "ready"; addr: string; port: number }
  | { mezite: "metrics?"; id: number } // primary -> worker
  | { mezite: "metrics"; id: number; state: MetricState[] } // worker -> primary
  | { mezite: "collect"; id: number } // worker -> primary
  | { mezite: "collected"; id: number; text: string }; // primary -> worker

/** How long the primary waits for a worker's metrics before serving without them. */
const METRICS_WAIT_MS = 2_000;

function onStopSignal(log: Logger, fn: () => void): void {
  const stop = (sig: string) => {
    log.info("stopping", { signal: sig });
    fn();
  };
  process.once("SIGTERM", () => stop("SIGTERM"));
  process.once("SIGINT", () => stop("SIGINT"));
}

export async function runAuth(cfg: AuthConfig, workers = 1): Promise<void> {
  const log = createLogger(process.stderr, cluster.isWorker ? { worker: cluster.worker?.id } : {});
  if (cluster.isPrimary) {
    // One data dir, one service: a second one would rewrite admin.identity, and mezctl would
    // lose the real service once it stopped. Released at exit (a killed one's is taken over).
    ensureDir(cfg.dataDir, 0o700, { what: `--data-dir ${cfg.dataDir}` });
    const release = takeDirLock(cfg.dataDir, (pid) => `another mezd auth (pid ${pid}) is using the data dir ${cfg.dataDir}: stop it, or give this one its own --data-dir`);
    process.once("exit", release);
  }
  if (workers > 1 && cluster.isPrimary) return runPrimary(cfg, workers, log);

  const worker = cluster.isWorker ? workerSide() : undefined;
  // In a cluster the primary serves --diag-addr: a worker's would count only its own calls.
  const { diagAddr, ...withoutDiag } = cfg;
  const svc = await startAuthService(worker ? withoutDiag : cfg, log, worker?.collect);
  worker?.answer(() => svc.metricsState());
  // Handlers first: whoever reads the ready line may send SIGTERM at once.
  const stopped = new Promise<void>((resolve) => onStopSignal(log, resolve));
  if (cluster.isWorker) {
    send({ mezite: "ready", addr: svc.addr, port: svc.port });
  } else {
    log.info("auth service started", { cluster: svc.context.clusterName, backend: redactBackend(cfg.backend), ca_pin: caPin(svc.context.cas.host.server.x509CertPem) });
    if (svc.namedAfterHost !== undefined) log.warn(defaultNameNotice(svc.namedAfterHost), { cluster: svc.namedAfterHost });
    process.stdout.write(`auth service listening on ${svc.addr}\n`);
  }
  await stopped;
  await svc.stop();
  process.exit(0);
}

const send = (m: Message) => process.send?.(m);

/** A worker: answers the primary's requests for its metrics, and asks it for everyone's. */
function workerSide() {
  let nextId = 0;
  const waiting = new Map<number, (text: string) => void>();
  let state: () => MetricState[] = () => [];
  process.on("message", (m: Message) => {
    if (m?.mezite === "metrics?") send({ mezite: "metrics", id: m.id, state: state() });
    else if (m?.mezite === "collected") waiting.get(m.id)?.(m.text);
  });
  return {
    answer(s: () => MetricState[]) {
      state = s;
    },
    collect: () =>
      new Promise<string>((resolve, reject) => {
        const id = nextId++;
        const timer = setTimeout(() => (waiting.delete(id), reject(new Error("the primary did not answer"))), 2 * METRICS_WAIT_MS);
        waiting.set(id, (text) => (clearTimeout(timer), waiting.delete(id), resolve(text)));
        send({ mezite: "collect", id });
      }),
  };
}

/** The primary: sums the metrics of every live worker, each asked afresh. */
function metricsCollector() {
  let nextId = 0;
  const pending = new Map<number, { states: MetricState[][]; left: Set<Worker>; done: () => void }>();
  return {
    onMessage(w: Worker, m: Message) {
      if (m?.mezite !== "metrics") return;
      const p = pending.get(m.id);
      if (!p?.left.delete(w)) return;
      p.states.push(m.state);
      if (p.left.size === 0) p.done();
    },
    collect: () =>
      new Promise<string>((resolve) => {
        const id = nextId++;
        const left = new Set(Object.values(cluster.workers ?? {}).filter((w): w is Worker => w !== undefined && w.isConnected()));
        const states: MetricState[][] = [];
        const done = () => (clearTimeout(timer), pending.delete(id), resolve(renderMetrics(states)));
        const timer = setTimeout(done, METRICS_WAIT_MS);
        pending.set(id, { states, left, done });
        for (const w of left) w.send({ mezite: "metrics?", id } satisfies Message);
        if (left.size === 0) done();
      }),
  };
}

async function runPrimary(cfg: AuthConfig, workers: number, log: Logger): Promise<void> {
  // The first start creates the cluster key and CAs: do it once, before workers race for them
  // (runAuth has made and locked the data dir).
  const backend = await openBackend(cfg.backend, cfg.dataDir);
  let pin: string;
  let clusterName: string;
  let namedAfterHost: string | undefined;
  try {
    clusterName = await resolveClusterName(backend, cfg.clusterName, (n) => (namedAfterHost = n));
    pin = caPin((await openCaStore(backend, cfg.dataDir, clusterName, Date.now())).cas.host.server.x509CertPem);
  } finally {
    await backend.close();
  }
  let stopping = false;
  let ready = 0;
  const metrics = metricsCollector();
  const diag = cfg.diagAddr
    ? await startDiagServer(cfg.diagAddr, { notReady: () => (ready >= workers ? undefined : "starting workers"), metrics: metrics.collect })
    : undefined;
  const fork = () => {
    const w = cluster.fork();
    w.on("message", (m: Message) => {
      if (m?.mezite === "collect") void metrics.collect().then((text) => w.isConnected() && w.send({ mezite: "collected", id: m.id, text } satisfies Message));
      metrics.onMessage(w, m);
      if (m?.mezite !== "ready" || ++ready !== workers) return;
      log.info("auth service started", { cluster: clusterName, backend: redactBackend(cfg.backend), ca_pin: pin, workers });
      if (namedAfterHost !== undefined) log.warn(defaultNameNotice(namedAfterHost), { cluster: namedAfterHost });
      process.stdout.write(`auth service listening on ${m.addr}\n`);
    });
  };
  cluster.on("exit", (w, code, signal) => {
    if (stopping) return;
    log.error("auth worker died; starting another", { worker: w.id, code, signal });
    fork();
  });
  const stopped = new Promise<void>((resolve) => onStopSignal(log, resolve));
  for (let i = 0; i < workers; i++) fork();
  await stopped;
  stopping = true;
  const all = Object.values(cluster.workers ?? {}).filter((w) => w !== undefined);
  await Promise.all(all.map((w) => new Promise<void>((r) => (w.once("exit", () => r()), w.kill("SIGTERM")))));
  diag?.server.close();
  process.exit(0);
}

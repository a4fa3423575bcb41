/**
 * Runs the auth service in the foreground until SIGTERM or SIGINT. With --workers N the primary
 * process creates the CAs once, then forks N workers that share the listening port (node:cluster),
 * so one service uses every core; all state is in the backend, so any worker answers any call.
 */
import cluster from "node:cluster";
import { createLogger, type Logger } from "../lib/log.js";
import { openBackend } from "../backend/open.js";
import { caPin } from "../ca/x509.js";
import { ensureDir } from "../lib/files.js";
import { loadOrCreateCas } from "./cas.js";
import { startAuthService, type AuthConfig } from "./server.js";

interface ReadyMessage {
  mezite: "ready";
  addr: string;
  port: number;
}

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
  if (workers > 1 && cluster.isPrimary) return runPrimary(cfg, workers, log);

  const svc = await startAuthService(cfg, log);
  // Handlers first: whoever reads the ready line may send SIGTERM at once.
  const stopped = new Promise<void>((resolve) => onStopSignal(log, resolve));
  if (cluster.isWorker) {
    process.send?.({ mezite: "ready", addr: svc.addr, port: svc.port } satisfies ReadyMessage);
  } else {
    log.info("auth service started", { cluster: cfg.clusterName, backend: redact(cfg.backend), ca_pin: caPin(svc.context.cas.host.x509CertPem) });
    process.stdout.write(`auth service listening on ${svc.addr}\n`);
  }
  await stopped;
  await svc.stop();
  process.exit(0);
}

const redact = (backend: string) => backend.replace(/\/\/[^@]*@/, "//***@");

async function runPrimary(cfg: AuthConfig, workers: number, log: Logger): Promise<void> {
  // The first start creates the cluster key and CAs: do it once, before workers race for them.
  ensureDir(cfg.dataDir, 0o700);
  const backend = await openBackend(cfg.backend, cfg.dataDir);
  let pin: string;
  try {
    pin = caPin((await loadOrCreateCas(backend, cfg.dataDir, cfg.clusterName, Date.now())).host.x509CertPem);
  } finally {
    await backend.close();
  }
  let stopping = false;
  let ready = 0;
  const fork = () => {
    const w = cluster.fork();
    w.on("message", (m: ReadyMessage) => {
      if (m?.mezite !== "ready" || ++ready !== workers) return;
      log.info("auth service started", { cluster: cfg.clusterName, backend: redact(cfg.backend), ca_pin: pin, workers });
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
  process.exit(0);
}

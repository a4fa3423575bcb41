/** Runs the auth service in the foreground until SIGTERM or SIGINT. */
import { createLogger } from "../lib/log.js";
import { startAuthService, type AuthConfig } from "./server.js";
import { caPin } from "../ca/x509.js";

export async function runAuth(cfg: AuthConfig): Promise<void> {
  const log = createLogger(process.stderr);
  const svc = await startAuthService(cfg, log);
  log.info("auth service started", { cluster: cfg.clusterName, backend: cfg.backend.replace(/\/\/[^@]*@/, "//***@"), ca_pin: caPin(svc.context.cas.host.x509CertPem) });
  process.stdout.write(`auth service listening on ${svc.addr}\n`);
  await new Promise<void>((resolve) => {
    const stop = (sig: string) => {
      log.info("stopping", { signal: sig });
      resolve();
    };
    process.once("SIGTERM", () => stop("SIGTERM"));
    process.once("SIGINT", () => stop("SIGINT"));
  });
  await svc.stop();
  process.exit(0);
}

/** Runs `mezd identity start` in the foreground: signals, diagnostics, exit codes. */
import { createLogger } from "../lib/log.js";
import { diagSource, startDiagServer } from "../lib/diag.js";
import { IdentityDaemon } from "./daemon.js";
import type { IdentityOptions } from "./options.js";

export async function runIdentity(opts: IdentityOptions): Promise<void> {
  const log = createLogger(process.stderr, { component: "identity" });
  const daemon = new IdentityDaemon(opts, { log });
  const abort = new AbortController();
  const stop = (sig: string) => {
    log.info("stopping", { signal: sig });
    abort.abort();
  };
  process.once("SIGTERM", () => stop("SIGTERM"));
  process.once("SIGINT", () => stop("SIGINT"));
  process.on("SIGHUP", () => {
    if (daemon.renewSoon()) log.info("SIGHUP: renewing now");
    else log.info("SIGHUP: retrying after failures, and one SIGHUP already cut the backoff short: the next retry stays as scheduled");
  });
  const diag = opts.diagAddr ? await startDiagServer(opts.diagAddr, diagSource(daemon.registry, () => daemon.notReady())) : undefined;
  if (diag) log.info("diagnostics listening", { addr: `${opts.diagAddr!.replace(/:\d+$/, "")}:${diag.port}` });
  try {
    await daemon.run(abort.signal);
  } finally {
    diag?.server.close();
  }
  if (opts.oneShot && !abort.signal.aborted) process.stdout.write(`certificates written to ${opts.destinationDir}\n`);
  process.exit(0);
}

/** `mezd node start`: options, diagnostics and signals around the NodeAgent. */
import { resolve } from "node:path";
import { isHostPort } from "../lib/address.js";
import { diagSource, startDiagServer } from "../lib/diag.js";
import { MeziteError } from "../lib/errors.js";
import { assertOwnDir } from "../lib/files.js";
import { createLogger } from "../lib/log.js";
import { NODE_DEFAULTS, NodeAgent, type NodeAgentOptions } from "./agent.js";

export interface RawNodeStartOptions {
  sshDir?: string | undefined;
  authServer?: string | undefined;
  advertiseAddr?: string | undefined;
  diagAddr?: string | undefined;
}

export function resolveNodeStartOptions(raw: RawNodeStartOptions): NodeAgentOptions {
  if (!raw.sshDir) throw new MeziteError("ERR_USAGE", "--ssh-dir is required (the directory mezd node join wrote)");
  if (raw.advertiseAddr !== undefined && !isHostPort(raw.advertiseAddr)) {
    throw new MeziteError("ERR_USAGE", "--advertise-addr must be host:port (a DNS name, an IPv4 address or a bracketed IPv6 address, and a port 1-65535)");
  }
  return { sshDir: resolve(raw.sshDir), authServer: raw.authServer, advertiseAddr: raw.advertiseAddr ?? "", ...NODE_DEFAULTS };
}

/** Runs until SIGTERM or SIGINT, then returns (exit 0). */
export async function runNodeAgent(raw: RawNodeStartOptions): Promise<void> {
  const log = createLogger(process.stderr, { program: "mezd node" });
  const opts = resolveNodeStartOptions(raw);
  assertOwnDir(opts.sshDir, `--ssh-dir ${opts.sshDir}`);
  const agent = new NodeAgent(opts, { log });
  const stop = new AbortController();
  const onSignal = (sig: NodeJS.Signals) => {
    log.info("stopping", { signal: sig });
    stop.abort();
  };
  process.once("SIGTERM", onSignal);
  process.once("SIGINT", onSignal);
  const diag = raw.diagAddr ? await startDiagServer(raw.diagAddr, diagSource(agent.registry, () => agent.notReady())) : undefined;
  if (diag) log.info("diagnostics listening", { port: diag.port });
  try {
    await agent.run(stop.signal);
  } finally {
    diag?.server.close();
  }
  log.info("stopped");
}

import type { Command } from "commander";
import { applyConfigFile } from "./config.js";
import { DEFAULT_CONNECTION_CAPS } from "../lib/connections.js";
import { MeziteError } from "../lib/errors.js";

export function registerAuth(program: Command): void {
  const auth = program.command("auth").description("the auth service");
  auth
    .command("start")
    .description("start the auth service (creates the CAs and admin.identity on first start)")
    .option("--data-dir <dir>", "CA cluster key, SQLite file and admin.identity", "/var/lib/mezite")
    .option("--listen <host:port>", "gRPC over TLS", "0.0.0.0:3025")
    .option("--public-addr <addrs>", "address(es) clients use, comma-separated (default: the listen address)")
    .option("--cluster-name <name>", "names the CAs and the SPIFFE trust domain (default: the backend's, or on a new cluster this host's name)")
    .option("--max-connections <n>", "open connections at most; more are closed at once, except that while full, connections without a client certificate beyond an eighth of it give way to new ones", String(DEFAULT_CONNECTION_CAPS.max))
    .option("--max-connections-per-source <n>", "open connections from one source address (an IPv6 /64) at most; more are closed at once (behind a load balancer that hides client addresses, raise it to --max-connections)", String(DEFAULT_CONNECTION_CAPS.perSource))
    .option("--max-change-streams <n>", "change streams (one per connected daemon or node) at most; agents beyond it poll", "20000")
    .option("--max-change-streams-per-source <n>", "change streams at most from one source address", "2000")
    .option("--backend <spec>", "sqlite (in the data dir), memory, or postgres://...", "sqlite")
    .option("--single-port", "serve gRPC and plain HTTP (health, metrics) on one TLS port by ALPN", false)
    .option("--diag-addr <host:port>", "serve /livez, /readyz, /metrics over HTTP")
    .option("--web-addr <host:port>", "serve the dashboard over HTTPS (mezctl dashboard prints a sign-in link)")
    .option("--workers <n>", "processes serving the port (node:cluster); one per core uses every core", "1")
    .option("--config <file>", "YAML file with the same keys; flags win")
    .option("--debug", "print stack traces with errors")
    .action(async (_opts: unknown, cmd: Command) => {
      await applyConfigFile(cmd);
      const o = cmd.opts<Record<string, string | boolean | undefined>>();
      const workers = wholeNumber(o["workers"], "--workers", 1, 64);
      const { runAuth } = await import("../auth/main.js");
      await runAuth({
        dataDir: String(o["dataDir"]),
        listen: String(o["listen"]),
        publicAddrs: o["publicAddr"] ? String(o["publicAddr"]).split(",").map((s) => s.trim()).filter(Boolean) : [],
        clusterName: o["clusterName"] === undefined ? undefined : String(o["clusterName"]),
        maxConnections: wholeNumber(o["maxConnections"], "--max-connections", 1, 1_000_000),
        maxConnectionsPerSource: wholeNumber(o["maxConnectionsPerSource"], "--max-connections-per-source", 1, 1_000_000),
        watchLimits: {
          maxStreams: wholeNumber(o["maxChangeStreams"], "--max-change-streams", 0, 1_000_000),
          maxPerSource: wholeNumber(o["maxChangeStreamsPerSource"], "--max-change-streams-per-source", 0, 1_000_000),
        },
        backend: String(o["backend"]),
        singlePort: o["singlePort"] === true || o["singlePort"] === "true",
        ...(o["diagAddr"] ? { diagAddr: String(o["diagAddr"]) } : {}),
        ...(o["webAddr"] ? { webAddr: String(o["webAddr"]) } : {}),
      }, workers);
    });
}

function wholeNumber(v: unknown, flag: string, min: number, max: number): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < min || n > max) throw new MeziteError("ERR_USAGE", `${flag} must be a whole number from ${min} to ${max}`);
  return n;
}

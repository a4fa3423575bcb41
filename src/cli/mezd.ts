/**
 * mezd: the auth service, the agent identity daemon and the node agent. Each subcommand's
 * program is imported only when it runs. `mezd node principals` runs on every SSH login, so it
 * skips the command-line framework altogether. No top-level await: the standalone executable
 * (scripts/release.mjs) runs this file as one CommonJS script.
 */
import { createRequire } from "node:module";
import { isSea } from "node:sea";
import { disableCoreDumps } from "../lib/core-dumps.js";
import { hideSecretArgs } from "../lib/secret-args.js";

async function main(argv: string[]): Promise<void> {
  if (argv[2] === "node" && argv[3] === "principals" && !argv.includes("--help") && !argv.includes("-h")) {
    (await import("../node/principals.js")).principalsMain(argv.slice(4));
    return;
  }
  // Before anything loads: a secret given as an argument leaves what `ps` shows (secret-args.ts).
  for (const w of hideSecretArgs(argv)) process.stderr.write(`mezd: warning: ${w}\n`);
  // Every daemon and join holds keys in memory: no core file may carry them (core-dumps.ts).
  // Awaited below, with the programs' loading, before any of them runs.
  const coreDumpsOff = argv[2] === "auth" || argv[2] === "identity" || argv[2] === "node" ? disableCoreDumps() : undefined;
  // A node:cluster worker (auth start --workers) is started as `mezd SCRIPT ARGS...`, SCRIPT being
  // the primary's argv[1]; a standalone executable reads its own path as the script: drop SCRIPT.
  // A worker talks to its primary over an IPC channel: without one, node:cluster is not loaded
  // just to say no.
  if (isSea() && process.channel !== undefined && (createRequire(process.execPath)("node:cluster") as { isWorker: boolean }).isWorker) argv = [argv[0]!, argv[1]!, ...argv.slice(3)];
  // The standalone mezd (scripts/release.mjs) is itself the principals command a node join
  // writes into sshd's config; join's own default points into a checkout's bin/.
  if (isSea() && argv[2] === "node" && argv[3] === "join" && !argv.some((a) => a === "--mezd-path" || a.startsWith("--mezd-path="))) {
    argv = [...argv, `--mezd-path=${process.execPath}`];
  }
  const [{ Command }, { fail, routeCommanderErrors }, { registerAuth }, { registerIdentity }, { registerNode }, { installLightHeaders }, { versionLine }] = await Promise.all([
    import("commander"),
    import("./exit.js"),
    import("./mezd-auth.js"),
    import("./mezd-identity.js"),
    import("./mezd-node.js"),
    import("../lib/headers.js"),
    import("../lib/version.js"),
    coreDumpsOff,
  ]);
  // Before connect builds its first request: Node's own Headers would load undici (~30 ms, 7 MB).
  installLightHeaders();
  const program = new Command("mezd")
    .description("Mezite daemons: the auth service, the agent identity daemon and the node agent")
    .version(versionLine("mezd"), "--version", "print the version and commit")
    .option("--debug", "print stack traces with errors");
  registerAuth(program);
  registerIdentity(program);
  registerNode(program);
  routeCommanderErrors(program);
  await program.parseAsync(argv).catch((e: unknown) => fail("mezd", e));
}

void main(process.argv);

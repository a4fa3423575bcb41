import { join, resolve } from "node:path";
import type { Command } from "commander";
import { MeziteError } from "../lib/errors.js";
import { applyConfigFile } from "./config.js";

export function registerIdentity(program: Command): void {
  const identity = program.command("identity").description("the agent identity daemon");
  identity
    .command("start")
    .description("join with a one-time token, write SSH and X.509 certificates, and renew them until stopped")
    .option("--auth-server <host:port>", "address of the auth service (required)")
    .option("--token <token>", "one-time join token (default $MEZITE_TOKEN; prefer --token-file or the variable: arguments show in ps); with --join-method other than token, the join token resource's name")
    .option("--token-file <file>", "read the join token from this file")
    .option("--destination-dir <dir>", "where certificates are written (required)")
    .option("--storage-dir <dir>", "renewal certificate and state (default DEST/.mezite, mode 0700)")
    .option("--cert-ttl <duration>", "requested certificate TTL, capped by the roles", "1h")
    .option("--renewal-interval <duration>", "how often to renew, and by 2/3 of a certificate's lifetime at the latest; must be shorter than --cert-ttl", "20m")
    .option("--one-shot", "join or renew once, write the outputs, and exit", false)
    .option("--one-shot-retry <duration>", "how long --one-shot keeps retrying an unreachable or failing auth service before it gives up", "30s")
    .option("--ssh-agent-socket <path>", "also serve the SSH key and certificate over the SSH agent protocol on this Unix socket (0600, in a private 0700 directory); ssh_config then uses it, and logins never race a renewal")
    .option("--no-ssh-key-file", "keep the SSH private key in memory only (needs --ssh-agent-socket): no ssh_key in the destination dir")
    .option("--ca-check-interval <duration>", "how often to ask the auth service whether a CA rotation moved on, renewing at once when it has (each ask is a TLS handshake: raise it for very large fleets)", "45s")
    .option("--diag-addr <host:port>", "serve /livez, /readyz, /metrics (renewals, failures, agent requests) over HTTP")
    .addHelpText("after", "\nSignals: SIGHUP renews now (during a failure backoff it cuts one wait short, no more); SIGTERM/SIGINT stop.")
    .option("--ca-pin <sha256:hex>", "check the auth service's TLS CA before joining (required with --join-method github, gitlab, oidc; several, comma-separated, during a CA rotation)")
    .option("--join-method <method>", "token (a one-time token), or github, gitlab, oidc: join with the platform's ID token", "token")
    .option("--id-token-file <file>", "gitlab, oidc: read the ID token (a JWT) from this file")
    .option("--id-token-env <name>", "gitlab, oidc: the variable holding the ID token (default MEZITE_ID_TOKEN)")
    .option("--config <file>", "YAML file with the same keys; flags win")
    .option("--debug", "print stack traces with errors")
    .action(async (_opts: unknown, cmd: Command) => {
      await applyConfigFile(cmd);
      // A config file's `no-ssh-key-file: true` lands on the negated attribute as given: flip it.
      if (cmd.getOptionValueSource("sshKeyFile") === "config") {
        const v = cmd.getOptionValue("sshKeyFile") as unknown;
        cmd.setOptionValueWithSource("sshKeyFile", !(v === true || v === "true"), "config");
      }
      const { resolveIdentityOptions } = await import("../identity/options.js");
      const opts = resolveIdentityOptions(cmd.opts());
      const { runIdentity } = await import("../identity/main.js");
      await runIdentity(opts);
    });
  identity
    .command("release")
    .description("end this instance when the job is done: the auth service revokes every certificate it holds (nodes refuse them within seconds), and the outputs and state here are removed")
    .option("--destination-dir <dir>", "the daemon's destination dir (required)")
    .option("--storage-dir <dir>", "the daemon's storage dir, whose renewal certificate authenticates the release (default DEST/.mezite)")
    .option("--debug", "print stack traces with errors")
    .addHelpText("after", "\nExits 0 once released, also when it was already released (run it again: it says so). A daemon still\nrunning on the dir is refused at its next renewal and exits 3.")
    .action(async (o: { destinationDir?: string; storageDir?: string }) => {
      if (!o.destinationDir) throw new MeziteError("ERR_USAGE", "--destination-dir is required (the dir mezd identity start wrote)");
      const dest = resolve(o.destinationDir);
      const { releaseWithState, releaseLine } = await import("../identity/release.js");
      const r = await releaseWithState({ destinationDir: dest, storageDir: resolve(o.storageDir ?? join(dest, ".mezite")) });
      process.stdout.write(releaseLine(r, dest));
    });
}

import type { Command } from "commander";

/**
 * `mezd node join | start | principals` (SPEC §7). Programs are imported inside the actions:
 * `principals` runs on every SSH login and must load nothing it does not use.
 */
export function registerNode(program: Command): void {
  const node = program.command("node").description("make a stock OpenSSH server a Mezite-managed node");

  node
    .command("join")
    .description("join this node with a one-time node token and write its ssh dir (host key and certificate, User CA, KRL, sshd_config snippet)")
    .option("--auth-server <host:port>", "address of the auth service (required)")
    .option("--token <token>", "one-time node token (default $MEZITE_TOKEN; prefer --token-file or the variable: arguments show in ps)")
    .option("--token-file <file>", "read the node token from this file")
    .option("--hostname <name>", "the node's name: its host certificate principal and its name in mezctl nodes ls (required)")
    .option("--principals <a,b>", "more host certificate principals: other names or addresses clients connect to")
    .option("--ssh-dir <dir>", "where the files go, e.g. /etc/mezite/ssh (required; made 0755, private keys 0600)")
    .option("--ca-pin <sha256:hex>", "check the auth service's TLS CA before joining (several, comma-separated, during a CA rotation)")
    .option("--principals-user <user>", "unprivileged user sshd runs the principals command as", "nobody")
    .option("--mezd-path <path>", "the mezd sshd runs as AuthorizedPrincipalsCommand (default: this one); sshd needs it and its parent dirs root-owned and not group/world-writable")
    .option("--force", "join even though the ssh dir already holds a joined node (it becomes this new node; the old one stays in mezctl nodes ls until nodes rm)")
    .option("--debug", "print stack traces with errors")
    .addHelpText("after", "\nThe token itself is never sent: the request is signed with a key derived from it, and the reply is trusted only when its MAC proves the server knew the token.")
    .action(async (o: Record<string, string | boolean | undefined>) => {
      const { resolveJoinOptions, joinNode, joinReport } = await import("../node/join.js");
      const opts = resolveJoinOptions(o);
      process.stdout.write(joinReport(await joinNode(opts), opts.sshDir));
    });

  node
    .command("start")
    .description("keep a joined node current: revocations every ~2 s, heartbeats every ~30 s, host certificate renewal at half its life")
    .option("--ssh-dir <dir>", "the ssh dir written by mezd node join (required)")
    .option("--auth-server <host:port>", "override the auth service address saved at join")
    .option("--advertise-addr <host:port>", "the SSH address heartbeats report (default: the address the auth service sees)")
    .option("--diag-addr <host:port>", "serve /livez, /readyz, /metrics over HTTP")
    .option("--debug", "print stack traces with errors")
    .action(async (o: Record<string, string | undefined>) => {
      const { runNodeAgent } = await import("../node/main.js");
      await runNodeAgent(o);
    });

  node
    .command("principals")
    .description("sshd's AuthorizedPrincipalsCommand: print LOGIN when CERT's roles allow it on this node, else nothing")
    .argument("[login]", "sshd's %u")
    .argument("[cert]", "sshd's %k: the offered certificate, base64")
    .option("--ssh-dir <dir>", "the node's ssh dir")
    .allowUnknownOption()
    .allowExcessArguments()
    .addHelpText("after", "\nAlways exits 0: a refusal (garbage included) prints nothing and one line on stderr. Reads only local files, so it works with the auth service down.")
    .action(async (_login: unknown, _cert: unknown, o: { sshDir?: string }, cmd: Command) => {
      const { principalsMain } = await import("../node/principals.js");
      principalsMain([...(o.sshDir !== undefined ? [`--ssh-dir=${o.sshDir}`] : []), ...cmd.args]);
    });
}

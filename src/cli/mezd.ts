/**
 * mezd: the auth service, the agent identity daemon and the node agent. Each subcommand's
 * program is imported only when it runs, so `mezd node principals` (run by sshd on every
 * login) starts lean.
 */
import { Command } from "commander";
import { fail } from "./exit.js";
import { registerAuth } from "./mezd-auth.js";
import { registerIdentity } from "./mezd-identity.js";
import { registerNode } from "./mezd-node.js";

const program = new Command("mezd")
  .description("Mezite daemons: the auth service, the agent identity daemon and the node agent")
  .option("--debug", "print stack traces with errors")
  .exitOverride();

registerAuth(program);
registerIdentity(program);
registerNode(program);

/** Every command exits through fail() with SPEC §6's codes, commander's own errors included. */
const all = (c: Command): Command[] => [c, ...c.commands.flatMap(all)];
for (const c of all(program)) c.exitOverride();

program.parseAsync(process.argv).catch((e: unknown) => fail("mezd", e));

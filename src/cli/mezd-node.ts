import type { Command } from "commander";

/** `mezd node ...`: owned by the node agent (src/node/). */
export function registerNode(program: Command): void {
  program.command("node").description("make a stock OpenSSH server a Mezite-managed node");
}

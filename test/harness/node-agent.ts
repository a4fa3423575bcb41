/** A node for tests without sshd's part: `mezd node join` into a directory, and a NodeAgent in this process. */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { NodeAgent } from "../../src/node/agent.js";
import { createLogger } from "../../src/lib/log.js";
import { MEZD, mezctlOk, principalsMezd, run, tokenFrom } from "./auth.js";
import { SSH_KEYGEN_PATH } from "./require.js";

/** `mezd node join` of a node named `name` into `dir` (its ssh dir), with a node token from `auth`'s admin. */
export async function joinNode(auth: { addr: string; identityPath: string }, name: string, dir: string, joinAddr = auth.addr): Promise<string> {
  const token = tokenFrom(await mezctlOk(auth, "tokens", "add", "--type=node", "--labels=env=staging"));
  const r = await run(MEZD, ["node", "join", `--auth-server=${joinAddr}`, `--token=${token}`, `--hostname=${name}`, `--ssh-dir=${dir}`, `--mezd-path=${principalsMezd()}`]);
  assert.equal(r.code, 0, r.stderr);
  return dir;
}

/** A NodeAgent in this process, its log kept; heartbeats every 10 minutes (never, within a test). */
export function startNodeAgent(authServer: string, sshDir: string, revocationIntervalMs: number) {
  let log = "";
  const agent = new NodeAgent(
    { sshDir, authServer, advertiseAddr: "", revocationIntervalMs, heartbeatIntervalMs: 10 * 60_000, maxBackoffMs: 30_000 },
    { log: createLogger({ write: (s: string) => ((log += s), true) } as NodeJS.WritableStream) },
  );
  const stop = new AbortController();
  const running = agent.run(stop.signal).catch((e: unknown) => (log += `run failed: ${String(e)}\n`));
  return {
    agent,
    log: () => log,
    /** Revocation fetches (polls and reports) and pushed states so far. */
    calls: () => {
      const text = agent.registry.render();
      const n = (op: string) => Number(new RegExp(`^mezite_node_calls_total\\{op="${op}",result="ok"\\} (\\d+)$`, "m").exec(text)?.[1] ?? 0);
      return { fetched: n("revocations"), pushed: n("revocations_pushed") };
    },
    stop: async () => {
      stop.abort();
      await running;
    },
  };
}

export async function waitFor(what: string, cond: () => boolean, limitMs = 20_000): Promise<void> {
  const start = Date.now();
  while (!cond()) {
    assert.ok(Date.now() - start < limitMs, `${what}: not within ${limitMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Whether the node's KRL revokes the certificate at `certPath`, as sshd's RevokedKeys would. */
export const revoked = (sshDir: string, certPath: string) =>
  /REVOKED/.test(spawnSync(SSH_KEYGEN_PATH!, ["-Q", "-f", join(sshDir, "revoked.krl"), certPath], { encoding: "utf8" }).stdout);

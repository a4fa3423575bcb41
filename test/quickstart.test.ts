/** `npm run quickstart` (SPEC §12): the whole story ends in a login, exits 0, and leaves nothing running. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { join } from "node:path";
import { ROOT, run } from "./harness/auth.js";
import { missingComponent, SSHD_PATH } from "./harness/require.js";

function processesMentioning(text: string): string[] {
  const out = execFileSync("ps", ["-eo", "pid,args"], { encoding: "utf8" });
  return out.split("\n").filter((l) => l.includes(text) && !l.includes("ps -eo"));
}

async function noneLeft(dir: string): Promise<string[]> {
  for (let i = 0; i < 50; i++) {
    const left = processesMentioning(dir);
    if (left.length === 0) return [];
    await new Promise((r) => setTimeout(r, 100));
  }
  return processesMentioning(dir);
}

test("quickstart runs the seed's story to a successful SSH login and stops everything", async (t) => {
  if (!SSHD_PATH) return missingComponent(t, "sshd", "apt-get install openssh-server");
  const r = await run(process.execPath, [join(ROOT, "scripts/quickstart.mjs")], { timeoutMs: 120_000 });
  assert.equal(r.code, 0, r.stdout + r.stderr);
  const dir = /working in (\S+)/.exec(r.stdout)?.[1];
  assert.ok(dir, "it prints its working directory");
  assert.match(r.stdout, /deploy@127\.0\.0\.1 whoami\n\s+deploy\n/, "the issued certificate logs in as deploy");
  assert.match(r.stdout, /root@127\.0\.0\.1 whoami.*\n\s+refused: /, "root is refused");
  assert.match(r.stdout, /agent_identity\.join\s+github-deploy/, "the audit trail shows the join");
  assert.doesNotMatch(r.stdout, /Token: [0-9a-f]{64}[\s\S]*MEZITE_TOKEN=[0-9a-f]/, "the token is never shown on a command line");
  assert.deepEqual(await noneLeft(dir), [], "no process left behind");
});

test("Ctrl-C during quickstart stops everything it started", async () => {
  const p = spawn(process.execPath, [join(ROOT, "scripts/quickstart.mjs")], { stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  p.stdout.on("data", (d: Buffer) => (out += d.toString()));
  // Interrupt once the auth service is up and the role exists.
  await new Promise<void>((resolve) => {
    const check = () => (/\[3\]/.test(out) ? resolve() : setTimeout(check, 50));
    check();
  });
  p.kill("SIGINT");
  const code = await new Promise<number | null>((r) => p.on("exit", (c) => r(c)));
  assert.equal(code, 130);
  const dir = /working in (\S+)/.exec(out)?.[1];
  assert.ok(dir);
  assert.deepEqual(await noneLeft(dir), [], "no process left behind after Ctrl-C");
});

/**
 * No core dumps where keys live in memory: the daemons set their own RLIMIT_CORE to 0 (soft and
 * hard) at start, whatever limit they were started with, and the systemd units say LimitCORE=0.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ensureBuilt, MEZD, ROOT } from "../harness/auth.js";
import { findBinary, missingComponent } from "../harness/require.js";
import { coreLimits } from "../../src/lib/core-dumps.js";

const PRLIMIT = findBinary(["/usr/bin/prlimit", "/bin/prlimit"]);
const tmp = mkdtempSync(join(tmpdir(), "mezite-core-"));
test.after(() => rmSync(tmp, { recursive: true, force: true }));

/** Starts mezd with core dumps allowed (1 MiB soft, unlimited hard) and waits until `ready` shows in its output. */
function startWithCores(args: string[], ready: RegExp, env: Record<string, string> = {}): Promise<ChildProcess> {
  const p = spawn(PRLIMIT!, ["--core=1048576:unlimited", MEZD, ...args], { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => (p.kill("SIGKILL"), reject(new Error(`mezd did not get going:\n${out}`))), 30_000);
    const seen = (d: Buffer) => {
      out += d.toString();
      if (ready.test(out)) (clearTimeout(timer), resolve(p));
    };
    p.stdout!.on("data", seen);
    p.stderr!.on("data", seen);
    p.on("exit", (code) => (clearTimeout(timer), reject(new Error(`mezd exited ${code}:\n${out}`))));
  });
}

async function stop(p: ChildProcess): Promise<void> {
  if (p.exitCode !== null || p.signalCode !== null) return;
  const exited = new Promise((r) => p.once("exit", r));
  p.kill("SIGKILL");
  await exited;
}

for (const [what, args, ready, env] of [
  ["mezd auth start", (d: string) => ["auth", "start", `--data-dir=${d}`, "--listen=127.0.0.1:0", "--cluster-name=test.mezite"], /auth service listening/, {}],
  ["mezd identity start", (d: string) => ["identity", "start", "--auth-server=127.0.0.1:1", `--destination-dir=${d}`], /issue failed; retrying/, { MEZITE_TOKEN: randomBytes(32).toString("hex") }],
] as const) {
  test(`${what} started with core dumps allowed runs with RLIMIT_CORE 0, soft and hard`, async (t) => {
    if (PRLIMIT === undefined) return missingComponent(t, "prlimit", "apt-get install util-linux");
    ensureBuilt();
    const p = await startWithCores(args(mkdtempSync(join(tmp, "d-"))), ready, env);
    try {
      assert.deepEqual(coreLimits(readFileSync(`/proc/${p.pid}/limits`, "utf8")), ["0", "0"]);
    } finally {
      await stop(p);
    }
  });
}

test("the systemd units set LimitCORE=0 in [Service]", () => {
  for (const u of ["mezd-auth.service", "mezd-identity@.service", "mezd-node.service"]) {
    const text = readFileSync(join(ROOT, "deploy/systemd", u), "utf8");
    const service = text.slice(text.indexOf("[Service]"), text.indexOf("[Install]"));
    assert.match(service, /^LimitCORE=0$/m, u);
  }
});

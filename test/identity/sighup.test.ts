/**
 * SIGHUP ("renew now") while the daemon is backing off after failures: it may cut one wait
 * short, and no more. A script sending SIGHUP in a loop while the auth service is down must
 * not turn the retries into a tight loop against it.
 */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { killDaemons, logLines, startDaemon } from "./fixture.js";

const tmp = mkdtempSync(join(tmpdir(), "mezite-identity-sighup-"));
after(() => {
  killDaemons();
  rmSync(tmp, { recursive: true, force: true });
});

test("SIGHUP every 100 ms during failure backoff cuts one wait short, then the backoff stands", async () => {
  // Nothing listens on port 1: every join attempt is refused at once, so only the backoff paces them.
  const daemon = startDaemon("127.0.0.1:1", join(tmp, "certs"), [], { MEZITE_TOKEN: "ab".repeat(32) });
  await daemon.waitFor(/"msg":"issue failed; retrying"/);
  const t0 = performance.now();
  const hups = setInterval(() => daemon.proc.kill("SIGHUP"), 100);
  try {
    await new Promise((r) => setTimeout(r, 3_000));
  } finally {
    clearInterval(hups);
  }
  const elapsed = performance.now() - t0;
  assert.equal(await daemon.stop(), 0, daemon.output());

  const log = logLines(daemon.output());
  const attempts = log.filter((l) => l["msg"] === "issue failed; retrying");
  const cut = log.filter((l) => l["msg"] === "SIGHUP: renewing now");
  const held = log.filter((l) => String(l["msg"]).startsWith("SIGHUP: retrying after failures"));
  process.stderr.write(`# ${cut.length + held.length} SIGHUPs in ${Math.round(elapsed)} ms: ${cut.length} cut a wait, ${held.length} held; ${attempts.length} attempts in all\n`);
  assert.equal(cut.length, 1, "exactly one SIGHUP cuts the backoff short");
  assert.ok(held.length >= 20, `only ${held.length} SIGHUPs were held back`);
  // Backoff 250 ms + up to 1 s, 2 s, 4 s ...: a handful of attempts in ~3.5 s, one of them early
  // because of the SIGHUP. Without the limit, 30 SIGHUPs would mean 30 or more.
  assert.ok(attempts.length <= 10, `${attempts.length} attempts: the SIGHUPs bypassed the backoff`);
  // The attempts keep climbing the backoff: each wait's ceiling doubles.
  assert.deepEqual(attempts.map((l) => l["attempt"]), attempts.map((_, i) => i + 1));
});

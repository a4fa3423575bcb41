import assert from "node:assert/strict";
import { test } from "node:test";
import { createLogger } from "../../src/lib/log.js";
import { PeriodicCheck } from "../../src/lib/periodic-check.js";

/** A check whose runs the test ends one by one, each as it says (ok or failing). */
function harness(intervalMs = 60_000) {
  let logged = "";
  const log = createLogger({ write: (s: string) => ((logged += s), true) } as NodeJS.WritableStream);
  const runs: { end: (ok: boolean) => void }[] = [];
  const checks = new PeriodicCheck({
    check: () => new Promise<void>((resolve, reject) => runs.push({ end: (ok) => (ok ? resolve() : reject(new Error("backend down"))) })),
    intervalMs,
    log,
    failed: "check failing",
    recovered: "check works again",
  });
  const lines = () => logged.trim().split("\n").filter(Boolean).map((l) => JSON.parse(l) as { level: string; msg: string; error?: string });
  return { checks, runs, lines };
}

const settle = () => new Promise<void>((r) => setImmediate(r));

test("PeriodicCheck: one run at a time; runs asked for meanwhile make one more right after it", async () => {
  const { checks, runs } = harness();
  let firstDone = false;
  const first = checks.run().then(() => (firstDone = true));
  const second = checks.run();
  const third = checks.run();
  await settle();
  assert.equal(runs.length, 1, "no second run while one is under way");
  runs[0]!.end(true);
  await settle();
  assert.equal(runs.length, 2, "one more run right after, for both that asked meanwhile");
  assert.equal(firstDone, false, "a call resolves only once a run begun after it has ended");
  runs[1]!.end(true);
  await Promise.all([first, second, third]);
  assert.equal(runs.length, 2);
  assert.equal(checks.running, undefined);

  // Nothing asked meanwhile: one run only.
  const alone = checks.run();
  await settle();
  runs[2]!.end(true);
  await alone;
  await settle();
  assert.equal(runs.length, 3);
});

test("PeriodicCheck: a failure is logged once until the check works again, and the recovery once", async () => {
  const { checks, runs, lines } = harness();
  for (const ok of [false, false, false, true, true, false, true]) {
    const done = checks.run();
    await settle();
    runs.at(-1)!.end(ok);
    await done; // never rejects
  }
  assert.deepEqual(
    lines().map((l) => [l.level, l.msg, l.error]),
    [
      ["error", "check failing", "backend down"],
      ["info", "check works again", undefined],
      ["error", "check failing", "backend down"],
      ["info", "check works again", undefined],
    ],
  );
});

test("PeriodicCheck: ticks that find a run under way are dropped, not queued (a slow check does not run back to back)", async () => {
  const { checks, runs } = harness(5);
  checks.start();
  try {
    while (runs.length === 0) await new Promise((r) => setTimeout(r, 5));
    // Many ticks pass while the first run is held (40 intervals; one is enough to matter).
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(runs.length, 1);
    const running = checks.running!;
    runs[0]!.end(true);
    await settle();
    assert.equal(runs.length, 1, "no run queued by the ticks that came during the first");
    await running;
  } finally {
    checks.stop();
  }
});

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

test("PeriodicCheck: ticks that find a run under way are dropped, not queued (a slow check does not run back to back)", async (t) => {
  // Mocked timers: with real ones a tick due just after the first run ends (on a loaded machine)
  // starts a new run, which is right, and looks like a queued one.
  t.mock.timers.enable({ apis: ["setInterval"] });
  const { checks, runs } = harness(5);
  checks.start();
  try {
    t.mock.timers.tick(5);
    assert.equal(runs.length, 1, "the first tick runs the check");
    // 40 ticks pass while the first run is held; one queued would be enough to matter.
    for (let i = 0; i < 40; i++) t.mock.timers.tick(5);
    assert.equal(runs.length, 1);
    const running = checks.running!;
    runs[0]!.end(true);
    await running;
    await settle();
    assert.equal(runs.length, 1, "no run queued by the ticks that came during the first");
    assert.equal(checks.running, undefined);
    t.mock.timers.tick(5);
    assert.equal(runs.length, 2, "the next tick after it runs the check again");
    runs[1]!.end(true);
    await checks.running;
  } finally {
    checks.stop();
  }
});

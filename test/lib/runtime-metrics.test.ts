/** The event-loop delay and GC pause histograms (src/lib/runtime-metrics.ts), on this process's own loop. */
import assert from "node:assert/strict";
import { test } from "node:test";
import { Registry } from "../../src/lib/metrics.js";
import { watchRuntime } from "../../src/lib/runtime-metrics.js";

/** A metric's count of observations at or below `le` (Infinity: all), summed over label sets. */
function counted(r: Registry, name: string, le = Infinity): number {
  const m = r.state().find((x) => x.name === name)!;
  const i = le === Infinity ? m.bounds!.length + 1 : m.bounds!.indexOf(le);
  return m.series.reduce((n, s) => n + (le === Infinity ? s.values[i]! : s.values.slice(0, i + 1).reduce((a, b) => a + b, 0)), 0);
}

test("a loop held for 500 ms is counted as a tick at least 300 ms late; garbage collection as pauses by kind; stopping stops both", async () => {
  const r = new Registry();
  const stop = watchRuntime(r);
  try {
    const ticks = () => counted(r, "mezite_event_loop_delay_seconds");
    const nextTick = async (after: number) => {
      while (ticks() <= after) await new Promise((res) => setTimeout(res, 20));
    };
    await nextTick(0);
    const held = Date.now() + 500; // the tick due within the next 200 ms runs at least 300 ms late
    while (Date.now() < held); // the loop, held
    const before = ticks();
    const fast = counted(r, "mezite_event_loop_delay_seconds", 0.25);
    await nextTick(before);
    assert.equal(counted(r, "mezite_event_loop_delay_seconds", 0.25), fast, "the late tick is counted above 250 ms");

    // Enough short-lived garbage for the young generation to be collected a few times.
    let keep = 0;
    for (let i = 0; i < 2_000_000; i++) keep += { i, s: `x${i}` }.s.length;
    assert.ok(keep > 0);
    while (counted(r, "mezite_gc_pause_seconds") === 0) await new Promise((res) => setTimeout(res, 20)); // the observer is called after the pauses
    const gc = r.state().find((m) => m.name === "mezite_gc_pause_seconds")!;
    assert.ok(gc.series.some((s) => s.labels["kind"] === "minor"), JSON.stringify(gc.series));
  } finally {
    stop();
  }
  const after = counted(r, "mezite_event_loop_delay_seconds");
  await new Promise((res) => setTimeout(res, 500));
  assert.equal(counted(r, "mezite_event_loop_delay_seconds"), after, "no ticks once stopped");
});

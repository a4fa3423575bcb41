import assert from "node:assert/strict";
import { EventEmitter } from "node:events";
import { test } from "node:test";
import { Backoff, sleep } from "../../src/lib/backoff.js";

test("Backoff: full jitter under a ceiling that doubles per failure up to maxMs, plus minMs; reset starts over", () => {
  const top = new Backoff({ baseMs: 1_000, maxMs: 5_000, minMs: 250, random: () => 1 });
  assert.deepEqual([1, 2, 3, 4, 5].map(() => top.next()), [1_250, 2_250, 4_250, 5_250, 5_250]);
  assert.equal(top.failures, 5);
  top.reset();
  assert.equal(top.failures, 0);
  assert.equal(top.next(), 1_250);

  const bottom = new Backoff({ baseMs: 1_000, maxMs: 5_000, minMs: 250, random: () => 0 });
  assert.deepEqual([1, 2, 3].map(() => bottom.next()), [250, 250, 250], "the jitter may roll 0: minMs still spaces the attempts");

  const half = new Backoff({ baseMs: 4_000, maxMs: 30_000, random: () => 0.5 });
  assert.deepEqual([1, 2, 3, 4].map(() => half.next()), [2_000, 4_000, 8_000, 15_000]);

  // A ceiling below baseMs is the ceiling from the first failure on.
  const capped = new Backoff({ baseMs: 60_000, maxMs: 30_000, random: () => 1 });
  assert.equal(capped.next(), 30_000);

  // A very long outage never overflows to NaN or Infinity.
  const long = new Backoff({ baseMs: 1_000, maxMs: 300_000, random: () => 1 });
  for (let i = 0; i < 10_000; i++) long.next();
  assert.equal(long.next(), 300_000);

  // Real randomness stays within its bounds.
  const real = new Backoff({ baseMs: 100, maxMs: 800, minMs: 10 });
  for (let i = 0; i < 200; i++) {
    const ceiling = real.ceiling();
    const d = real.next();
    assert.ok(d >= 10 && d <= 10 + ceiling, `${d} outside [10, ${10 + ceiling}]`);
  }
  assert.throws(() => new Backoff({ baseMs: 0, maxMs: 10 }), RangeError);
});

test("sleep: waits its time, ends at once on abort, and leaves no listener behind", async () => {
  const never = new AbortController();
  let t0 = performance.now();
  await sleep(60, never.signal);
  assert.ok(performance.now() - t0 >= 55);

  const ac = new AbortController();
  t0 = performance.now();
  setTimeout(() => ac.abort(), 20);
  await sleep(10_000, ac.signal);
  assert.ok(performance.now() - t0 < 1_000, "abort ends the sleep");

  t0 = performance.now();
  await sleep(10_000, ac.signal);
  assert.ok(performance.now() - t0 < 50, "an aborted signal does not sleep at all");

  // A daemon sleeps millions of times on one signal: each sleep must take its listener away.
  const shared = new AbortController();
  for (let i = 0; i < 50; i++) await sleep(1, shared.signal);
  assert.equal(EventEmitter.getEventListeners(shared.signal, "abort").length, 0);
});

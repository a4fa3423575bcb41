/** Token buckets per key on a monotonic clock (the clock is the test's). */
import assert from "node:assert/strict";
import { test } from "node:test";
import { RateLimiter } from "../../src/lib/rate-limit.js";

test("a burst, then the rate; keys apart; refused calls do not lengthen the wait", () => {
  let now = 0;
  const l = new RateLimiter({ perSecond: 5, burst: 10, now: () => now });
  const takes = (key: string, n: number) => Array.from({ length: n }, () => l.take(key)).filter(Boolean).length;
  assert.equal(takes("a", 25), 10, "the burst");
  assert.equal(takes("b", 3), 3, "another key has its own bucket");
  now += 200;
  assert.equal(takes("a", 5), 1, "one more every 200 ms");
  now += 1000;
  assert.equal(takes("a", 10), 5, "five a second");
  now += 60_000;
  assert.equal(takes("a", 20), 10, "never more than the burst");
});

test("memory stays bounded: refilled buckets are forgotten first, then the oldest", () => {
  let now = 0;
  const l = new RateLimiter({ perSecond: 5, burst: 10, maxKeys: 100, now: () => now });
  const size = () => (l as unknown as { buckets: Map<string, unknown> }).buckets.size;
  for (let i = 0; i < 10; i++) l.take("busy");
  for (let i = 0; i < 99; i++) l.take(`k${i}`);
  now += 1000;
  for (let i = 100; i < 1000; i++) l.take(`k${i}`);
  assert.ok(size() <= 100, String(size()));
  assert.equal(l.take("busy"), true, "an evicted key starts with a full bucket");
});

/**
 * The overview's renewals chart (src/web/renewals.ts) and the audit page's newest-first read
 * (newestEvents in src/auth/audit.ts), on a real backend with a frozen clock.
 */
import assert from "node:assert/strict";
import { PassThrough } from "node:stream";
import { test } from "node:test";
import { Audit, newestEvents } from "../../src/auth/audit.js";
import { MemoryBackend } from "../../src/backend/memory.js";
import { createLogger } from "../../src/lib/log.js";
import { CHART_HOURS, RenewalChart } from "../../src/web/renewals.js";

const MINUTE = 60_000;
const T0 = Date.UTC(2026, 0, 1, 12, 0, 0);

function setup() {
  let clock = T0;
  const backend = new MemoryBackend({ now: () => clock, sweepIntervalMs: 0 });
  const audit = new Audit(backend, createLogger(new PassThrough()), () => clock);
  const at = async (time: number, e: Parameters<Audit["emit"]>[0]) => {
    clock = time;
    await audit.emit(e);
  };
  return { backend, at, set: (t: number) => (clock = t) };
}

const renew = (success: boolean) => ({ type: "agent_identity.renew" as const, identity: "a", success, ...(success ? {} : { error: "ERR_LOCKED" }) });

test("renewals and failures per minute over the window; later views count only what is new, once", async () => {
  const { backend, at } = setup();
  const chart = new RenewalChart(backend);
  await at(T0 - CHART_HOURS * 60 * MINUTE - MINUTE, renew(true)); // before the window
  await at(T0 - 10 * MINUTE, renew(true));
  await at(T0 - 10 * MINUTE + 5000, renew(true));
  await at(T0 - 10 * MINUTE + 6000, renew(false));
  await at(T0 - 2 * MINUTE, { type: "lock.create", identity: "a" }); // not a renewal
  await at(T0, renew(true));

  const first = await chart.series(T0);
  assert.equal(first.t.length, CHART_HOURS * 60);
  assert.equal(first.t.at(-1), T0 / 1000, "the last point is the current minute");
  assert.equal(first.ok.at(-11), 2);
  assert.equal(first.failed.at(-11), 1);
  assert.equal(first.ok.at(-1), 1);
  assert.deepEqual([first.okTotal, first.failedTotal], [3, 1]);
  assert.equal(first.completeFrom, first.t[0]! * 1000, "every minute was read");

  // New events, one of them stamped before the newest already counted (it committed late).
  await at(T0 + 20_000, renew(false));
  await at(T0 - 15_000, renew(true));
  await at(T0 + MINUTE, renew(true));
  const second = await chart.series(T0 + MINUTE);
  assert.deepEqual([second.okTotal, second.failedTotal], [5, 2]);
  assert.equal(second.ok.at(-3), 1, "the late event lands in its own minute");
  assert.deepEqual([second.ok.at(-2), second.failed.at(-2)], [1, 1]);
  assert.equal(second.ok.at(-1), 1);
  const third = await chart.series(T0 + MINUTE);
  assert.deepEqual([third.okTotal, third.failedTotal], [5, 2], "nothing is counted twice");

  // Minutes leave the window as time goes on.
  const later = await chart.series(T0 + (CHART_HOURS * 60 - 5) * MINUTE);
  assert.deepEqual([later.okTotal, later.failedTotal], [3, 1], "the minutes of T0 - 10m are gone");
});

test("the audit page reads newest first, filtered by type, and stops at the window or the limit", async () => {
  const { backend, at } = setup();
  for (let i = 0; i < 30; i++) await at(T0 + i * 1000, i % 3 === 0 ? { type: "lock.create", identity: `l${i}` } : renew(true));
  const locks = await newestEvents(backend, T0, "lock", 100, 10_000);
  assert.deepEqual(locks.events.map((e) => e.identity), ["l27", "l24", "l21", "l18", "l15", "l12", "l9", "l6", "l3", "l0"]);
  assert.equal(locks.complete, true);
  assert.deepEqual((await newestEvents(backend, T0, "lock", 2, 10_000)).events.map((e) => e.identity), ["l27", "l24"]);
  assert.deepEqual((await newestEvents(backend, T0 + 20_000, "lock.create", 100, 10_000)).events.map((e) => e.identity), ["l27", "l24", "l21"]);
  const all = await newestEvents(backend, T0, "", 100, 10_000);
  assert.equal(all.events.length, 30);
  assert.ok(all.events.every((e, i) => i === 0 || e.time <= all.events[i - 1]!.time), "newest first");
});

/**
 * What the Node runtime costs a call before its handler runs: how late the event loop answers,
 * and the garbage collector's pauses. A request's handler time (its own histogram) leaves these
 * out, so a latency tail outside the handler shows up here or nowhere.
 */
import { PerformanceObserver, constants, performance, type PerformanceEntry } from "node:perf_hooks";
import type { Registry } from "./metrics.js";

const BOUNDS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5];
const TICK_MS = 200;
const GC_KINDS: Record<number, string> = {
  [constants.NODE_PERFORMANCE_GC_MINOR]: "minor",
  [constants.NODE_PERFORMANCE_GC_MAJOR]: "major",
  [constants.NODE_PERFORMANCE_GC_INCREMENTAL]: "incremental",
  [constants.NODE_PERFORMANCE_GC_WEAKCB]: "weakcb",
};

type GcEntry = PerformanceEntry & { detail?: { kind?: number } };

/** Starts both histograms in `registry`; the returned function stops them. */
export function watchRuntime(registry: Registry): () => void {
  const delay = registry.histogram(
    "mezite_event_loop_delay_seconds",
    `how late a ${TICK_MS} ms timer ran: what a request arriving then waited before anything ran for it`,
    BOUNDS,
  );
  const gc = registry.histogram("mezite_gc_pause_seconds", "garbage-collection pauses of the main thread, by kind", BOUNDS);
  let due = performance.now() + TICK_MS;
  const timer = setInterval(() => {
    const now = performance.now();
    delay.observe(Math.max(0, now - due) / 1000);
    due = now + TICK_MS;
  }, TICK_MS).unref();
  const observer = new PerformanceObserver((list) => {
    for (const e of list.getEntries() as GcEntry[]) gc.observe(e.duration / 1000, { kind: GC_KINDS[e.detail?.kind ?? -1] ?? "other" });
  });
  observer.observe({ entryTypes: ["gc"] });
  return () => {
    clearInterval(timer);
    observer.disconnect();
  };
}

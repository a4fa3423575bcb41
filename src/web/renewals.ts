/**
 * The overview's chart: renewals and failed renewals per minute over the last hours, counted from
 * the audit's renewal events. A fleet renews often (100,000 agents every 20 minutes write ~900,000
 * events in 3 hours), so the counts are kept in memory and each view reads only the events written
 * since the previous one; the first view reads backwards from the newest event, at most
 * MAX_FIRST_SCAN of them, so its recent minutes are exact even when the oldest are not read.
 * An event's key carries the instant it was made, which can be a moment before it commits: each
 * catch-up re-reads the last SETTLE_MS and skips the keys it has counted.
 */
import type { Backend } from "../backend/backend.js";
import { auditKeyAt } from "../auth/audit.js";
import { keys } from "../auth/records.js";

export const CHART_HOURS = 3;
const MINUTE = 60_000;
const CHUNK = 2000;
const MAX_FIRST_SCAN = 300_000;
/** Longer than any write takes from making its event to committing it (requests end within 10 s). */
const SETTLE_MS = 30_000;
const timeOf = (key: string) => Number(key.slice(keys.audit.length, keys.audit.length + 15));
/** Cheap test before parsing: audit values are JSON.stringify'd with `type` as written by Audit.entry. */
const RENEW_MARK = '"type":"agent_identity.renew"';

export interface RenewalSeries {
  /** Minute starts, unix seconds (uPlot's x axis). */
  t: number[];
  ok: number[];
  failed: number[];
  okTotal: number;
  failedTotal: number;
  /** Minutes before this instant (unix ms) were not read (the first view's cap). */
  completeFrom: number;
}

export class RenewalChart {
  private readonly counts = new Map<number, { ok: number; failed: number }>();
  /** The newest audit event's instant read; undefined until the first view. */
  private newest: number | undefined;
  /** Renewal events counted within 2 × SETTLE_MS of `newest`, by key: never counted twice. */
  private readonly recent = new Set<string>();
  private completeFrom = 0;
  private pending: Promise<void> | undefined;

  constructor(private readonly backend: Backend) {}

  private add(key: string, value: string): void {
    if (!value.includes(RENEW_MARK) || this.recent.has(key)) return;
    if (timeOf(key) >= (this.newest ?? 0) - 2 * SETTLE_MS) this.recent.add(key);
    const e = JSON.parse(value) as { time: number; type: string; success: boolean };
    if (e.type !== "agent_identity.renew") return;
    const minute = Math.floor(e.time / MINUTE) * MINUTE;
    const c = this.counts.get(minute) ?? { ok: 0, failed: 0 };
    if (e.success) c.ok++;
    else c.failed++;
    this.counts.set(minute, c);
  }

  private async catchUp(start: number): Promise<void> {
    if (this.newest === undefined) {
      // First view: backwards from the newest event to the window's start, or the cap.
      const floor = auditKeyAt(start);
      let scanned = 0;
      this.completeFrom = start;
      for (let after: string | undefined; ; ) {
        const items = await this.backend.range(keys.audit, { descending: true, limit: CHUNK, ...(after === undefined ? {} : { startAfter: after }) });
        if (after === undefined) this.newest = items[0] ? timeOf(items[0].key) : start;
        const inWindow = items.filter((i) => i.key >= floor);
        for (const i of inWindow) this.add(i.key, i.value);
        scanned += items.length;
        if (inWindow.length < items.length || items.length < CHUNK) return;
        after = items[items.length - 1]!.key;
        if (scanned >= MAX_FIRST_SCAN) {
          // Its minute may be partly read: complete from the next one.
          this.completeFrom = Math.floor(timeOf(after) / MINUTE) * MINUTE + MINUTE;
          return;
        }
      }
    }
    for (let after = auditKeyAt((this.newest ?? start) - SETTLE_MS); ; ) {
      const items = await this.backend.range(keys.audit, { limit: CHUNK, startAfter: after });
      for (const i of items) {
        this.newest = Math.max(this.newest ?? 0, timeOf(i.key));
        this.add(i.key, i.value);
      }
      if (items.length < CHUNK) break;
      after = items[items.length - 1]!.key;
    }
    for (const k of this.recent) if (timeOf(k) < (this.newest ?? 0) - 2 * SETTLE_MS) this.recent.delete(k);
  }

  async series(now: number): Promise<RenewalSeries> {
    const minutes = CHART_HOURS * 60;
    const start = Math.floor(now / MINUTE) * MINUTE - (minutes - 1) * MINUTE;
    // One reader at a time: concurrent views wait for the same catch-up.
    this.pending ??= this.catchUp(start).finally(() => (this.pending = undefined));
    await this.pending;
    for (const m of this.counts.keys()) if (m < start) this.counts.delete(m);
    const t: number[] = [];
    const ok: number[] = [];
    const failed: number[] = [];
    for (let i = 0; i < minutes; i++) {
      const m = start + i * MINUTE;
      const c = this.counts.get(m);
      t.push(m / 1000);
      ok.push(c?.ok ?? 0);
      failed.push(c?.failed ?? 0);
    }
    const sum = (a: number[]) => a.reduce((x, y) => x + y, 0);
    return { t, ok, failed, okTotal: sum(ok), failedTotal: sum(failed), completeFrom: Math.max(start, this.completeFrom) };
  }
}

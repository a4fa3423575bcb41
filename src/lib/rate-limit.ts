/**
 * Per-key token buckets on a monotonic clock (a wall-clock step neither blocks nor frees
 * callers): each key may make `burst` calls at once and `perSecond` more every second after.
 * Memory stays bounded: past `maxKeys`, keys whose bucket has refilled are forgotten (a full
 * bucket is what a new key gets anyway), then the oldest.
 */
import { performance } from "node:perf_hooks";

export interface RateLimitOptions {
  perSecond: number;
  burst: number;
  maxKeys?: number;
  /** Milliseconds, monotonic; tests pass their own. */
  now?: () => number;
}

export class RateLimiter {
  private readonly buckets = new Map<string, { tokens: number; at: number }>();
  private readonly now: () => number;
  private readonly maxKeys: number;

  constructor(private readonly o: RateLimitOptions) {
    this.now = o.now ?? (() => performance.now());
    this.maxKeys = o.maxKeys ?? 100_000;
  }

  /** Takes one call for `key`: true when allowed, false when the key is over its rate. */
  take(key: string): boolean {
    const now = this.now();
    const b = this.buckets.get(key);
    const tokens = b ? Math.min(this.o.burst, b.tokens + ((now - b.at) / 1000) * this.o.perSecond) : this.o.burst;
    if (tokens < 1) {
      b!.tokens = tokens;
      b!.at = now;
      return false;
    }
    if (!b && this.buckets.size >= this.maxKeys) this.forgetFull(now);
    this.buckets.set(key, { tokens: tokens - 1, at: now });
    return true;
  }

  /** Forgets refilled buckets, then the oldest, down to 90% of maxKeys (so this runs once per many new keys). */
  private forgetFull(now: number): void {
    const keep = Math.floor(this.maxKeys * 0.9);
    for (const [k, b] of this.buckets) {
      if (b.tokens + ((now - b.at) / 1000) * this.o.perSecond >= this.o.burst) this.buckets.delete(k);
    }
    for (const k of this.buckets.keys()) {
      if (this.buckets.size <= keep) break;
      this.buckets.delete(k);
    }
  }
}

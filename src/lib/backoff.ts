/**
 * Retry pacing shared by the daemons (`mezd identity`, `mezd node start`): exponential backoff
 * with full jitter, and a sleep that an AbortSignal ends at once. Pure but for the timer: the
 * randomness is passed in, so tests can pin it.
 */

export interface BackoffOptions {
  /** The first failure's ceiling; it doubles with each further failure. */
  baseMs: number;
  /** The ceiling never grows past this (it may be below baseMs: then it is the ceiling from the start). */
  maxMs: number;
  /** Added to every delay, so a retry never comes at once even when the jitter rolls 0. Default 0. */
  minMs?: number;
  /** 0..1. Default Math.random. */
  random?: () => number;
}

/**
 * Delays for a run of failures: `minMs + random * min(baseMs * 2^n, maxMs)` for the n-th failure
 * in a row (n from 0), "full jitter", so a fleet that failed together does not retry together.
 */
export class Backoff {
  private n = 0;
  private readonly random: () => number;

  constructor(private readonly opts: BackoffOptions) {
    if (!(opts.baseMs > 0) || !(opts.maxMs > 0)) throw new RangeError("backoff: baseMs and maxMs must be positive");
    this.random = opts.random ?? Math.random;
  }

  /** Failures so far in this run. */
  get failures(): number {
    return this.n;
  }

  /** The ceiling of the next delay's jitter (without minMs). */
  ceiling(): number {
    // 2 ** n overflows to Infinity long after min() has capped it; no loop counter can wrap.
    return Math.min(this.opts.baseMs * 2 ** Math.min(this.n, 52), this.opts.maxMs);
  }

  /** Records a failure and returns how long to wait before the next attempt. */
  next(): number {
    const delay = (this.opts.minMs ?? 0) + Math.round(this.random() * this.ceiling());
    this.n++;
    return delay;
  }

  /** A success ends the run: the next failure starts from baseMs again. */
  reset(): void {
    this.n = 0;
  }
}

/** Resolves after `ms`, or at once when `signal` aborts (never rejects). Leaves no listener behind. */
export function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted || ms <= 0) return resolve();
    const done = () => {
      clearTimeout(t);
      signal.removeEventListener("abort", done);
      resolve();
    };
    const t = setTimeout(done, ms);
    signal.addEventListener("abort", done, { once: true });
  });
}

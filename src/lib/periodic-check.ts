import type { Logger } from "./log.js";

export interface PeriodicCheckOptions {
  /** The check itself; a rejection is logged (see `failed`), never thrown at the caller. */
  check: () => Promise<void>;
  /** How often start() runs it. */
  intervalMs: number;
  log: Logger;
  /** Logged (error) when the check starts failing, with the error's message; not again until it has worked. */
  failed: string;
  /** Logged (info) when it works again after failing. */
  recovered: string;
}

/**
 * An async check run every `intervalMs` and on demand, one run at a time. A run asked for while
 * one is under way is made once more right after it (however many asked meanwhile): the change
 * that prompted it may have come too late for the run under way, and should not wait for the next
 * interval. A backend outage is logged once when it starts and once when it ends, not every run.
 */
export class PeriodicCheck {
  private timer: NodeJS.Timeout | undefined;
  private current: Promise<void> | undefined;
  private again = false;
  private failing = false;

  constructor(private readonly opts: PeriodicCheckOptions) {}

  start(): void {
    // A tick that finds a run under way is dropped: a check slower than the interval must not
    // turn into checks back to back. Only run() from outside asks for one more.
    this.timer = setInterval(() => void (this.current ?? this.run()), this.opts.intervalMs);
    this.timer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
  }

  /** The runs under way (the one running and any asked for meanwhile), if any. */
  get running(): Promise<void> | undefined {
    return this.current;
  }

  /** Runs the check now, or once more after the run under way; resolves (never rejects) once a run begun after this call has ended. */
  run(): Promise<void> {
    if (this.current) this.again = true;
    else this.current = this.loop();
    return this.current;
  }

  private async loop(): Promise<void> {
    try {
      do {
        this.again = false;
        await this.once();
      } while (this.again);
    } finally {
      this.current = undefined;
    }
  }

  private async once(): Promise<void> {
    try {
      await this.opts.check();
      if (this.failing) this.opts.log.info(this.opts.recovered);
      this.failing = false;
    } catch (e) {
      if (!this.failing) this.opts.log.error(this.opts.failed, { error: (e as Error).message });
      this.failing = true;
    }
  }
}

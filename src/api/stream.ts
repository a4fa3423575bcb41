/**
 * Holding a change stream (SPEC §20), as the identity daemon and the node agent both do: opened
 * again after a cut with jittered backoff, asked for again only after minutes when the service
 * refuses it, each new failure logged once, and the agent's polling covering every gap.
 */
import { Code, ConnectError } from "@connectrpc/connect";
import { Backoff, sleep } from "../lib/backoff.js";
import { isMeziteError, MeziteError } from "../lib/errors.js";
import type { Logger } from "../lib/log.js";
import type { Keepalive } from "./client.js";

/**
 * A change stream is quiet for hours, so its only traffic is these HTTP/2 PINGs, and each one
 * wakes the service (TLS record in, PING ACK out): at 60 s, 11,000 agents cost it more CPU than
 * their renewals' 10 % (npm run bench, fleet). They exist to keep NAT and L4 load balancer state
 * (Azure LB idles out after 4 minutes by default, AWS NAT gateways and NLBs after 350 s) and to
 * find a dead connection (within ~3.5 minutes); every 3 minutes keeps a minute's margin under
 * Azure's 4. L7 proxies answer PINGs themselves, so no PING interval helps against theirs.
 */
export const WATCH_KEEPALIVE: Keepalive = { pingIntervalMs: 180_000, pingTimeoutMs: 20_000 };
/** The shortest idle timeout a NAT or L4 load balancer is commonly left at (Azure Load Balancer's default). */
export const SHORTEST_NAT_IDLE_MS = 240_000;
/** Reconnecting a cut stream: full jitter from 1 s doubling to 60 s, so a fleet cut together (a service restart) comes back spread out. */
const WATCH_BACKOFF = { baseMs: 1_000, maxMs: 60_000 } as const;
/** A service over its stream caps (ERR_RATE_LIMITED) or without streams (UNIMPLEMENTED) is asked again after this, ±50 %. */
const WATCH_REFUSED_MS = 5 * 60_000;

export function streamRefused(e: unknown): boolean {
  if (isMeziteError(e, "ERR_RATE_LIMITED")) return true;
  const cause = e instanceof MeziteError ? e.cause : e;
  return cause instanceof ConnectError && cause.code === Code.Unimplemented;
}

export interface HeldStream {
  /** Runs the stream until it ends; calls `delivered` when its first event has been applied. */
  run(delivered: () => void): Promise<void>;
  /** After each run, ended or failed: the stream is down. */
  down(): void;
  /** A failure after which holding on makes no sense (this node was removed): rethrown. */
  fatal?(e: unknown): boolean;
  log: Logger;
  /** What the agent does while no stream is up, for the log ("polling", ...). */
  meanwhile: string;
}

/** Holds `s` until `signal` aborts. */
export async function holdStream(s: HeldStream, signal: AbortSignal, random: () => number): Promise<void> {
  const backoff = new Backoff({ ...WATCH_BACKOFF, random });
  let lastError = "";
  while (!signal.aborted) {
    let wait: number;
    try {
      await s.run(() => {
        s.log.info(lastError !== "" ? "change stream up again" : "change stream up");
        lastError = "";
        backoff.reset();
      });
      wait = backoff.next(); // ended by the service (its lifetime, a restart)
    } catch (e) {
      if (signal.aborted) break;
      if (s.fatal?.(e)) throw e;
      const refused = streamRefused(e);
      wait = refused ? WATCH_REFUSED_MS * (0.5 + random()) : backoff.next();
      const message = (e as Error)?.message ?? String(e);
      if (message !== lastError) s.log.warn(`change stream ${refused ? "refused" : "failed"}; ${s.meanwhile} meanwhile`, { error: message, retry_in_ms: Math.round(wait) });
      lastError = message;
    } finally {
      s.down();
    }
    await sleep(wait, signal);
  }
}

/**
 * Change streams (SPEC §20): each node agent and each identity daemon holds one long-lived
 * server stream (NodeService.Watch, RenewService.Watch) on which the service pushes what it would
 * otherwise be asked for every few seconds: the revocation state (KRL, lock lists, User CA keys,
 * the Host CA state) to nodes; CA phase changes and "you were locked or deleted" to daemons.
 *
 * The service learns of changes from what it runs once a second anyway: the CaWatcher (CA
 * records, also changed by another auth service on the same backend) calls casChanged(), and one
 * timer here rebuilds the Revocations cache (at most once a second, whatever the number of
 * streams) and compares it with the last state pushed. Nothing runs per stream while nothing
 * changes: no timer but a one-shot at the stream's end of life, no backend read; keepalive is the
 * clients' HTTP/2 PING, answered by nghttp2 without JavaScript.
 *
 * Lifetimes: a node's stream ends when the certificate it was opened with expires (it carries lock
 * lists and the KRL). A daemon's outlives its certificate (renewed every 20 minutes: moving the
 * stream each time would cost more than the stream itself) since it carries only the public CA
 * state and whether this very instance was locked or deleted, after which it ends; it ends after
 * DAEMON_STREAM_MS (±10 %) in any case, so every daemon authenticates again once a day and a
 * fleet spreads over auth services added meanwhile.
 *
 * Streams are capped in all and per source address; one more is refused with ERR_RATE_LIMITED
 * (RESOURCE_EXHAUSTED) and the agent polls as before.
 */
import type { ServerHttp2Session } from "node:http2";
import { create } from "@bufbuild/protobuf";
import { WatchNodeEventSchema, type GetRevocationsResponse, type WatchNodeEvent } from "../api/gen/mezite/v1/node_pb.js";
import { WatchCaStateEventSchema, type WatchCaStateEvent } from "../api/gen/mezite/v1/renew_pb.js";
import { sourceOf } from "../lib/connections.js";
import { MeziteError } from "../lib/errors.js";
import type { Logger } from "../lib/log.js";
import { PeriodicCheck } from "../lib/periodic-check.js";
import { caState, type ClusterCas } from "./cas.js";
import type { AuthContext, Caller } from "./context.js";
import type { Revocations } from "./revocations.js";
import { daemonCaState } from "./rotation.js";

export interface WatchLimits {
  /**
   * Streams at most in all (default 20,000): each agent's connection and stream cost ~75 KiB of
   * service memory, ~60 KiB of it Node's TLS and nghttp2 floor (npm run bench, fleet), so this
   * bounds them to ~1.5 GiB; agents beyond it poll.
   */
  maxStreams: number;
  /**
   * Streams at most from one source, an IPv4 address or an IPv6 /64 (default 2,000): a fleet behind one NAT gateway
   * still streams at the size one gateway usually fronts, while one host cannot take every slot.
   */
  maxPerSource: number;
}

export const DEFAULT_WATCH_LIMITS: WatchLimits = { maxStreams: 20_000, maxPerSource: 2_000 };

/** How often the revocation state is rebuilt and compared while any stream is open. */
const CHECK_INTERVAL_MS = 1_000;
/** A daemon's stream ends after this long (±10 %) and is opened again with its current certificate. */
export const DAEMON_STREAM_MS = 24 * 3_600_000;
/** setTimeout's longest delay; a stream whose certificate outlives it ends then and reconnects. */
const MAX_TIMER_MS = 2 ** 31 - 1;

interface Subscriber {
  /** What its address counts as against the per-source cap: an IPv6 /64 is one source (lib/connections.ts). */
  source: string;
  session: ServerHttp2Session | undefined;
  wake: (() => void) | undefined;
  ended: boolean;
}

interface NodeSub extends Subscriber {
  nodeId: string;
  /** The KRL version this node holds, as far as the stream knows: an event repeats no KRL it has. */
  krlVersion: string;
  pending: GetRevocationsResponse | undefined;
  removed: boolean;
}

interface DaemonSub extends Subscriber {
  identityId: string;
  instanceId: string;
  pending: { caState: string; renewWithinMs: bigint } | undefined;
  revoked: boolean;
}

const digestOf = (r: GetRevocationsResponse): string =>
  [r.krlVersion, r.caState, r.userCaState, r.userCaSshKeys.join(","), r.lockedIdentityIds.join(","), r.lockedInstanceIds.join(","), r.lockedRoles.join(","), r.lockedLogins.join(",")].join("|");

export class WatchHub {
  private readonly nodes = new Set<NodeSub>();
  private readonly daemons = new Set<DaemonSub>();
  private readonly perSource = new Map<string, number>();
  /** Sessions holding watch streams: their idle timeout is off while they do. */
  private readonly held = new Map<ServerHttp2Session, number>();
  private readonly checks: PeriodicCheck;
  private lastNodeDigest = "";
  private lastCaState = "";
  /** The state nodes are sent, one object until the revocation state or the CAs change (nodeState). */
  private state: { raw: GetRevocationsResponse; cas: ClusterCas; value: GetRevocationsResponse } | undefined;
  /** The value compare() last looked at: between rebuilds there is nothing to compare. */
  private compared: GetRevocationsResponse | undefined;
  /** Each state's event for nodes, with and without its KRL: one message object for every stream, so it is encoded once. */
  private readonly nodeEvents = new WeakMap<GetRevocationsResponse, { full: WatchNodeEvent; withoutKrl: WatchNodeEvent }>();
  private readonly locked = new WeakMap<GetRevocationsResponse, { identities: ReadonlySet<string>; instances: ReadonlySet<string> }>();

  constructor(
    private readonly ctx: AuthContext,
    private readonly revocations: Revocations,
    log: Logger,
    private readonly limits: WatchLimits = DEFAULT_WATCH_LIMITS,
    /** The idle timeout sessions get back once their last watch stream ends. */
    private readonly sessionTimeoutMs = 0,
  ) {
    this.checks = new PeriodicCheck({
      check: () => this.compare(),
      intervalMs: CHECK_INTERVAL_MS,
      log,
      failed: "watch streams: could not read the revocation state; retrying every second",
      recovered: "watch streams: reading the revocation state works again",
    });
  }

  /** Streams open now: nodes and daemons. */
  get size(): { nodes: number; daemons: number } {
    return { nodes: this.nodes.size, daemons: this.daemons.size };
  }

  start(): void {
    this.checks.start();
  }

  stop(): void {
    this.checks.stop();
    for (const s of [...this.nodes, ...this.daemons]) this.end(s);
  }

  /** A CA record changed (CaWatcher): daemons and nodes hear of it now, not at the next tick. */
  casChanged(): void {
    void this.check();
  }

  /** Runs the comparison now, or right after the one under way; failures are logged once, then retried every tick. */
  check(): Promise<void> {
    return this.checks.run();
  }

  private async compare(): Promise<void> {
    if (this.nodes.size + this.daemons.size === 0) return; // nobody to tell: no backend read
    const pending = daemonCaState(this.ctx.cas);
    if (pending.caState !== this.lastCaState) {
      this.lastCaState = pending.caState;
      for (const s of this.daemons) {
        s.pending = pending;
        s.wake?.();
      }
    }
    const value = await this.nodeState();
    if (value === this.compared) return;
    this.compared = value;
    // A rebuild with the same content (a lock's TTL ran out on nothing) is not pushed.
    const digest = digestOf(value);
    if (digest !== this.lastNodeDigest) {
      this.lastNodeDigest = digest;
      for (const s of this.nodes) {
        s.pending = value;
        s.wake?.();
      }
    }
    // Removed or replaced through any service: the rebuild read the revoked host keys.
    const removed = this.revocations.removedNodes();
    for (const s of this.nodes) {
      if (s.removed || !removed.has(s.nodeId)) continue;
      s.removed = true;
      s.wake?.();
    }
    for (const s of this.daemons) {
      if (s.revoked || !this.isRevoked(s, value)) continue;
      s.revoked = true;
      s.wake?.();
    }
  }

  private async nodeState(): Promise<GetRevocationsResponse> {
    const raw = await this.revocations.get();
    if (this.state?.raw !== raw || this.state.cas !== this.ctx.cas) this.state = { raw, cas: this.ctx.cas, value: { ...raw, userCaState: caState(this.ctx.cas, ["user"]) } };
    return this.state.value;
  }

  /** Its instance deleted (a tombstone), or it or its identity locked. */
  private isRevoked(s: DaemonSub, value: GetRevocationsResponse): boolean {
    const locked = this.lockedSets(value);
    return locked.identities.has(s.identityId) || locked.instances.has(s.instanceId) || this.revocations.revokedInstances().has(s.instanceId);
  }

  /**
   * A state's locked identities and instances as sets, made once per state: every daemon stream
   * is looked up in them at each change (10,000 streams against 1,000 locks by Array.includes
   * would be 10 million comparisons a change).
   */
  private lockedSets(value: GetRevocationsResponse): { identities: ReadonlySet<string>; instances: ReadonlySet<string> } {
    let sets = this.locked.get(value);
    if (!sets) this.locked.set(value, (sets = { identities: new Set(value.lockedIdentityIds), instances: new Set(value.lockedInstanceIds) }));
    return sets;
  }

  /** Counts the stream against the caps (or refuses it) and keeps its session open while it lasts. */
  private admit(s: Subscriber): void {
    const from = this.perSource.get(s.source) ?? 0;
    if (this.nodes.size + this.daemons.size >= this.limits.maxStreams) {
      throw new MeziteError("ERR_RATE_LIMITED", `the auth service holds its most change streams (${this.limits.maxStreams}): poll instead`);
    }
    if (from >= this.limits.maxPerSource) {
      throw new MeziteError("ERR_RATE_LIMITED", `the auth service holds its most change streams from one address (${this.limits.maxPerSource}): poll instead`);
    }
    this.perSource.set(s.source, from + 1);
    if (s.session && !s.session.destroyed) {
      const n = this.held.get(s.session) ?? 0;
      // Quiet for minutes on end by design: the session's idle timeout would close it. The
      // client's PINGs find a dead connection; TCP keepalive finds a vanished client.
      if (n === 0) {
        s.session.setTimeout(0);
        try {
          s.session.socket.setKeepAlive(true, 60_000);
        } catch {
          // not a TCP socket
        }
      }
      this.held.set(s.session, n + 1);
    }
  }

  private release(s: Subscriber): void {
    const from = (this.perSource.get(s.source) ?? 1) - 1;
    if (from > 0) this.perSource.set(s.source, from);
    else this.perSource.delete(s.source);
    if (s.session) {
      const n = (this.held.get(s.session) ?? 1) - 1;
      if (n > 0) this.held.set(s.session, n);
      else {
        this.held.delete(s.session);
        if (!s.session.destroyed && this.sessionTimeoutMs > 0) s.session.setTimeout(this.sessionTimeoutMs);
      }
    }
  }

  private end(s: Subscriber): void {
    s.ended = true;
    s.wake?.();
  }

  /**
   * A node's stream: the state now (without the KRL when the node holds it), then each change.
   * The caller has been checked to be a live node (nodes.ts callingNode) and has reported what
   * it holds.
   */
  watchNode(caller: Caller, session: ServerHttp2Session | undefined, heldKrlVersion: string, signal: AbortSignal): AsyncGenerator<WatchNodeEvent> {
    const sub: NodeSub = {
      source: sourceOf(caller.remoteAddr), session, wake: undefined, ended: false,
      nodeId: caller.cert?.nodeId ?? "", krlVersion: heldKrlVersion, pending: undefined, removed: false,
    };
    const lifeMs = caller.cert ? caller.cert.notAfter.getTime() - this.ctx.now() : 0;
    return this.run(sub, lifeMs, signal, this.nodes, async () => {
      const value = await this.nodeState();
      if (this.lastNodeDigest === "") this.lastNodeDigest = digestOf(value);
      return { events: [this.nodeEvent(sub, value)], last: false };
    }, () => {
      if (sub.removed) return { events: [create(WatchNodeEventSchema, { removed: true })], last: true };
      const value = sub.pending;
      sub.pending = undefined;
      return { events: value ? [this.nodeEvent(sub, value)] : [], last: false };
    });
  }

  private nodeEvent(sub: NodeSub, value: GetRevocationsResponse): WatchNodeEvent {
    const held = sub.krlVersion !== "" && sub.krlVersion === value.krlVersion;
    sub.krlVersion = value.krlVersion;
    let events = this.nodeEvents.get(value);
    if (!events) {
      events = { full: create(WatchNodeEventSchema, { revocations: value }), withoutKrl: create(WatchNodeEventSchema, { revocations: { ...value, krl: new Uint8Array(0) } }) };
      this.nodeEvents.set(value, events);
    }
    return held ? events.withoutKrl : events.full;
  }

  /** A daemon's stream: the CA state now, then each phase change, and a lock or deletion of its instance. */
  watchDaemon(caller: Caller, session: ServerHttp2Session | undefined, signal: AbortSignal): AsyncGenerator<WatchCaStateEvent> {
    const sub: DaemonSub = {
      source: sourceOf(caller.remoteAddr), session, wake: undefined, ended: false,
      identityId: caller.cert?.identityId ?? "", instanceId: caller.cert?.instanceId ?? "", pending: undefined, revoked: false,
    };
    const now = (revoked: boolean) =>
      create(WatchCaStateEventSchema, { ...daemonCaState(this.ctx.cas), revoked });
    return this.run(sub, DAEMON_STREAM_MS * (0.9 + Math.random() * 0.2), signal, this.daemons, async () => {
      // The revocation state as the ticks see it (rebuilt at most once a second).
      sub.revoked = this.isRevoked(sub, await this.nodeState());
      if (this.lastCaState === "") this.lastCaState = caState(this.ctx.cas);
      return { events: [now(sub.revoked)], last: sub.revoked };
    }, () => {
      if (sub.revoked) return { events: [now(true)], last: true };
      const p = sub.pending;
      sub.pending = undefined;
      return { events: p ? [create(WatchCaStateEventSchema, p)] : [], last: false };
    });
  }

  /**
   * The loop every stream runs: admitted, its first events, then whatever each wake-up finds,
   * until the client goes, its lifetime (`lifeMs`) ends, or a last event (removed, revoked).
   */
  private async *run<S extends Subscriber, E>(
    sub: S, lifeMs: number, signal: AbortSignal, set: Set<S>,
    first: () => Promise<{ events: E[]; last: boolean }>, next: () => { events: E[]; last: boolean },
  ): AsyncGenerator<E> {
    this.admit(sub);
    set.add(sub);
    const onAbort = () => this.end(sub);
    signal.addEventListener("abort", onAbort, { once: true });
    const expiry = setTimeout(() => this.end(sub), Math.max(0, Math.min(lifeMs, MAX_TIMER_MS)));
    expiry.unref();
    try {
      let step = await first();
      for (;;) {
        for (const e of step.events) yield e;
        if (step.last) return;
        if (step.events.length === 0) {
          if (sub.ended || signal.aborted) return;
          await new Promise<void>((resolve) => (sub.wake = resolve));
          sub.wake = undefined;
          if (sub.ended || signal.aborted) return;
        }
        step = next();
      }
    } finally {
      clearTimeout(expiry);
      signal.removeEventListener("abort", onAbort);
      set.delete(sub);
      this.release(sub);
      // With nobody listening nothing is compared: the next stream's first state is the one to compare with.
      if (this.nodes.size === 0) this.lastNodeDigest = "";
      if (this.daemons.size === 0) this.lastCaState = "";
    }
  }
}

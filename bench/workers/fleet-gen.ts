/**
 * The fleet section's load generator (bench/fleet.ts), a child process with an IPC channel. It
 * holds simulated identity daemons and node agents against one auth service, each on its own
 * TLS connection with a real client certificate (from real joins; see fleet.ts for how they are
 * shared), speaking the real protocol as src/identity/daemon.ts and src/node/agent.ts do:
 *  - stream: one Watch stream each, with the agents' HTTP/2 PINGs (WATCH_KEEPALIVE);
 *  - poll: daemons ask GetCaState every 45 s (±10 %) on a new connection each time, nodes ask
 *    GetRevocations every 2 s (±10 %) on their one connection, sending the KRL version they hold.
 * It records, per node agent, when it first saw a lock after `arm`.
 *
 * Messages in: setup, connect, arm, reopen, close. Out: one reply per message.
 */
import { Http2SessionManager, createGrpcTransport } from "@connectrpc/connect-node";
import { createClient, type Client } from "@connectrpc/connect";
import { NodeService } from "../../src/api/gen/mezite/v1/node_pb.js";
import { RenewService } from "../../src/api/gen/mezite/v1/renew_pb.js";
import { WATCH_KEEPALIVE } from "../../src/api/stream.js";
import { once } from "../rpc.js";

export interface Cred {
  certPem: string;
  keyPem: string;
  caPem: string;
}

export type FleetMessage =
  | { type: "setup"; addr: string; daemons: Cred[]; nodes: Cred[] }
  | { type: "connect"; kind: "daemon" | "node"; count: number; mode: "stream" | "poll" }
  | { type: "arm" }
  | { type: "reopen" }
  | { type: "close" };

export interface FleetReply {
  type: string;
  ok: number;
  failed: number;
  firstError: string;
  /** arm: epoch ms at which the last node agent saw the lock, and how many saw it. */
  lastSeenAt?: number;
  seen?: number;
}

interface Agent {
  kind: "daemon" | "node";
  mode: "stream" | "poll";
  cred: Cred;
  session: Http2SessionManager | undefined;
  stop: AbortController;
  /** The stream alone, so it can be reopened on the same connection. */
  streamStop: AbortController | undefined;
  krlVersion: string;
  lockSeenAt: number | undefined;
}

let addr = "";
let creds: { daemons: Cred[]; nodes: Cred[] } = { daemons: [], nodes: [] };
const agents: Agent[] = [];
let armed = false;
let errors = { failed: 0, first: "" };
let onLockSeen: (() => void) | undefined;

function sessionFor(cred: Cred): Http2SessionManager {
  return new Http2SessionManager(`https://${addr}`, { idleConnectionTimeoutMs: 5_000, ...WATCH_KEEPALIVE }, {
    cert: cred.certPem, key: cred.keyPem, ca: cred.caPem, rejectUnauthorized: true, minVersion: "TLSv1.3",
  });
}

function clientOf<T extends typeof NodeService | typeof RenewService>(service: T, session: Http2SessionManager): Client<T> {
  return createClient(service, createGrpcTransport({ baseUrl: `https://${addr}`, sessionManager: session, defaultTimeoutMs: 30_000 }));
}

function failed(e: unknown): void {
  errors.failed++;
  errors.first ||= (e as Error)?.message ?? String(e);
}

function sawRevocations(a: Agent, locked: number): void {
  if (!armed || a.lockSeenAt !== undefined || locked === 0) return;
  a.lockSeenAt = Date.now();
  onLockSeen?.();
}

/** Opens the agent's stream; resolves at its first event (or failure). */
function openStream(a: Agent): Promise<void> {
  a.session ??= sessionFor(a.cred);
  const stop = new AbortController();
  a.streamStop = stop;
  const signal = AbortSignal.any([a.stop.signal, stop.signal]);
  return new Promise<void>((resolve) => {
    let first = true;
    const up = () => {
      if (first) resolve();
      first = false;
    };
    void (async () => {
      try {
        if (a.kind === "daemon") {
          for await (const ev of clientOf(RenewService, a.session!).watch({ heldCaState: "" }, { signal, timeoutMs: 0 })) {
            void ev;
            up();
          }
        } else {
          for await (const ev of clientOf(NodeService, a.session!).watch({ krlVersion: a.krlVersion }, { signal, timeoutMs: 0 })) {
            if (ev.revocations) {
              a.krlVersion = ev.revocations.krlVersion;
              sawRevocations(a, ev.revocations.lockedIdentityIds.length);
            }
            up();
          }
        }
      } catch (e) {
        if (!signal.aborted) failed(e);
      }
      up();
    })();
  });
}

/** Polls as today's agents do; resolves after the first answer. */
function startPolling(a: Agent): Promise<void> {
  const intervalMs = a.kind === "daemon" ? 45_000 : 2_000;
  return new Promise<void>((resolve) => {
    let first = true;
    const poll = async () => {
      try {
        if (a.kind === "daemon") {
          await once(RenewService, addr, a.cred, (c) => c.getCaState({ heldCaState: "" }));
        } else {
          a.session ??= sessionFor(a.cred);
          const r = await clientOf(NodeService, a.session).getRevocations({ krlVersion: a.krlVersion }, { signal: a.stop.signal });
          if (r.krl.length > 0) a.krlVersion = r.krlVersion;
          sawRevocations(a, r.lockedIdentityIds.length);
        }
      } catch (e) {
        if (!a.stop.signal.aborted) failed(e);
      }
      if (first) resolve();
      first = false;
      if (!a.stop.signal.aborted) setTimeout(() => void poll(), intervalMs * (0.9 + Math.random() * 0.2));
    };
    // Spread over one interval, as a fleet started at different times is; a daemon counts as
    // connected at once (its first ask may be up to 45 s away).
    setTimeout(() => void poll(), Math.random() * intervalMs);
    if (a.kind === "daemon") resolve();
  });
}

/** Runs `fn` over `items`, `parallel` at a time. */
async function lanes<T>(items: T[], parallel: number, fn: (x: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: parallel }, async () => {
    while (next < items.length) await fn(items[next++]!);
  }));
}

async function handle(m: FleetMessage): Promise<FleetReply> {
  errors = { failed: 0, first: "" };
  const reply = (type: string, extra: Partial<FleetReply> = {}): FleetReply => ({ type, ok: agents.length, failed: errors.failed, firstError: errors.first, ...extra });
  switch (m.type) {
    case "setup":
      addr = m.addr;
      creds = { daemons: m.daemons, nodes: m.nodes };
      return reply("ready");
    case "connect": {
      const pool = m.kind === "daemon" ? creds.daemons : creds.nodes;
      const fresh: Agent[] = Array.from({ length: m.count }, (_, i) => ({
        kind: m.kind, mode: m.mode, cred: pool[i % pool.length]!, session: undefined, stop: new AbortController(), streamStop: undefined, krlVersion: "", lockSeenAt: undefined,
      }));
      agents.push(...fresh);
      await lanes(fresh, 32, (a) => (m.mode === "stream" ? openStream(a) : startPolling(a)));
      return reply("connected");
    }
    case "arm": {
      armed = true;
      const nodes = agents.filter((a) => a.kind === "node");
      for (const a of nodes) a.lockSeenAt = undefined;
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, 30_000);
        onLockSeen = () => {
          if (nodes.every((a) => a.lockSeenAt !== undefined)) {
            clearTimeout(timer);
            resolve();
          }
        };
      });
      armed = false;
      onLockSeen = undefined;
      const seen = nodes.filter((a) => a.lockSeenAt !== undefined);
      return reply("seen", { seen: seen.length, lastSeenAt: Math.max(0, ...seen.map((a) => a.lockSeenAt!)) });
    }
    case "reopen": {
      // Each daemon's stream again on a new connection: what a daemon does once a day (the
      // service ends its stream then) or after a cut.
      const daemons = agents.filter((a) => a.kind === "daemon" && a.mode === "stream");
      await lanes(daemons, 32, (a) => {
        a.streamStop?.abort();
        a.session?.abort();
        a.session = undefined;
        return openStream(a);
      });
      return reply("reopened");
    }
    case "close":
      for (const a of agents.splice(0)) {
        a.stop.abort();
        a.session?.abort();
      }
      return reply("closed");
  }
}

process.on("message", (m: FleetMessage) => {
  void handle(m).then((r) => process.send!(r), (e: unknown) => process.send!({ type: "error", ok: 0, failed: 1, firstError: String(e) }));
});
process.on("disconnect", () => process.exit(0));

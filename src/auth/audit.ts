/**
 * Audit events (SPEC §9): stored in the backend and emitted as JSON lines. Nothing secret is
 * ever a field here: events name identities, instances and serials, never tokens or keys.
 */
import { randomBytes } from "node:crypto";
import type { Backend, WriteOp } from "../backend/backend.js";
import type { Logger } from "../lib/log.js";
import { keys } from "./records.js";

export type AuditType =
  | "agent_identity.create"
  | "agent_identity.delete"
  | "agent_identity.join"
  | "agent_identity.renew"
  | "agent_identity.generation_mismatch"
  | "agent_identity.instance_delete"
  | "agent_identity.release"
  | "lock.create"
  | "lock.delete"
  | "role.create"
  | "role.delete"
  | "token.create"
  | "token.delete"
  | "node.join"
  | "node.renew"
  | "node.delete"
  | "join_token.create"
  | "join_token.delete"
  | "admin.revoke_certificates"
  | "ca.rotation"
  | "join.refused_unknown_tokens"
  | "join.refused_unverified_id_tokens"
  | "dashboard.sign_in_link"
  | "dashboard.sign_in"
  | "dashboard.sign_out";

export interface AuditEvent {
  time: number;
  type: AuditType;
  identity: string;
  instance: string;
  roles: string[];
  generation: string;
  remote_addr: string;
  serial: string;
  success: boolean;
  error: string;
  detail: string;
  /** Who made an admin call (the admin certificate's name and serial); empty for daemons' calls. */
  actor: string;
  /** A join's or renewal's certificate, for `mezctl certs show` once its instance is gone (SPEC §19). */
  cert?: IssuedCertSummary;
}

/** What `certs show` prints of a certificate that the event's other fields do not hold. */
export interface IssuedCertSummary {
  principals: string[];
  /** Unix ms. */
  valid_after: number;
  valid_before: number;
  /** token, github, gitlab or oidc. */
  join_method: string;
  /** The join token resource of an ID-token join. */
  join_token?: string;
  /** The instance's recorded join claims (join-methods.ts RECORDED_CLAIMS). */
  claims?: Record<string, string>;
}

/** How long events are kept in the backend. */
export const AUDIT_RETENTION_MS = 90 * 24 * 3_600_000;

/** Refusals anyone can cause (unknown token ids, unverified ID tokens) are audited as one event per this period, per service. */
export const TALLY_PERIOD_MS = 10_000;

/**
 * Refusals anyone can send as fast as they like, so each costs a count in memory, not a write
 * (SPEC §13, §14): by kind, the event that sums them up.
 */
const TALLIES = {
  unknownToken: { type: "join.refused_unknown_tokens", error: "ERR_TOKEN_UNKNOWN", what: "with unknown token ids" },
  unverifiedIdToken: { type: "join.refused_unverified_id_tokens", error: "ERR_TOKEN_INVALID", what: "with ID tokens refused before their signature verified" },
} as const satisfies Record<string, { type: AuditType; error: string; what: string }>;
type TallyKind = keyof typeof TALLIES;

/** Distinct sources counted per kind and period at most; the rest are counted as "other". */
const MAX_SOURCES = 1000;

export class Audit {
  /** Refusals since the last summary, by kind, then by source (the remote address, and what it tried). */
  private tallies = new Map<TallyKind, Map<string, number>>();
  private summaryTimer: NodeJS.Timeout | undefined;

  constructor(
    private readonly backend: Backend,
    private readonly log: Logger,
    private readonly now: () => number,
  ) {}

  /** A join refused because its token id (or join token name) is unknown. */
  tallyUnknownToken(remoteAddr: string): void {
    this.tally("unknownToken", remoteAddr.slice(0, 64));
  }

  /** A join refused before its ID token's signature verified (`code`: why, e.g. ERR_ISSUER_UNREACHABLE). */
  tallyUnverifiedIdToken(remoteAddr: string, joinToken: string, code: string): void {
    this.tally("unverifiedIdToken", `${remoteAddr.slice(0, 64)} join_token=${joinToken.slice(0, 64)} ${code}`);
  }

  private tally(kind: TallyKind, source: string): void {
    let counts = this.tallies.get(kind);
    if (!counts) this.tallies.set(kind, (counts = new Map()));
    const key = counts.size < MAX_SOURCES || counts.has(source) ? source : "other";
    counts.set(key, (counts.get(key) ?? 0) + 1);
    this.summaryTimer ??= setTimeout(() => void this.flushTallies(), TALLY_PERIOD_MS).unref();
  }

  /** Writes the pending summaries of counted refusals, one event per kind, if any (also on stop). */
  async flushTallies(): Promise<void> {
    clearTimeout(this.summaryTimer);
    this.summaryTimer = undefined;
    const tallies = this.tallies;
    this.tallies = new Map();
    for (const [kind, sources] of tallies) {
      const { type, error, what } = TALLIES[kind];
      const counts = [...sources].sort((a, b) => b[1] - a[1]);
      const total = counts.reduce((n, [, c]) => n + c, 0);
      const from = counts.slice(0, 20).map(([source, c]) => `${source} (${c})`).join(", ");
      await this.emit({
        type,
        success: false,
        error,
        remote_addr: counts[0]![0].split(" ")[0]!,
        detail: `${total} join${total === 1 ? "" : "s"} ${what} from ${from}${counts.length > 20 ? ", ..." : ""}`,
      });
    }
  }

  /** Logs and stores an event on its own. */
  async emit(e: Partial<AuditEvent> & { type: AuditType }): Promise<void> {
    const entry = this.entry(e);
    entry.publish();
    try {
      await this.backend.write(entry.ops);
    } catch (err) {
      this.log.error("could not store audit event", { type: e.type, error: (err as Error).message });
    }
  }

  /**
   * An event as a write for the caller's own batch, so a change and its audit event commit
   * together; `publish` logs it, once the batch has committed. `ops` is the event plus, for an
   * event that issued a certificate (`cert`), the index from its serial to the event
   * (keys.auditSerial), kept as long as the event: `certs show` is a point read.
   */
  entry(e: Partial<AuditEvent> & { type: AuditType }): { op: WriteOp; ops: WriteOp[]; publish(): void } {
    const event: AuditEvent = {
      time: this.now(),
      identity: "",
      instance: "",
      roles: [],
      generation: "",
      remote_addr: "",
      serial: "",
      success: true,
      error: "",
      detail: "",
      actor: "",
      ...e,
    };
    // Time-ordered keys make `audit ls --since` a range scan.
    const key = `${auditKeyAt(event.time)}-${randomBytes(4).toString("hex")}`;
    const expires = event.time + AUDIT_RETENTION_MS;
    const op: WriteOp = { op: "put", key, value: JSON.stringify(event), expires };
    const index: WriteOp[] = event.cert !== undefined && event.serial !== "" ? [{ op: "put", key: keys.auditSerial(event.serial), value: key, expires }] : [];
    return {
      op,
      ops: [op, ...index],
      publish: () => this.log.record({ audit: true, ...event, time: new Date(event.time).toISOString() }),
    };
  }

  /**
   * Events since `since` of `type` (or its prefix), oldest first, in pages as they are read. With
   * a `limit`, the newest `limit` of them.
   */
  async *list(since: number, type: string, limit: number): AsyncGenerator<AuditEvent[]> {
    if (limit > 0) {
      // The newest `limit`, read backwards from the end: what they cost is the limit's, not the window's.
      const { events } = await newestEvents(this.backend, since, type, limit, Infinity);
      events.reverse();
      for (let i = 0; i < events.length; i += AUDIT_PAGE) yield events.slice(i, i + AUDIT_PAGE);
      return;
    }
    for (let after = `${keys.audit}${String(Math.max(0, since - 1)).padStart(15, "0")}~`; ; ) {
      const items = await this.backend.range(keys.audit, { startAfter: after, limit: AUDIT_PAGE });
      const events = items.filter((i) => mayBeOfType(i.value, type)).map((i) => JSON.parse(i.value) as AuditEvent).filter((e) => ofType(e, type));
      if (events.length > 0) yield events;
      if (items.length < AUDIT_PAGE) return;
      after = items[items.length - 1]!.key;
    }
  }
}

/** An event of `type`, or of a type under it ("lock" takes "lock.create"); "" takes all. */
const ofType = (e: AuditEvent, type: string) => !type || e.type === type || e.type.startsWith(`${type}.`);

/**
 * Before parsing a stored event: false only when it cannot be of `type` (events are stored as
 * JSON.stringify wrote them, `"type":"..."` verbatim), so a search for a rare type over a long
 * window parses only its candidates, not every event (the dashboard's live page asks every 3 s).
 */
const mayBeOfType = (json: string, type: string) => !type || json.includes(`"type":"${type}`);

/** Events read from the backend, and sent, at a time. */
const AUDIT_PAGE = 1000;

/** Where events of instant `time` begin in the audit's keys (each adds "-" and a random suffix). */
export function auditKeyAt(time: number): string {
  return `${keys.audit}${String(Math.max(0, time)).padStart(15, "0")}`;
}

/**
 * The newest `limit` events since `since` of `type` (or its prefix), newest first, read backwards
 * from the end of the audit. At most `maxScan` events are read: `complete` says whether the
 * window was searched to its start.
 */
export async function newestEvents(backend: Backend, since: number, type: string, limit: number, maxScan: number): Promise<{ events: AuditEvent[]; complete: boolean }> {
  const floor = auditKeyAt(since);
  const events: AuditEvent[] = [];
  let scanned = 0;
  for (let after: string | undefined; ; ) {
    const items = await backend.range(keys.audit, { descending: true, limit: AUDIT_PAGE, ...(after === undefined ? {} : { startAfter: after }) });
    for (const i of items) {
      if (i.key < floor) return { events, complete: true };
      if (!mayBeOfType(i.value, type)) continue;
      const e = JSON.parse(i.value) as AuditEvent;
      if (ofType(e, type)) events.push(e);
      if (events.length >= limit) return { events, complete: true };
    }
    scanned += items.length;
    if (items.length < AUDIT_PAGE) return { events, complete: true };
    if (scanned >= maxScan) return { events, complete: false };
    after = items[items.length - 1]!.key;
  }
}

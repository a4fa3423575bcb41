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
  | "lock.create"
  | "lock.delete"
  | "role.create"
  | "role.delete"
  | "token.create"
  | "token.delete"
  | "node.join"
  | "node.renew";

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
}

/** How long events are kept in the backend. */
export const AUDIT_RETENTION_MS = 90 * 24 * 3_600_000;

export class Audit {
  constructor(
    private readonly backend: Backend,
    private readonly log: Logger,
    private readonly now: () => number,
  ) {}

  /** Logs and stores an event on its own. */
  async emit(e: Partial<AuditEvent> & { type: AuditType }): Promise<void> {
    const entry = this.entry(e);
    entry.publish();
    try {
      await this.backend.write([entry.op]);
    } catch (err) {
      this.log.error("could not store audit event", { type: e.type, error: (err as Error).message });
    }
  }

  /**
   * An event as a write for the caller's own batch, so a change and its audit event commit
   * together; `publish` logs it, once the batch has committed.
   */
  entry(e: Partial<AuditEvent> & { type: AuditType }): { op: WriteOp; publish(): void } {
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
      ...e,
    };
    // Time-ordered keys make `audit ls --since` a range scan.
    const key = `${keys.audit}${String(event.time).padStart(15, "0")}-${randomBytes(4).toString("hex")}`;
    return {
      op: { op: "put", key, value: JSON.stringify(event), expires: event.time + AUDIT_RETENTION_MS },
      publish: () => this.log.record({ audit: true, ...event, time: new Date(event.time).toISOString() }),
    };
  }

  async list(since: number, type: string, limit: number): Promise<AuditEvent[]> {
    const startAfter = `${keys.audit}${String(Math.max(0, since - 1)).padStart(15, "0")}~`;
    // No limit on the scan: a range limit would keep the oldest events (and 0 means none), while
    // the caller wants the newest `limit` of the matching ones.
    const items = await this.backend.range(keys.audit, { startAfter });
    const events = items.map((i) => JSON.parse(i.value) as AuditEvent).filter((e) => !type || e.type === type || e.type.startsWith(`${type}.`));
    return limit > 0 ? events.slice(-limit) : events;
  }
}

/** `audit ls` (SPEC §9): events as the admin API sends them. */
import { create } from "@bufbuild/protobuf";
import * as pb from "../../api/gen/mezite/v1/common_pb.js";
import type { AuditEvent } from "../audit.js";

export function auditToProto(e: AuditEvent): pb.AuditEvent {
  return create(pb.AuditEventSchema, {
    time: BigInt(e.time),
    type: e.type,
    identity: e.identity,
    instance: e.instance,
    roles: e.roles,
    generation: e.generation ? BigInt(e.generation) : 0n,
    remoteAddr: e.remote_addr,
    serial: e.serial,
    success: e.success,
    error: e.error,
    detail: e.detail,
    actor: e.actor,
  });
}

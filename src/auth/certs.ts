/**
 * `mezctl certs show SERIAL` (SPEC §19): from the serial sshd logs back to the run that got the
 * certificate. Each join and renewal audit event carries what the other fields do not (principals,
 * validity, join method and claims: IssuedCertSummary) and an index from the serial to the event,
 * both kept as long as the audit keeps events; so the answer needs neither the instance (an ended
 * CI run's is gone) nor a scan of the audit trail.
 */
import { create } from "@bufbuild/protobuf";
import { CertificateInfoSchema, type CertificateInfo } from "../api/gen/mezite/v1/admin_pb.js";
import { MeziteError } from "../lib/errors.js";
import { AUDIT_RETENTION_MS, type AuditEvent, type IssuedCertSummary } from "./audit.js";
import type { AuthContext } from "./context.js";
import { BACKDATE_MS } from "./issue.js";
import { keys, load, type IdentityRecord, type InstanceRecord, type IssuedCertRecord } from "./records.js";

/** What a join's or renewal's audit event keeps of the certificate it issued at `now`. */
export function certSummary(record: IssuedCertRecord, now: number, inst: Pick<InstanceRecord, "joinMethod" | "joinToken" | "claims">): IssuedCertSummary {
  return {
    principals: record.principals,
    valid_after: now - BACKDATE_MS,
    valid_before: record.expires,
    join_method: inst.joinMethod ?? "token",
    ...(inst.joinToken !== undefined ? { join_token: inst.joinToken } : {}),
    ...(inst.claims !== undefined && Object.keys(inst.claims).length > 0 ? { claims: inst.claims } : {}),
  };
}

/** SSH serials are unsigned 64-bit numbers: at most 20 decimal digits. */
const SERIAL = /^(0|[1-9][0-9]{0,19})$/;

export async function certificateInfo(ctx: AuthContext, serial: string): Promise<CertificateInfo> {
  if (!SERIAL.test(serial) || BigInt(serial) >= 1n << 64n) throw new MeziteError("ERR_USAGE", `"${serial.slice(0, 40)}" is not a certificate serial: give the decimal number sshd logs ("serial N") or cert_serial holds`);
  const unknown = () => new MeziteError("ERR_NOT_FOUND", `no certificate with serial ${serial} in the audit trail (kept ${AUDIT_RETENTION_MS / 86_400_000} days): not issued by this cluster, or issued before then`);
  const index = await ctx.backend.get(keys.auditSerial(serial));
  if (!index) throw unknown();
  const item = await ctx.backend.get(index.value);
  if (!item) throw unknown();
  const e = JSON.parse(item.value) as AuditEvent;
  const c = e.cert;
  if (!c || e.serial !== serial) throw unknown();
  const identity = await load<IdentityRecord>(ctx.backend, keys.identity(e.identity));
  // A name re-added since is another identity, whose instances never hold this one's id.
  const live = identity !== undefined && (await ctx.backend.get(keys.instance(identity.value.id, e.instance))) !== undefined;
  return create(CertificateInfoSchema, {
    serial,
    identity: e.identity,
    instanceId: e.instance,
    roles: e.roles,
    principals: c.principals,
    validAfter: BigInt(c.valid_after),
    validBefore: BigInt(c.valid_before),
    issuedBy: e.type,
    issuedAt: BigInt(e.time),
    generation: BigInt(e.generation || "0"),
    remoteAddr: e.remote_addr,
    joinMethod: c.join_method,
    joinToken: c.join_token ?? "",
    claims: c.claims ?? {},
    instanceLive: live,
  });
}

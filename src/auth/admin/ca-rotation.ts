/** Admin calls for CA rotation (SPEC §15): `mezctl ca status` and `mezctl ca rotate`. */
import { create } from "@bufbuild/protobuf";
import { CaKeyStatusSchema, CaStatusSchema, type CaStatus, type RotateCaRequest } from "../../api/gen/mezite/v1/admin_pb.js";
import { MeziteError } from "../../lib/errors.js";
import { CA_KINDS, PHASES, type CaKind, type Phase } from "../cas.js";
import type { AdminCaller, AuthContext } from "../context.js";
import { DEFAULT_GRACE_MS, caStatus, rotate } from "../rotation.js";

export async function getCaStatus(ctx: AuthContext): Promise<CaStatus[]> {
  return (await caStatus(ctx)).map((s) =>
    create(CaStatusSchema, {
      type: s.type,
      phase: s.phase,
      mode: s.mode,
      started: BigInt(s.started),
      phaseStarted: BigInt(s.phaseStarted),
      nextPhaseAt: BigInt(s.nextPhaseAt),
      lastRotated: BigInt(s.lastRotated),
      keys: s.keys.map((k) => create(CaKeyStatusSchema, k)),
      holdersTotal: s.holdersTotal,
      behindCount: s.behind.count,
      behind: s.behind.names,
    }),
  );
}

export async function rotateCa(ctx: AuthContext, by: AdminCaller, req: RotateCaRequest): Promise<CaStatus[]> {
  const kinds: CaKind[] | undefined = req.type === "all" ? CA_KINDS : CA_KINDS.includes(req.type as CaKind) ? [req.type as CaKind] : undefined;
  if (!kinds) throw new MeziteError("ERR_USAGE", `unknown CA type "${req.type.slice(0, 40)}": use user, host or all`);
  if (req.phase !== "" && !PHASES.includes(req.phase as Phase)) {
    throw new MeziteError("ERR_USAGE", `unknown phase "${req.phase.slice(0, 40)}": use ${PHASES.join(", ")}`);
  }
  await rotate(ctx, {
    kinds,
    phase: req.phase === "" ? undefined : (req.phase as Phase),
    graceMs: req.gracePeriodMs === 0n ? DEFAULT_GRACE_MS : Number(req.gracePeriodMs),
    actor: by.audit.actor,
    remoteAddr: by.audit.remote_addr,
    force: req.force,
  });
  return getCaStatus(ctx);
}

/**
 * The revocation state every node polls (SPEC §7): a KRL listing every unexpired certificate whose
 * identity, instance, role or login is locked or deleted, and the lock lists themselves.
 *
 * Computed from what is revoked, never from the whole fleet, so a poll costs the same with ten or
 * a hundred thousand identities: issued certificates are kept under their instance
 * (/certs/INSTANCE/SERIAL), and a deleted instance leaves a tombstone (/revoked-instances/INSTANCE)
 * until its last certificate expires. Only a role or login lock needs a scan of every issued
 * certificate; its result is kept for the lock's lifetime (no certificate is issued to a locked
 * role or login), rescanned once after a grace period for renewals that were in flight.
 */
import { create } from "@bufbuild/protobuf";
import { GetRevocationsResponseSchema, type GetRevocationsResponse } from "../api/gen/mezite/v1/node_pb.js";
import { encodeKrl } from "../ca/krl.js";
import type { AuthContext } from "./context.js";
import { activeLocks } from "./locks.js";
import { encode, keys, load, loadAll, loadChunks, type IdentityRecord, type InstanceRecord, type IssuedCertRecord, type LockRecord } from "./records.js";

/** Renewals and joins that read the locks just before a lock was made finish well within this. */
const IN_FLIGHT_GRACE_MS = 5_000;

/**
 * Keeps the certificates of instances about to be deleted in the KRL until they expire. Called
 * before the deletion, so no moment exists where an instance is gone and its certificates pass.
 */
export async function tombstone(ctx: AuthContext, instances: InstanceRecord[]): Promise<void> {
  const now = ctx.now();
  await Promise.all(
    instances.map(async (inst) => {
      const certs = await loadAll<IssuedCertRecord>(ctx.backend, keys.certsOf(inst.id));
      const expires = Math.max(inst.certExpires, ...certs.map((c) => c.value.expires));
      if (expires > now) await ctx.backend.put(keys.revokedInstance(inst.id), encode({ identityName: inst.identityName }), { expires });
    }),
  );
}

interface Scan {
  at: number;
  certs: { serial: bigint; expires: number }[];
}

export class Revocations {
  private cached: { at: number; value: GetRevocationsResponse } | undefined;
  private pending: Promise<GetRevocationsResponse> | undefined;
  /** Role and login locks by lock id: the serials a scan of every issued certificate found. */
  private readonly scans = new Map<string, Scan>();

  /** Many nodes polling every few seconds cost one computation per `maxAgeMs`. */
  constructor(private readonly ctx: AuthContext, private readonly maxAgeMs = 1000) {}

  async get(): Promise<GetRevocationsResponse> {
    const now = this.ctx.now();
    if (this.cached && now - this.cached.at < this.maxAgeMs) return this.cached.value;
    this.pending ??= this.compute(now).finally(() => (this.pending = undefined));
    return this.pending;
  }

  private async compute(now: number): Promise<GetRevocationsResponse> {
    const { backend, cas } = this.ctx;
    const [locks, tombstones] = await Promise.all([activeLocks(backend, now), backend.range(keys.revokedInstances)]);
    const ofKind = (k: LockRecord["kind"]) => locks.filter((l) => l.kind === k);
    const lockedIdentities = (await Promise.all(ofKind("agent_identity").map((l) => load<IdentityRecord>(backend, keys.identity(l.target)))))
      .filter((i) => i !== undefined)
      .map((i) => i.value.id);
    const lockedIdentityInstances = await Promise.all(lockedIdentities.map((id) => loadAll<InstanceRecord>(backend, keys.instancesOf(id))));
    const instanceIds = new Set([
      ...tombstones.map((t) => t.key.slice(keys.revokedInstances.length)),
      ...ofKind("instance").map((l) => l.target),
      ...lockedIdentityInstances.flat().map((i) => i.value.id),
    ]);
    const certsOfInstances = await Promise.all([...instanceIds].map((id) => loadAll<IssuedCertRecord>(backend, keys.certsOf(id))));
    const serials = new Set<bigint>();
    for (const c of certsOfInstances.flat()) if (c.value.expires > now) serials.add(BigInt(c.value.serial));
    for (const s of await this.scanned([...ofKind("role"), ...ofKind("login")], now)) serials.add(s);

    const krl = encodeKrl({ version: BigInt(now), generatedAt: Math.floor(now / 1000), sections: [{ caKey: cas.user.sshPublic, serials: [...serials] }] });
    const value = create(GetRevocationsResponseSchema, {
      krl,
      userCaSshKeys: [cas.user.sshPublicLine],
      lockedIdentityIds: lockedIdentities,
      lockedInstanceIds: ofKind("instance").map((l) => l.target),
      lockedRoles: ofKind("role").map((l) => l.target),
      lockedLogins: ofKind("login").map((l) => l.target),
    });
    this.cached = { at: now, value };
    return value;
  }

  /** Serials of the unexpired certificates each role or login lock catches, scanning only when needed. */
  private async scanned(locks: LockRecord[], now: number): Promise<bigint[]> {
    for (const id of this.scans.keys()) if (!locks.some((l) => l.id === id)) this.scans.delete(id);
    const stale = locks.filter((l) => {
      const s = this.scans.get(l.id);
      const graceOver = l.created + IN_FLIGHT_GRACE_MS;
      return !s || (s.at < graceOver && now >= graceOver);
    });
    if (stale.length > 0) {
      const found = new Map<string, Scan["certs"]>(stale.map((l) => [l.id, []]));
      for await (const chunk of loadChunks<IssuedCertRecord>(this.ctx.backend, keys.certs)) {
        for (const c of chunk) {
          if (c.expires <= now) continue;
          for (const l of stale) {
            if (l.kind === "role" ? c.roles.includes(l.target) : c.principals.includes(l.target)) found.get(l.id)!.push({ serial: BigInt(c.serial), expires: c.expires });
          }
        }
      }
      for (const [id, certs] of found) this.scans.set(id, { at: now, certs });
    }
    return locks.flatMap((l) => this.scans.get(l.id)!.certs.filter((c) => c.expires > now).map((c) => c.serial));
  }
}

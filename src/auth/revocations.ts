/**
 * The revocation state every node polls (SPEC §7): a KRL listing every unexpired certificate whose
 * identity, instance, role or login is locked or deleted, and the lock lists themselves.
 *
 * Computed from what is revoked, never from the whole fleet, so a poll costs the same with ten or
 * a hundred thousand identities: issued certificates are kept under their instance
 * (/certs/INSTANCE/SERIAL), and a deleted instance leaves a tombstone (/revoked-instances/INSTANCE)
 * until its last certificate expires. Only a role or login lock needs a scan of every issued
 * certificate; its result is kept for the lock's lifetime (no certificate is issued to a locked
 * role or login).
 *
 * Races: a join or renewal that read the locks and the identity before an rm, rm-instance or lock
 * may commit after it. Each side looks again after its own write, so whichever looks second sees
 * the other: rm and rm-instance tombstone again after deleting (a renewal's compare-and-swap on a
 * deleted instance fails, so any certificate it committed is seen by that second look), and a join
 * or renewal re-reads the locks after committing and revokes its own certificate by serial
 * (revokeIfLockedMeanwhile) if one now applies.
 */
import { create } from "@bufbuild/protobuf";
import { GetRevocationsResponseSchema, type GetRevocationsResponse } from "../api/gen/mezite/v1/node_pb.js";
import { encodeKrl } from "../ca/krl.js";
import { NODE_CA_KINDS, caState, trustedSshLines, type ClusterCas } from "./cas.js";
import { renewSpreadMs } from "./rotation.js";
import type { AuthContext } from "./context.js";
import { activeLocks, locksOn, refuseIfLocked, type LockSubject } from "./locks.js";
import { encode, keys, load, loadAll, loadChunks, type IdentityRecord, type InstanceRecord, type IssuedCertRecord, type LockRecord } from "./records.js";

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

/**
 * After a join's or renewal's commit: if a lock made since its check catches the certificate just
 * issued, that certificate is revoked by serial and the call refused. (A lock's scan may have run
 * before the commit and missed it.)
 */
export async function revokeIfLockedMeanwhile(ctx: AuthContext, subject: LockSubject, cert: IssuedCertRecord): Promise<void> {
  const locks = locksOn(await activeLocks(ctx.backend, ctx.now()), subject);
  if (locks.length === 0) return;
  await ctx.backend.put(keys.revokedCert(cert.serial), encode({ identityName: cert.identityName }), { expires: cert.expires });
  refuseIfLocked(locks, subject);
}

/** What a scan for one role or login lock found: the unexpired certificates it catches. */
type Scanned = { serial: bigint; expires: number }[];

export class Revocations {
  private cached: { at: number; cas: ClusterCas; value: GetRevocationsResponse } | undefined;
  private pending: Promise<GetRevocationsResponse> | undefined;
  /** Role and login locks by lock id: the serials a scan of every issued certificate found. */
  private readonly scans = new Map<string, Scanned>();

  /** Many nodes polling every few seconds cost one computation per `maxAgeMs`. */
  constructor(private readonly ctx: AuthContext, private readonly maxAgeMs = 1000) {}

  async get(): Promise<GetRevocationsResponse> {
    const now = this.ctx.now();
    // A CA phase change shows at once: nodes must trust a new key before anything it signed reaches them.
    if (this.cached && now - this.cached.at < this.maxAgeMs && this.cached.cas === this.ctx.cas) return this.cached.value;
    this.pending ??= this.compute(now).finally(() => (this.pending = undefined));
    return this.pending;
  }

  private async compute(now: number): Promise<GetRevocationsResponse> {
    const { backend, cas } = this.ctx;
    const [locks, tombstones, revokedCerts] = await Promise.all([activeLocks(backend, now), backend.range(keys.revokedInstances), backend.range(keys.revokedCerts)]);
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
    for (const c of revokedCerts) serials.add(BigInt(c.key.slice(keys.revokedCerts.length)));
    for (const s of await this.scanned([...ofKind("role"), ...ofKind("login")], now)) serials.add(s);

    // Serials are random 64-bit numbers, unique across keys: each trusted key revokes them all.
    const sections = cas.user.trusted.map((k) => ({ caKey: k.sshPublic, serials: [...serials] }));
    const krl = encodeKrl({ version: BigInt(now), generatedAt: Math.floor(now / 1000), sections });
    const value = create(GetRevocationsResponseSchema, {
      krl,
      userCaSshKeys: trustedSshLines(cas.user),
      caState: caState(cas, NODE_CA_KINDS),
      renewWithinMs: BigInt(renewSpreadMs(cas, NODE_CA_KINDS)),
      lockedIdentityIds: lockedIdentities,
      lockedInstanceIds: ofKind("instance").map((l) => l.target),
      lockedRoles: ofKind("role").map((l) => l.target),
      lockedLogins: ofKind("login").map((l) => l.target),
    });
    this.cached = { at: now, cas, value };
    return value;
  }

  /** Serials of the unexpired certificates each role or login lock catches, scanning only when needed. */
  private async scanned(locks: LockRecord[], now: number): Promise<bigint[]> {
    for (const id of this.scans.keys()) if (!locks.some((l) => l.id === id)) this.scans.delete(id);
    const stale = locks.filter((l) => !this.scans.has(l.id));
    if (stale.length > 0) {
      const found = new Map<string, Scanned>(stale.map((l) => [l.id, []]));
      for await (const chunk of loadChunks<IssuedCertRecord>(this.ctx.backend, keys.certs)) {
        for (const c of chunk) {
          if (c.expires <= now) continue;
          for (const l of stale) {
            if (l.kind === "role" ? c.roles.includes(l.target) : c.principals.includes(l.target)) found.get(l.id)!.push({ serial: BigInt(c.serial), expires: c.expires });
          }
        }
      }
      for (const [id, certs] of found) this.scans.set(id, certs);
    }
    return locks.flatMap((l) => this.scans.get(l.id)!.filter((c) => c.expires > now).map((c) => c.serial));
  }
}

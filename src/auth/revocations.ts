/**
 * The revocation state every node polls (SPEC §7): a KRL listing every unexpired certificate whose
 * identity, instance, role or login is locked or deleted, and the lock lists themselves.
 *
 * Computed from what is revoked, never from the whole fleet, so a poll costs the same with ten or
 * a hundred thousand identities: issued certificates are kept under their instance
 * (/certs/INSTANCE/SERIAL), and a deleted instance leaves a tombstone (/revoked-instances/INSTANCE)
 * holding their serials until its last certificate expires, so a rebuild reads all tombstones in
 * one range (in chunks, yielding to the event loop). Every entry stays KRL_GRACE_MS past its
 * certificate's expiry. Only a role or login lock needs a scan of every issued
 * certificate; its result is kept for the lock's lifetime (no certificate is issued to a locked
 * role or login). A rebuild happens only when it could differ: every write it is built from is
 * followed by a new keys.revocationsChanged (by whichever service wrote it), and a rebuild notes
 * when its first entry expires; otherwise a look costs one point read.
 *
 * Races: a join or renewal that read the locks and the identity before an rm, rm-instance or lock
 * may commit after it. Each side looks again after its own write, so whichever looks second sees
 * the other: rm and rm-instance tombstone again after deleting (a renewal's compare-and-swap on a
 * deleted instance fails, so any certificate it committed is seen by that second look), and a join
 * or renewal re-reads the locks after committing and revokes its own certificate by serial
 * (revokeIfLockedMeanwhile) if one now applies.
 *
 * Nodes send the content version of the KRL they hold and get its bytes only when it changed. The
 * cache ages by a monotonic clock: a wall clock stepped back must not keep a new lock from nodes.
 *
 * No KRL key-id entries: a key id is `agent-identity/NAME`, and re-adding a deleted NAME makes a new
 * identity with the same key id, which a node still holding such a KRL (for a poll, or for as long
 * as it cannot reach the service) would refuse. Serials catch exactly the deleted identity's.
 */
import { create } from "@bufbuild/protobuf";
import { GetRevocationsResponseSchema, type GetRevocationsResponse } from "../api/gen/mezite/v1/node_pb.js";
import { SerialList, encodeKrl, krlContentVersion, sortSerials } from "../ca/krl.js";
import { BACKDATE_MS } from "./issue.js";
import { NODE_CA_KINDS, caState, trustedSshLines, type ClusterCas } from "./cas.js";
import { renewSpreadMs } from "./rotation.js";
import type { AuthContext } from "./context.js";
import { activeLocks, locksOn, markRevocationsChanged, refuseIfLocked, type LockSubject } from "./locks.js";
import { decode, encode, keys, load, loadAll, loadChunks, rangeChunks, type IdentityRecord, type InstanceRecord, type IssuedCertRecord, type LockRecord } from "./records.js";

/**
 * KRL entries outlive their certificates by the backdate: a node whose clock lags by up to that
 * much still takes a certificate as valid after it expired, so it must still find it revoked.
 */
export const KRL_GRACE_MS = BACKDATE_MS;

/** Until when a certificate expiring at `expires` stays in the KRL (and its record in the store). */
export const revokedUntil = (expires: number): number => expires + KRL_GRACE_MS;

/**
 * A deleted instance's certificates, written when it is deleted, so a rebuild of the KRL reads all
 * tombstones in one range instead of one query per instance. `certs` are [serial, expires] pairs;
 * a tombstone written before they were kept has none, and its instance's certificates are read.
 */
export interface TombstoneRecord {
  identityName: string;
  certs?: [string, number][];
}

/**
 * Keeps the certificates of instances about to be deleted in the KRL until they expire. Called
 * before the deletion, so no moment exists where an instance is gone and its certificates pass.
 * Returns how many unexpired certificates the tombstones hold.
 */
export async function tombstone(ctx: AuthContext, instances: InstanceRecord[]): Promise<number> {
  const now = ctx.now();
  const counts = await Promise.all(
    instances.map(async (inst) => {
      const certs = (await loadAll<IssuedCertRecord>(ctx.backend, keys.certsOf(inst.id))).map((c) => c.value).filter((c) => revokedUntil(c.expires) > now);
      const expires = revokedUntil(Math.max(inst.certExpires, ...certs.map((c) => c.expires)));
      const record: TombstoneRecord = { identityName: inst.identityName, certs: certs.map((c) => [c.serial, c.expires]) };
      if (expires > now) await ctx.backend.put(keys.revokedInstance(inst.id), encode(record), { expires });
      return certs.length;
    }),
  );
  if (instances.length > 0) await markRevocationsChanged(ctx.backend);
  return counts.reduce((a, b) => a + b, 0);
}

/**
 * After a join's or renewal's commit: if a lock made since its check catches the certificate just
 * issued, that certificate is revoked by serial and the call refused. (A lock's scan may have run
 * before the commit and missed it.)
 */
export async function revokeIfLockedMeanwhile(ctx: AuthContext, subject: LockSubject, cert: IssuedCertRecord): Promise<void> {
  const locks = locksOn(await activeLocks(ctx.backend, ctx.now()), subject);
  if (locks.length === 0) return;
  await ctx.backend.put(keys.revokedCert(cert.serial), encode({ identityName: cert.identityName }), { expires: revokedUntil(cert.expires) });
  await markRevocationsChanged(ctx.backend);
  refuseIfLocked(locks, subject);
}

/** What a scan for one role or login lock found: the unexpired certificates it catches. */
type Scanned = { serial: bigint; expires: number }[];

/** Records read and decoded between two yields of a rebuild (a few milliseconds' work). */
const REBUILD_CHUNK = 500;

/** Lets timers and I/O run between chunks of a large rebuild. */
const yieldToLoop = () => new Promise<void>((resolve) => setImmediate(resolve));

export interface RevocationsOptions {
  /**
   * Many nodes polling every few seconds cost one look per `maxAgeMs` (default 1 s): one read of
   * keys.revocationsChanged, and a rebuild only when it moved or an entry expired.
   */
  maxAgeMs?: number;
  /** Ages the cache: monotonic, so a wall clock stepped back cannot keep a new lock from the nodes. */
  monotonic?: () => number;
}

interface Computed {
  /** Monotonic time it was computed, or last found unchanged. */
  at: number;
  cas: ClusterCas;
  value: GetRevocationsResponse;
  revokedInstances: ReadonlySet<string>;
  /** Ids of nodes removed or replaced (their revoked host keys) whose host certificates may live. */
  removedNodes: ReadonlySet<string>;
  /** The backend's keys.revocationsChanged when it was read, before everything else. */
  mark: string | undefined;
  /** Wall time at which its first entry expires (a certificate past its grace, a lock's TTL). */
  until: number;
}

export class Revocations {
  private cached: Computed | undefined;
  private pending: Promise<GetRevocationsResponse> | undefined;
  /** Role and login locks by lock id: the serials a scan of every issued certificate found. */
  private readonly scans = new Map<string, Scanned>();
  private readonly maxAgeMs: number;
  private readonly monotonic: () => number;

  constructor(private readonly ctx: AuthContext, opts: RevocationsOptions = {}) {
    this.maxAgeMs = opts.maxAgeMs ?? 1000;
    this.monotonic = opts.monotonic ?? (() => performance.now());
  }

  /**
   * The reply to a node that holds the KRL of content version `held` ("" = none, or a node from
   * before versions): the KRL's bytes only when they changed.
   */
  async reply(held: string): Promise<GetRevocationsResponse> {
    const value = await this.get();
    return held !== "" && held === value.krlVersion ? { ...value, krl: new Uint8Array(0) } : value;
  }

  async get(): Promise<GetRevocationsResponse> {
    const at = this.monotonic();
    // A CA phase change shows at once: nodes must trust a new key before anything it signed reaches them.
    if (this.cached && at - this.cached.at < this.maxAgeMs && this.cached.cas === this.ctx.cas) return this.cached.value;
    this.pending ??= this.refresh(at).finally(() => (this.pending = undefined));
    return this.pending;
  }

  /**
   * One point read when nothing changed: a rebuild reads every tombstone (100,000 revoked serials
   * cost 0.2-0.65 s of CPU), and the change streams ask every second.
   */
  private async refresh(at: number): Promise<GetRevocationsResponse> {
    const mark = (await this.ctx.backend.get(keys.revocationsChanged))?.value;
    const c = this.cached;
    if (c && c.cas === this.ctx.cas && c.mark === mark && this.ctx.now() < c.until) {
      c.at = at;
      return c.value;
    }
    return this.compute(at, mark);
  }

  /** The instances deleted (their tombstones) as of the last get(): what watch.ts tells daemons. */
  revokedInstances(): ReadonlySet<string> {
    return this.cached?.revokedInstances ?? new Set();
  }

  /** The nodes removed or replaced as of the last get(), on any service: what watch.ts tells their streams. */
  removedNodes(): ReadonlySet<string> {
    return this.cached?.removedNodes ?? new Set();
  }

  /**
   * One range read of the tombstones (each holds its instance's serials) and one of the serials
   * revoked one by one, in chunks that let the event loop run in between; the locks' certificates
   * are read per locked instance (few). Entries stay until KRL_GRACE_MS past their expiry.
   */
  private async compute(at: number, mark: string | undefined): Promise<GetRevocationsResponse> {
    const { backend, cas } = this.ctx;
    const now = this.ctx.now();
    let until = Infinity;
    const live = (expires: number) => {
      const end = revokedUntil(expires);
      if (end > now) until = Math.min(until, end);
      return end > now;
    };
    const serials = new SerialList();
    const legacy: string[] = []; // tombstones written before they kept their serials
    const revokedInstances = new Set<string>();
    for await (const chunk of rangeChunks(backend, keys.revokedInstances, REBUILD_CHUNK)) {
      for (const item of chunk) {
        if (item.expires !== undefined) until = Math.min(until, item.expires);
        revokedInstances.add(item.key.slice(keys.revokedInstances.length));
        const t = decode<TombstoneRecord>(item);
        if (t.certs === undefined) legacy.push(item.key.slice(keys.revokedInstances.length));
        else for (const [serial, expires] of t.certs) if (live(expires)) serials.add(BigInt(serial));
      }
      await yieldToLoop();
    }
    for await (const chunk of rangeChunks(backend, keys.revokedCerts, REBUILD_CHUNK)) {
      for (const item of chunk) {
        if (item.expires !== undefined) until = Math.min(until, item.expires);
        serials.add(BigInt(item.key.slice(keys.revokedCerts.length)));
      }
      await yieldToLoop();
    }

    const removedNodes = new Set((await backend.range(keys.revokedHostKeys)).map((i) => i.key.slice(keys.revokedHostKeys.length)));

    const locks = await activeLocks(backend, now);
    for (const l of locks) if (l.expires > 0) until = Math.min(until, l.expires);
    const ofKind = (k: LockRecord["kind"]) => locks.filter((l) => l.kind === k);
    const lockedIdentities = (await Promise.all(ofKind("agent_identity").map((l) => load<IdentityRecord>(backend, keys.identity(l.target)))))
      .filter((i) => i !== undefined)
      .map((i) => i.value.id);
    const lockedIdentityInstances = await Promise.all(lockedIdentities.map((id) => loadAll<InstanceRecord>(backend, keys.instancesOf(id))));
    const instanceIds = new Set([...legacy, ...ofKind("instance").map((l) => l.target), ...lockedIdentityInstances.flat().map((i) => i.value.id)]);
    const certsOfInstances = await Promise.all([...instanceIds].map((id) => loadAll<IssuedCertRecord>(backend, keys.certsOf(id))));
    for (const c of certsOfInstances.flat()) if (live(c.value.expires)) serials.add(BigInt(c.value.serial));
    for (const c of await this.scanned([...ofKind("role"), ...ofKind("login")], now)) if (live(c.expires)) serials.add(c.serial);
    const sorted = await sortSerials(serials, yieldToLoop);

    // Serials are random 64-bit numbers, unique across keys: each trusted key revokes them all.
    const sections = cas.user.trusted.map((k) => ({ caKey: k.sshPublic, serials: sorted }));
    const krl = encodeKrl({ version: BigInt(now), generatedAt: Math.floor(now / 1000), sections });
    const value = create(GetRevocationsResponseSchema, {
      krl,
      krlVersion: krlContentVersion(krl),
      userCaSshKeys: trustedSshLines(cas.user),
      caState: caState(cas, NODE_CA_KINDS),
      renewWithinMs: BigInt(renewSpreadMs(cas, NODE_CA_KINDS)),
      lockedIdentityIds: lockedIdentities,
      lockedInstanceIds: ofKind("instance").map((l) => l.target),
      lockedRoles: ofKind("role").map((l) => l.target),
      lockedLogins: ofKind("login").map((l) => l.target),
    });
    this.cached = { at, cas, value, revokedInstances, removedNodes, mark, until };
    return value;
  }

  /** The certificates each role or login lock catches, scanning only when needed. */
  private async scanned(locks: LockRecord[], now: number): Promise<Scanned> {
    for (const id of this.scans.keys()) if (!locks.some((l) => l.id === id)) this.scans.delete(id);
    const stale = locks.filter((l) => !this.scans.has(l.id));
    if (stale.length > 0) {
      const found = new Map<string, Scanned>(stale.map((l) => [l.id, []]));
      for await (const chunk of loadChunks<IssuedCertRecord>(this.ctx.backend, keys.certs)) {
        for (const c of chunk) {
          if (revokedUntil(c.expires) <= now) continue;
          for (const l of stale) {
            if (l.kind === "role" ? c.roles.includes(l.target) : c.principals.includes(l.target)) found.get(l.id)!.push({ serial: BigInt(c.serial), expires: c.expires });
          }
        }
        await yieldToLoop();
      }
      for (const [id, certs] of found) this.scans.set(id, certs);
    }
    return locks.flatMap((l) => this.scans.get(l.id)!);
  }
}

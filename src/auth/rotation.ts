/**
 * CA rotation (SPEC §15): the phases, who moves a CA from one to the next, and what `mezctl ca
 * status` shows. The phase lives in the CA record, so every auth service on one backend follows
 * it (CaWatcher) and any of them continues an automatic rotation after a restart; each phase
 * change is one compare-and-swap, so two services never both take a step.
 */
import { randomBytes } from "node:crypto";
import { formatDuration } from "../lib/duration.js";
import { MeziteError, isMeziteError } from "../lib/errors.js";
import type { Logger } from "../lib/log.js";
import { PeriodicCheck } from "../lib/periodic-check.js";
import { caPin } from "../ca/x509.js";
import { caName } from "../lib/ca-name.js";
import { CA_KINDS, caState, caStatesOf, createCaKeys, type CaKind, type CaStore, type CertAuthority, type ClusterCas, type Phase, type StoredCa, type StoredKeys } from "./cas.js";
import type { AuthContext } from "./context.js";
import { encode, instanceExpiry, keys, load, loadChunks, type InstanceRecord, type Loaded, type NodeRecord } from "./records.js";

/** The step after each phase when nothing goes wrong. */
const FORWARD: Record<Phase, Phase> = { standby: "init", init: "update_clients", update_clients: "update_servers", update_servers: "standby", rollback: "standby" };
/** An automatic rotation spends this share of its grace period in each of init, update_clients, update_servers (and rollback). */
export const STEPS = 3;
/** The longest a daemon or node may spread its renewal after a phase change (renewSpreadMs). */
const MAX_RENEW_SPREAD_MS = 30 * 60_000;
/**
 * A manual step's spread: 10 ms per live instance and node (at most ~100 renewals a second from
 * the step, whatever the fleet's size), at least 5 s (a few daemons on change streams still renew
 * within seconds, so a quick manual rotation is not held up), at most MAX_RENEW_SPREAD_MS.
 */
export const MANUAL_SPREAD_MIN_MS = 5_000;
const MANUAL_SPREAD_PER_AGENT_MS = 10;
export const manualSpreadMs = (agents: number): number => Math.min(Math.max(MANUAL_SPREAD_MIN_MS, agents * MANUAL_SPREAD_PER_AGENT_MS), MAX_RENEW_SPREAD_MS);
/**
 * The shortest grace period taken at all (10 s a phase: tests, and daemons run with a short
 * --ca-check-interval). Daemons ask every 45 s by default and nodes every 2 s, so mezctl warns
 * below SAFE_PHASE_MS a phase.
 */
export const MIN_GRACE_MS = 30_000;
export const SAFE_PHASE_MS = 2 * 60_000;
/**
 * Daemons ask for phase changes this often by default (--ca-check-interval): an automatic
 * rotation with shorter phases is refused unless forced, since a daemon could miss a phase.
 */
export const DEFAULT_CA_CHECK_MS = 45_000;
/** A node whose last heartbeat is older than this is offline: it holds no rotation up. */
export const LIVE_NODE_MS = 5 * 60_000;
/** How many of those behind a refusal or `ca status` names. */
const BEHIND_NAMES = 3;
export const DEFAULT_GRACE_MS = 48 * 3_600_000;

export interface RotateRequest {
  kinds: CaKind[];
  /** The phase to move to; undefined = start an automatic rotation. */
  phase: Phase | undefined;
  graceMs: number;
  actor: string;
  remoteAddr: string;
  /** Step although live instances or nodes are behind; allow phases shorter than DEFAULT_CA_CHECK_MS. */
  force?: boolean;
}

function checkStep(ca: CertAuthority, to: Phase): void {
  const from = ca.phase;
  const allowed: Phase[] = from === "standby" ? ["init"] : from === "rollback" ? ["standby"] : [FORWARD[from], "rollback"];
  if (!allowed.includes(to)) throw new MeziteError("ERR_USAGE", `the ${caName(ca.kind)} is in phase ${from}: the next phase can only be ${allowed.join(" or ")}`);
}

/** A key pair's sealed fields alone. */
const keysOf = (k: StoredKeys): StoredKeys => ({ ssh_public: k.ssh_public, ssh_private_sealed: k.ssh_private_sealed, x509_cert_pem: k.x509_cert_pem, x509_key_sealed: k.x509_key_sealed });

/** The record after a step from `ca` to `to`. */
async function stepped(ctx: AuthContext, store: CaStore, stored: StoredCa, ca: CertAuthority, to: Phase, mode: "auto" | "manual", graceMs: number, manualSpread: number): Promise<StoredCa> {
  const now = ctx.now();
  const lastRotated = stored.last_rotated !== undefined ? { last_rotated: stored.last_rotated } : {};
  if (to === "init") {
    const next = await createCaKeys(ca.kind, store.clusterName, store.clusterKey, now, true);
    const spread_ms = mode === "auto" ? Math.floor(Math.min(graceMs / STEPS / 4, MAX_RENEW_SPREAD_MS)) : manualSpread;
    const rotation = { id: randomBytes(8).toString("hex"), mode, grace_ms: graceMs, started: now, phase_started: now };
    return { kind: stored.kind, ...keysOf(stored), ...lastRotated, phase: "init", next, spread_ms, rotation };
  }
  if (to === "standby") {
    // Done: the new key becomes the current one. Rolled back: the new key is dropped. The spread
    // is kept: the renewals this last step causes are spread as the rotation's were.
    const done = ca.phase === "update_servers";
    return { kind: stored.kind, ...keysOf(done ? stored.next! : stored), ...(done ? { last_rotated: now } : lastRotated), spread_ms: stored.spread_ms ?? 0 };
  }
  return { ...stored, phase: to, spread_ms: mode === "manual" ? manualSpread : stored.spread_ms ?? 0, rotation: { ...stored.rotation!, mode, phase_started: now } };
}

/**
 * Moves each CA of `req.kinds` one step (`req.phase`), or starts an automatic rotation of each.
 * Every CA is checked before any changes, so `--type=all` does both or, on bad usage, neither.
 */
export async function rotate(ctx: AuthContext, req: RotateRequest): Promise<ClusterCas> {
  const store = ctx.caStore;
  const loaded = await Promise.all(req.kinds.map((k) => store.load(k)));
  const to = req.phase ?? "init";
  if (req.phase === undefined && !(req.graceMs >= MIN_GRACE_MS)) {
    throw new MeziteError("ERR_USAGE", `--grace-period ${formatDuration(req.graceMs)} is too short: at least ${formatDuration(MIN_GRACE_MS)}, so every daemon sees each phase`);
  }
  if (req.phase === undefined && req.graceMs / STEPS < DEFAULT_CA_CHECK_MS && !req.force) {
    throw new MeziteError(
      "ERR_USAGE",
      `--grace-period ${formatDuration(req.graceMs)} gives phases of ${formatDuration(req.graceMs / STEPS)}, shorter than the ${formatDuration(DEFAULT_CA_CHECK_MS)} daemons wait between CA checks by default: use at least ${formatDuration(DEFAULT_CA_CHECK_MS * STEPS)}, or --force if every daemon runs a shorter --ca-check-interval`,
    );
  }
  for (const { ca } of loaded) {
    if (req.phase === undefined && ca.phase !== "standby") {
      throw new MeziteError("ERR_USAGE", `a rotation of the ${caName(ca.kind)} is already in progress (phase ${ca.phase}): see mezctl ca status, or roll it back with --phase=rollback`);
    }
    checkStep(ca, to);
  }
  const notes = new Map<CaKind, string>();
  let manualSpread = MANUAL_SPREAD_MIN_MS;
  if (req.phase !== undefined) {
    const fleet = await fleetState(ctx, ctx.cas);
    manualSpread = manualSpreadMs(fleet.instances + fleet.nodes);
    for (const { ca } of loaded) {
      const behind = behindFor(fleet, ca, to);
      if (behind.count > 0 && req.force) notes.set(ca.kind, `; forced while ${behindText(behind)} ${behind.count > 1 ? "were" : "was"} behind`);
      else if (behind.count > 0) {
        throw new MeziteError(
          "ERR_IN_USE",
          `the ${caName(ca.kind)} cannot move to ${to} yet: ${behindText(behind)} ${behind.count > 1 ? "are" : "is"} not yet in step with ${ca.phase} (see mezctl ca status); wait for ${behind.count > 1 ? "them" : "it"}, or pass --force`,
        );
      }
    }
  }
  for (const { ca, stored } of loaded) {
    // A manual step takes over an automatic rotation; a rollback keeps its mode, so an automatic rotation also finishes rolling back by itself.
    const mode = req.phase === undefined ? "auto" : to === "rollback" ? stored.rotation?.mode ?? "manual" : "manual";
    await commitStep(ctx, store, stored, ca, to, mode, req.graceMs, { actor: req.actor, remote_addr: req.remoteAddr }, notes.get(ca.kind), manualSpread);
  }
  await ctx.refreshCas(true);
  return ctx.cas;
}

async function commitStep(
  ctx: AuthContext, store: CaStore, stored: StoredCa, ca: CertAuthority, to: Phase, mode: "auto" | "manual", graceMs: number, by: { actor: string; remote_addr: string }, note = "",
  manualSpread = MANUAL_SPREAD_MIN_MS,
): Promise<CertAuthority> {
  const record = await stepped(ctx, store, stored, ca, to, mode, graceMs, manualSpread);
  let after: CertAuthority;
  try {
    after = await store.swap(ca.kind, ca.revision, record);
  } catch (e) {
    if (!isMeziteError(e, "ERR_COMPARE_FAILED")) throw e;
    throw new MeziteError("ERR_COMPARE_FAILED", `another auth service changed the ${caName(ca.kind)} meanwhile: see mezctl ca status and try again`, { cause: e });
  }
  store.retired?.retire(ca, after, ctx.now());
  await ctx.audit.emit({
    type: "ca.rotation",
    ...by,
    detail: `${caName(ca.kind)}: ${ca.phase} -> ${to} (${mode}); signs with ${after.sshFingerprint}; trusted ${after.trusted.map((k) => k.sshFingerprint).join(", ")}${note}`,
  });
  return after;
}

/**
 * How long after seeing a phase change a daemon or node may wait to renew, at random: a fleet
 * renewing within one check interval of each phase change would swamp the service. An automatic
 * rotation allows a quarter of a phase (at most 30 minutes); a manual one manualSpreadMs (the
 * operator watches `mezctl ca status` and steps on: seconds for a small fleet). With both CAs rotating,
 * the more hurried one counts; with neither, the spread of the rotation that just ended.
 */
/** What a daemon is told of the CAs (GetCaState, its change stream): their state and the spread for a renewal it asks for. */
export function daemonCaState(cas: ClusterCas): { caState: string; renewWithinMs: bigint } {
  return { caState: caState(cas), renewWithinMs: BigInt(renewSpreadMs(cas, CA_KINDS)) };
}

export function renewSpreadMs(cas: ClusterCas, kinds: readonly CaKind[]): number {
  const all = kinds.map((k) => cas[k]);
  const rotating = all.filter((ca) => ca.phase !== "standby");
  return rotating.length > 0 ? Math.min(...rotating.map((ca) => ca.spreadMs)) : Math.max(...all.map((ca) => ca.spreadMs));
}

/** When an automatic rotation's current phase ends, or undefined. */
export function phaseEndsAt(ca: CertAuthority): number | undefined {
  const r = ca.rotation;
  return r && r.mode === "auto" && ca.phase !== "standby" ? r.phase_started + r.grace_ms / STEPS : undefined;
}

/** When each service looks again for those behind a due automatic step, per CA (and its record's revision). */
const behindChecks = new WeakMap<AuthContext, Map<CaKind, { revision: string; at: number }>>();
const BEHIND_RECHECK_MS = 5_000;

/**
 * Takes every step of an automatic rotation that is due. Every auth service runs this; the one
 * whose compare-and-swap lands takes the step and audits it, the others find it taken.
 */
export async function advanceDue(ctx: AuthContext): Promise<boolean> {
  let moved = false;
  for (const kind of CA_KINDS) {
    const ca = ctx.cas[kind];
    const due = phaseEndsAt(ca);
    if (due === undefined || ctx.now() < due) continue;
    // Those behind are waited for up to one more phase, looked for every few seconds meanwhile;
    // then the step is taken and who was left behind audited.
    const waits = behindChecks.get(ctx) ?? new Map<CaKind, { revision: string; at: number }>();
    behindChecks.set(ctx, waits);
    const wait = waits.get(kind);
    if (wait?.revision === ca.revision && ctx.now() < wait.at) continue;
    const behind = behindFor(await fleetState(ctx, ctx.cas), ca, FORWARD[ca.phase]);
    const waitedOut = ctx.now() >= due + ca.rotation!.grace_ms / STEPS;
    if (behind.count > 0 && !waitedOut) {
      waits.set(kind, { revision: ca.revision, at: ctx.now() + BEHIND_RECHECK_MS });
      continue;
    }
    waits.delete(kind);
    const { ca: fresh, stored } = await ctx.caStore.load(kind);
    if (fresh.revision !== ca.revision) continue; // changed meanwhile: look again on the next tick
    const note = behind.count > 0 ? `; left behind after waiting one more phase: ${behindText(behind)}` : "";
    try {
      await commitStep(ctx, ctx.caStore, stored, fresh, FORWARD[fresh.phase], "auto", fresh.rotation!.grace_ms, { actor: "automatic rotation", remote_addr: "" }, note);
      moved = true;
    } catch (e) {
      if (!isMeziteError(e, "ERR_COMPARE_FAILED")) throw e;
    }
  }
  return moved;
}

export interface CaKeyStatus {
  role: "current" | "next";
  sshFingerprint: string;
  x509Pin: string;
  signing: boolean;
  trusted: boolean;
  /** User CA: live instances whose last certificates it signed. Host CA: nodes whose host certificate it signed. */
  holders: number;
}

export interface CaStatus {
  type: CaKind;
  phase: Phase;
  mode: string;
  started: number;
  phaseStarted: number;
  nextPhaseAt: number;
  lastRotated: number;
  keys: CaKeyStatus[];
  /** Live instances (User CA) or nodes (Host CA) in all. */
  holdersTotal: number;
  /** Live instances and nodes not in step with the phase. */
  behind: Behind;
}

/** `mezctl ca status`: each CA's phase and keys, who holds certificates of each key, and who is behind its phase. */
export async function caStatus(ctx: AuthContext): Promise<CaStatus[]> {
  const cas = ctx.cas;
  const fleet = await fleetState(ctx, cas);
  return CA_KINDS.map((kind) => {
    const ca = cas[kind];
    const keyStatus = (role: "current" | "next", k: CertAuthority["current"]): CaKeyStatus => ({
      role,
      sshFingerprint: k.sshFingerprint,
      x509Pin: caPin(k.x509CertPem),
      signing: k === ca.trusted[0],
      trusted: ca.trusted.includes(k),
      holders: fleet.holders.get(k.sshFingerprint) ?? 0,
    });
    return {
      type: kind,
      phase: ca.phase,
      mode: ca.rotation?.mode ?? "",
      started: ca.rotation?.started ?? 0,
      phaseStarted: ca.rotation?.phase_started ?? 0,
      nextPhaseAt: phaseEndsAt(ca) ?? 0,
      lastRotated: ca.lastRotated ?? 0,
      keys: [keyStatus("current", ca.current), ...(ca.next ? [keyStatus("next", ca.next)] : [])],
      holdersTotal: kind === "user" ? fleet.instances : fleet.nodes,
      behind: behindFor(fleet, ca, "standby"),
    };
  });
}

/**
 * Keeps one auth service's CAs current: every `intervalMs` it takes due automatic steps and
 * reloads the CA records when another service (or this one) changed them, then calls `onChange`
 * (new TLS certificate and trust, admin.identity). `refresh()` does the same at once, at most
 * once per second, for a caller that met a certificate of a key it does not know yet.
 */
export class CaWatcher {
  private readonly checks: PeriodicCheck;
  private lastRun = 0;
  /** ctx.cas changed but onChange has not yet succeeded for it. */
  private unapplied = false;

  constructor(
    private readonly ctx: AuthContext,
    private readonly onChange: (cas: ClusterCas) => Promise<void>,
    private readonly log: Logger,
    intervalMs = 1_000,
  ) {
    this.checks = new PeriodicCheck({
      check: () => this.check().finally(() => (this.lastRun = Date.now())),
      intervalMs,
      log,
      failed: "could not check the CAs for a rotation; retrying every second",
      recovered: "checking the CAs for a rotation works again",
    });
  }

  start(): void {
    this.checks.start();
  }

  stop(): void {
    this.checks.stop();
  }

  /** `now`: at once (or right after the check under way), for a change this service made itself. */
  async refresh(now = false): Promise<void> {
    if (!now && Date.now() - this.lastRun < 1_000) return this.checks.running;
    return this.checks.run();
  }

  private async check(): Promise<void> {
    await advanceDue(this.ctx);
    const fresh = await this.ctx.caStore.reload(this.ctx.cas);
    if (fresh) {
      const before = this.ctx.cas;
      this.ctx.caStore.noteRetired(before, fresh, this.ctx.now());
      this.ctx.cas = fresh;
      this.unapplied = true;
      for (const kind of CA_KINDS) {
        if (fresh[kind].phase !== before[kind].phase) this.log.info("CA phase changed", { ca: kind, from: before[kind].phase, to: fresh[kind].phase, signs_with: fresh[kind].sshFingerprint });
      }
    }
    // A change whose application failed (a TLS certificate not made, admin.identity not written)
    // is applied again on every tick until it succeeds: the reload above sees nothing new.
    if (!this.unapplied) return;
    await this.onChange(this.ctx.cas);
    this.unapplied = false;
  }
}

/** Live instances and nodes not yet in step with a CA's phase. */
export interface Behind {
  count: number;
  /** The first few: "identity/instance" or "node NAME". */
  names: string[];
}

export const behindText = (b: Behind): string =>
  `${b.count} live instance${b.count > 1 ? "s or nodes" : " or node"} (${b.names.join(", ")}${b.count > b.names.length ? ", …" : ""})`;

interface FleetState {
  /** Holders of each CA key (fingerprint): live instances for User CA keys, nodes for Host CA keys. */
  holders: Map<string, number>;
  instances: number;
  nodes: number;
  behind: Record<CaKind, { instances: Behind; nodes: Behind }>;
  /** Live instances whose last certificates a rotating User CA's new key signed. */
  newUserKeyHolders: Behind;
}

const noneBehind = (): Behind => ({ count: 0, names: [] });

function addBehind(b: Behind, name: string): void {
  b.count++;
  if (b.names.length < BEHIND_NAMES) b.names.push(name);
}

/**
 * One pass over instances and nodes: who holds certificates of which key, and who is behind each
 * CA's phase. Live instances (certificates unexpired) and live nodes (a heartbeat within
 * LIVE_NODE_MS) are in step when the CA state they hold (recorded at issue, or reported since) is
 * the CA's state now.
 */
async function fleetState(ctx: AuthContext, cas: ClusterCas): Promise<FleetState> {
  const now = ctx.now();
  const current = caStatesOf(cas);
  const holders = new Map<string, number>();
  const behind = { user: { instances: noneBehind(), nodes: noneBehind() }, host: { instances: noneBehind(), nodes: noneBehind() } };
  const newUserKey = cas.user.next?.sshFingerprint;
  const newUserKeyHolders = noneBehind();
  let instances = 0;
  for await (const chunk of loadChunks<InstanceRecord>(ctx.backend, keys.instances)) {
    for (const i of chunk) {
      if (i.certExpires <= now) continue;
      instances++;
      if (i.userCaKey) holders.set(i.userCaKey, (holders.get(i.userCaKey) ?? 0) + 1);
      const name = `${i.identityName}/${i.id.slice(0, 8)}`;
      for (const kind of CA_KINDS) if (i.caStates?.[kind] !== current[kind]) addBehind(behind[kind].instances, name);
      if (newUserKey !== undefined && i.userCaKey === newUserKey) addBehind(newUserKeyHolders, name);
    }
  }
  let nodes = 0;
  for await (const chunk of loadChunks<NodeRecord>(ctx.backend, keys.nodes)) {
    for (const n of chunk) {
      nodes++;
      if (n.hostCaKey) holders.set(n.hostCaKey, (holders.get(n.hostCaKey) ?? 0) + 1);
      if (n.lastHeartbeat < now - LIVE_NODE_MS) continue;
      for (const kind of CA_KINDS) if (n.caStates?.[kind] !== current[kind]) addBehind(behind[kind].nodes, `node ${n.name}`);
    }
  }
  return { holders, instances, nodes, behind, newUserKeyHolders };
}

/**
 * Who must be in step before a CA moves to `to`: to update_clients, the nodes (they must trust
 * the new User CA key before agents hold certificates of it); to update_servers and standby,
 * every live instance and node (the new key is about to sign servers' certificates, or the old
 * key to be dropped); out of a rollback, instances only while they hold certificates of the new
 * User CA key.
 */
function behindFor(fleet: FleetState, ca: CertAuthority, to: Phase): Behind {
  const b = fleet.behind[ca.kind];
  // Out of a rollback the new key is dropped while the old one, trusted throughout, stays:
  // instances are stranded only by certificates of the new User CA key they still hold.
  const instances = ca.phase !== "rollback" ? b.instances : ca.kind === "user" ? fleet.newUserKeyHolders : noneBehind();
  const parts = to === "update_clients" ? [b.nodes] : to === "update_servers" || to === "standby" ? [b.nodes, instances] : [];
  return { count: parts.reduce((n, p) => n + p.count, 0), names: parts.flatMap((p) => p.names).slice(0, BEHIND_NAMES) };
}

/**
 * A daemon reports the ca_state its certificates hold (GetCaState): one in step with both CAs
 * now is recorded so (a record from its last issue would say so already, unless it predates
 * this); one that is not is left as issued.
 */
export async function recordInstanceCaState(ctx: AuthContext, identityId: string, instanceId: string, held: string): Promise<void> {
  if (held === "" || held !== caState(ctx.cas)) return;
  const now = caStatesOf(ctx.cas);
  const found = await load<InstanceRecord>(ctx.backend, keys.instance(identityId, instanceId));
  if (!found || sameStates(found.value.caStates, now)) return;
  const next = { ...found.value, caStates: now };
  await swapQuietly(ctx, keys.instance(identityId, instanceId), found, next, instanceExpiry(next));
}

/** A node reports what it holds with each revocation fetch (its ca_state, and the User CA state of the keys it last wrote). */
export async function recordNodeCaState(ctx: AuthContext, node: Loaded<NodeRecord>, heldHost: string, heldUser: string): Promise<void> {
  const states = { ...node.value.caStates };
  if (heldHost !== "" && heldHost === caState(ctx.cas, ["host"])) states.host = heldHost;
  if (heldUser !== "" && heldUser === caState(ctx.cas, ["user"])) states.user = heldUser;
  if (sameStates(node.value.caStates, states)) return;
  await swapQuietly(ctx, keys.node(node.value.name), node, { ...node.value, caStates: states }, {}); // node records never expire
}

const sameStates = (a: InstanceRecord["caStates"], b: InstanceRecord["caStates"]): boolean => a?.user === b?.user && a?.host === b?.host;

/**
 * A report lost to a concurrent change (a renewal, a heartbeat) is simply made again next time.
 * `expires` must be the record's own: a write replaces the expiry too (backend.ts).
 */
async function swapQuietly<T>(ctx: AuthContext, key: string, found: Loaded<T>, next: T, expires: { expires?: number }): Promise<void> {
  try {
    await ctx.backend.compareAndSwap(key, found.revision, encode(next), expires);
  } catch (e) {
    if (!isMeziteError(e, "ERR_COMPARE_FAILED")) throw e;
  }
}

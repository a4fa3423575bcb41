/**
 * The agent identity daemon (SPEC §6): join once with the token, then renew forever with fresh
 * keys. Each renewal request is saved before it is sent and replayed until answered, so a crash
 * or a lost reply never looks like a clone to the server's generation check.
 */
import { randomBytes, type KeyObject } from "node:crypto";
import type { IssuedCertificates } from "../api/gen/mezite/v1/common_pb.js";
import { JoinService } from "../api/gen/mezite/v1/join_pb.js";
import { RenewService } from "../api/gen/mezite/v1/renew_pb.js";
import type { Client } from "@connectrpc/connect";
import { connect } from "../api/client.js";
import { WATCH_KEEPALIVE, holdStream } from "../api/stream.js";
import { fromConnectError } from "../api/errors.js";
import { checkCaPin } from "../api/pin.js";
import { bundleHasPin, privateKeyToPem } from "../ca/x509.js";
import { Backoff, sleep } from "../lib/backoff.js";
import { formatDuration } from "../lib/duration.js";
import { MeziteError, isFinalError, isMeziteError, type ErrorCode } from "../lib/errors.js";
import type { Logger } from "../lib/log.js";
import { Registry } from "../lib/metrics.js";
import { obtainIdToken } from "./id-token.js";
import type { IdentityOptions, IdTokenJoin } from "./options.js";
import { AgentKeyring, startAgentServer, type AgentServer } from "./agent.js";
import { stageOutputs, checkDestination, removeSshKeyFile } from "./outputs.js";
import {
  buildJoinRequest,
  buildRenewRequest,
  hostFacts,
  checkCertsMatchKeys,
  deserializeKeys,
  generateIssueKeys,
  publicKeysOf,
  serializeKeys,
  verifyJoinReply,
  type IssueKeys,
} from "./protocol.js";
import { Storage, type IdentityState } from "./storage.js";

/** Renewal refusals after which the certificates held must not be used (the agent drops them). */
const REVOKING_CODES: readonly ErrorCode[] = ["ERR_LOCKED", "ERR_IDENTITY_DELETED", "ERR_GENERATION_MISMATCH"];

/**
 * A renewal comes at this share of the granted lifetime at the latest (before the ±10 % jitter,
 * so never past 2/3): a role's max_session_ttl may cap --cert-ttl below --renewal-interval, and
 * the rest of the lifetime is what the retries have to ride out an auth service outage (SPEC §6).
 */
const RENEW_BY_LIFETIME_SHARE = 0.6;

type RenewClient = Client<typeof RenewService>;

export interface DaemonDeps {
  log: Logger;
  now?: () => number;
  /** 0..1, for jitter. */
  random?: () => number;
}

export class IdentityDaemon {
  readonly registry = new Registry();
  private readonly renewals = this.registry.counter("mezite_identity_renewals_total", "certificates issued to this daemon (join and renewals)");
  private readonly failures = this.registry.counter("mezite_identity_renewal_failures_total", "failed join or renewal attempts by error code");
  private readonly agentRequests = this.registry.counter("mezite_identity_agent_requests_total", "SSH agent requests by result: listed, signed, refused");
  /** What the SSH agent socket serves; undefined without --ssh-agent-socket. */
  readonly keyring: AgentKeyring | undefined;
  private readonly storage: Storage;
  private readonly now: () => number;
  private readonly random: () => number;
  private state: IdentityState | undefined;
  /** The SSH key of the current certificate, kept by renewals for a CA rotation. */
  private sshKey: KeyObject | undefined;
  private wake: (() => void) | undefined;
  private renewRequested = false;
  /** Set once a SIGHUP has cut a wait short in the current run of failures. */
  private backoffCutUsed = false;
  /** A change stream is up: CA phase changes are pushed, not asked for. */
  private streaming = false;
  /** The stream went down: waitForRenewal's sleep ends, so that it asks every --ca-check-interval again. */
  private streamLost = false;
  /** A phase change the stream pushed, not yet looked at by waitForRenewal. */
  private pushed: { caState: string; renewWithinMs: number } | undefined;
  /** The lifetime-cut-short warning is logged once, not at every renewal, until the lifetime grows again. */
  private shortLifetimeWarned = false;

  constructor(private readonly opts: IdentityOptions, private readonly deps: DaemonDeps) {
    this.storage = new Storage(opts.storageDir);
    this.now = deps.now ?? Date.now;
    this.random = deps.random ?? Math.random;
    this.keyring = opts.sshAgentSocket !== undefined ? new AgentKeyring(this.now) : undefined;
    this.registry.gauge("mezite_identity_cert_expiry_seconds", "seconds until the current certificates expire", () =>
      this.state ? Math.round((this.state.expires - this.now()) / 1000) : undefined,
    );
    this.registry.gauge("mezite_identity_generation", "generation of the current certificates", () => (this.state ? Number(this.state.generation) : undefined));
  }

  /** Why /readyz should fail, or undefined when the outputs are current. */
  notReady(): string | undefined {
    if (!this.state) return "no certificates issued yet";
    if (this.state.expires <= this.now()) return "the certificates have expired";
    return undefined;
  }

  /**
   * SIGHUP: renew now. During a run of failures it cuts one backoff wait short and no more
   * (false then): a SIGHUP loop must not turn retries into a tight loop against the service.
   */
  renewSoon(): boolean {
    if (this.backoffCutUsed) return false;
    this.renewRequested = true;
    this.wake?.();
    return true;
  }

  /** Joins or renews once, writes the outputs. Throws what went wrong. */
  async issueOnce(signal: AbortSignal): Promise<void> {
    let state: IdentityState | undefined;
    try {
      state = this.storage.loadState();
    } catch (e) {
      if (!this.rejoinable(e)) throw e;
    }
    if (state && state.expires <= this.now()) {
      if (!this.opts.token && this.opts.join.method === "token") {
        throw new MeziteError("ERR_STATE_CORRUPT", `the renewal certificate in ${this.opts.storageDir} expired at ${new Date(state.expires).toISOString()}: join again with a new token`);
      }
      this.deps.log.warn("stored certificates expired; joining again with the token", { expired: new Date(state.expires).toISOString() });
    } else if (state) {
      this.state = state;
      try {
        return await this.renew(signal);
      } catch (e) {
        if (!this.rejoinable(e)) throw e;
      }
    }
    await this.join(signal);
  }

  /**
   * With a token at hand, state that can never renew again (its identity deleted and re-added
   * under a new token, or a corrupt storage dir) is replaced by a fresh join. A lock or a
   * generation mismatch is never bypassed this way.
   */
  private rejoinable(e: unknown): boolean {
    const canJoin = this.opts.token !== undefined || (this.opts.join.method !== "token" && this.opts.join.name !== undefined);
    const ok = canJoin && isMeziteError(e) && (e.code === "ERR_IDENTITY_DELETED" || e.code === "ERR_STATE_CORRUPT");
    if (ok) {
      this.deps.log.warn("stored state cannot renew; joining again with the token", { reason: (e as MeziteError).message });
      this.storage.clearPending();
    }
    return ok;
  }

  /**
   * Runs until `signal` aborts, or a final error (which it throws). A stop in the middle of a
   * call is a clean stop, not an error: the saved renewal request is replayed on the next start.
   */
  async run(signal: AbortSignal): Promise<void> {
    checkDestination(this.opts.destinationDir);
    this.storage.open();
    let agent: AgentServer | undefined;
    try {
      // Never on disk with --no-ssh-key-file, not even one an earlier run left (SPEC §16).
      if (!this.opts.sshKeyFile) removeSshKeyFile(this.opts.destinationDir);
      if (this.opts.sshAgentSocket !== undefined) {
        agent = await startAgentServer({ path: this.opts.sshAgentSocket, keyring: this.keyring!, requests: this.agentRequests, log: this.deps.log });
      }
      await this.withRetry(signal, () => this.issueOnce(signal), this.opts.oneShot ? this.opts.oneShotRetryMs : Infinity);
      if (this.opts.oneShot) return;
      const stop = new AbortController();
      const onAbort = () => stop.abort();
      signal.addEventListener("abort", onAbort, { once: true });
      const watching = this.opts.watch !== false ? this.watchLoop(stop.signal) : Promise.resolve();
      try {
        while (!signal.aborted) {
          const rotated = await this.waitForRenewal(signal);
          if (signal.aborted) break;
          this.renewRequested = false;
          // Certificates that expired during an outage can never renew: from then on each attempt
          // is start-up's (a new join, or the one-line "join again" when there is nothing to join with).
          await this.withRetry(signal, () => (this.state!.expires <= this.now() ? this.issueOnce(signal) : this.renew(signal, rotated)), Infinity);
        }
      } finally {
        stop.abort();
        signal.removeEventListener("abort", onAbort);
        await watching;
      }
    } catch (e) {
      if (!signal.aborted) throw e;
    } finally {
      await agent?.close();
      this.storage.close();
    }
  }

  /**
   * Sleeps until the next scheduled renewal, a SIGHUP, or a CA rotation's phase change (asked
   * every --ca-check-interval); true for the last. A phase change is renewed for at a random
   * moment within the spread the service allows, so a fleet does not renew all at once; the
   * checks go on meanwhile, and a later phase change with a shorter spread (a manual step: none)
   * brings the renewal forward. A failed check is retried at the next one: the scheduled renewal
   * does not depend on it.
   */
  private async waitForRenewal(signal: AbortSignal): Promise<boolean> {
    const renewAt = this.nextRenewalAt();
    let rotateAt = Infinity;
    let seen = "";
    for (;;) {
      // ±10 %: a fleet started together does not ask in lockstep.
      // While a change stream is up, phase changes are pushed: no asking.
      const check = this.streaming ? Infinity : this.now() + this.opts.caCheckIntervalMs * (0.9 + this.random() * 0.2);
      await this.sleepUntil(Math.min(renewAt, check, rotateAt), signal, true);
      this.streamLost = false;
      if (signal.aborted || this.renewRequested || this.now() >= renewAt) return false;
      if (this.now() >= rotateAt) return true;
      const changed = this.pushed !== undefined ? this.takePushed() : this.now() >= check ? await this.caStateChanged(signal) : undefined;
      if (changed === undefined || changed.caState === seen) continue;
      seen = changed.caState;
      this.deps.log.info("CA rotation phase changed; renewing", { ca_state: changed.caState, within_ms: changed.renewWithinMs });
      rotateAt = Math.min(rotateAt, this.now() + this.random() * changed.renewWithinMs);
    }
  }

  /**
   * Undefined when the CAs are as the current certificates were issued; else the new state and
   * how long the renewal may be spread. Each check reports the state held, so the service knows
   * who is behind a rotation.
   */
  private async caStateChanged(signal: AbortSignal): Promise<{ caState: string; renewWithinMs: number } | undefined> {
    const state = this.state!;
    try {
      const { caState, renewWithinMs } = await this.renewClient(state).getCaState({ heldCaState: state.ca_state ?? "" }, { signal });
      if (caState === "" || caState === state.ca_state) return undefined;
      return { caState, renewWithinMs: Number(renewWithinMs) };
    } catch (e) {
      if (!signal.aborted) this.deps.log.warn("could not check for a CA rotation", { error: fromConnectError(e, this.opts.authServer).message });
      return undefined;
    }
  }

  private renewClient(state: IdentityState): RenewClient {
    return connect(RenewService, this.opts.authServer, { certPem: state.renewal_cert_pem, keyPem: state.renewal_key_pem, caPem: state.tls_ca_pem }, WATCH_KEEPALIVE);
  }

  /** A pushed phase change, when it is not what the current certificates hold. */
  private takePushed(): { caState: string; renewWithinMs: number } | undefined {
    const p = this.pushed;
    this.pushed = undefined;
    return p && p.caState !== "" && p.caState !== this.state?.ca_state ? p : undefined;
  }

  /**
   * Holds the change stream (RenewService.Watch): phase changes wake waitForRenewal; a lock or
   * deletion of this instance renews now, whose refusal ends the daemon. The stream lives across
   * renewals (the service ends it after a day, or on a restart): it is opened again with the
   * current certificate. A cut stream is replaced with jittered backoff; a refused one (caps, an
   * older service) is asked for again after minutes, and waitForRenewal asks every
   * --ca-check-interval meanwhile.
   */
  private watchLoop(signal: AbortSignal): Promise<void> {
    return holdStream(
      {
        run: (delivered) => this.watchOnce(signal, delivered).catch((e: unknown) => Promise.reject(fromConnectError(e, this.opts.authServer))),
        down: () => {
          if (!this.streaming) return;
          this.streaming = false;
          this.streamLost = true;
          this.wake?.();
        },
        log: this.deps.log,
        meanwhile: "asking every --ca-check-interval",
      },
      signal,
      this.random,
    );
  }

  private async watchOnce(signal: AbortSignal, up: () => void): Promise<void> {
    const state = this.state!;
    let first = true;
    // Reports what the current certificates hold as it opens, as GetCaState does.
    for await (const ev of this.renewClient(state).watch({ heldCaState: state.ca_state ?? "" }, { signal, timeoutMs: 0 })) {
      if (first) up();
      first = false;
      this.streaming = true;
      if (ev.revoked) {
        this.deps.log.warn("the auth service says this instance was locked or deleted; renewing now");
        this.renewRequested = true;
      } else {
        this.pushed = { caState: ev.caState, renewWithinMs: Number(ev.renewWithinMs) };
      }
      this.wake?.();
    }
  }

  /**
   * The interval after the last issue, or sooner when the certificates live too short for it
   * (RENEW_BY_LIFETIME_SHARE); ±10 % jitter so a fleet started together spreads out.
   */
  private nextRenewalAt(): number {
    const s = this.state!;
    const lifetime = s.expires - s.issued;
    this.warnIfLifetimeShort(lifetime);
    const spread = 0.9 + this.random() * 0.2;
    return s.issued + Math.min(this.opts.renewalIntervalMs, lifetime * RENEW_BY_LIFETIME_SHARE) * spread;
  }

  /** The roles granted no more than the interval: the operator should know their setting is overruled. */
  private warnIfLifetimeShort(lifetime: number): void {
    // To the second: the request's round trip is not part of what the roles granted.
    const granted = Math.round(lifetime / 1000) * 1000;
    const short = granted <= this.opts.renewalIntervalMs;
    if (short && !this.shortLifetimeWarned) {
      this.deps.log.warn("the roles grant certificates no longer than --renewal-interval; renewing at 2/3 of their lifetime at the latest: lower --renewal-interval or raise the roles' max_session_ttl", {
        granted_ttl: formatDuration(granted),
        renewal_interval: formatDuration(this.opts.renewalIntervalMs),
      });
    }
    this.shortLifetimeWarned = short;
  }

  /**
   * Retries transient failures with exponential backoff and full jitter, keeping the current
   * outputs; final errors and `budgetMs` running out are thrown.
   *
   * SIGHUP ("renew now") may cut one backoff wait short per run of failures, no more: a script
   * sending SIGHUP in a loop while the auth service is down must not turn the retries into a
   * tight loop against it.
   */
  private async withRetry(signal: AbortSignal, fn: () => Promise<void>, budgetMs: number): Promise<void> {
    const started = this.now();
    const backoff = new Backoff({ baseMs: 1_000, maxMs: Math.min(Math.max(this.opts.renewalIntervalMs / 2, 1_000), 300_000), minMs: 250, random: this.random });
    try {
      for (;;) {
        // This attempt answers every SIGHUP so far; one arriving while it runs asks for another.
        this.renewRequested = false;
        try {
          await fn();
          return;
        } catch (e) {
          const code = isMeziteError(e) ? e.code : "ERR_INTERNAL";
          this.failures.inc({ code });
          if (isFinalError(e) || signal.aborted) throw e;
          if (isMeziteError(e) && (e.code === "ERR_USAGE" || e.code === "ERR_CONFIG" || e.code === "ERR_SYMLINK")) throw e;
          // The last wait is cut to what is left of the budget, so the final attempt lands on it.
          const left = budgetMs - (this.now() - started);
          if (left <= 0) throw e;
          // While the outputs are valid, no wait leaps past their expiry: at most half the time
          // left, so the attempts close in on it and one lands just before (SPEC §6).
          const valid = this.state ? this.state.expires - this.now() : 0;
          const delay = Math.round(Math.min(backoff.next(), left, valid > 0 ? Math.max(valid / 2, 250) : Infinity));
          this.deps.log.warn("issue failed; retrying", { error: (e as Error).message, code, retry_in_ms: delay, attempt: backoff.failures });
          await this.sleepUntil(this.now() + delay, signal);
          if (this.renewRequested) this.backoffCutUsed = true;
        }
      }
    } finally {
      this.backoffCutUsed = false;
    }
  }

  /**
   * Sleeps in short steps against the wall clock, so a machine that slept (suspend, a paused
   * VM) renews at once on waking instead of when a monotonic timer would fire. A SIGHUP
   * (renewSoon) ends it.
   */
  private async sleepUntil(at: number, signal: AbortSignal, wakeOnPush = false): Promise<void> {
    while (!signal.aborted && !this.renewRequested && !(wakeOnPush && (this.pushed !== undefined || this.streamLost)) && this.now() < at) {
      const step = new AbortController();
      const stop = () => step.abort();
      signal.addEventListener("abort", stop, { once: true });
      this.wake = stop;
      await sleep(Math.min(at - this.now(), 1_000), step.signal);
      signal.removeEventListener("abort", stop);
      this.wake = undefined;
    }
  }

  private async join(signal: AbortSignal): Promise<void> {
    if (this.opts.join.method !== "token") return this.joinWithIdToken(this.opts.join, signal);
    const token = this.opts.token;
    if (!token) {
      throw new MeziteError("ERR_USAGE", `no state in ${this.opts.storageDir} and no token: pass --token-file, --token or set MEZITE_TOKEN to join`);
    }
    if (this.opts.caPins.length > 0) await checkCaPin(this.opts.authServer, this.opts.caPins);
    const keys = generateIssueKeys();
    const { request, macKey } = buildJoinRequest(token, keys, this.opts.certTtlMs);
    const client = connect(JoinService, this.opts.authServer, {});
    let certs: IssuedCertificates;
    try {
      certs = verifyJoinReply(request, await client.join(request, { signal }), macKey, keys);
    } catch (e) {
      throw fromConnectError(e, this.opts.authServer);
    }
    if (this.opts.caPins.length > 0 && !bundleHasPin(certs.tlsCaPem, this.opts.caPins)) {
      throw new MeziteError("ERR_WRONG_CA", "the auth service's TLS CA does not match --ca-pin");
    }
    await this.apply(certs, keys, "joined");
  }

  /**
   * A join with the platform's ID token (SPEC §14). The token is a bearer credential, so it
   * travels only on a connection verified against the pinned CA, to the cluster whose name it
   * was made for.
   */
  private async joinWithIdToken(join: IdTokenJoin, signal: AbortSignal): Promise<void> {
    if (!join.name) {
      throw new MeziteError("ERR_USAGE", `no state in ${this.opts.storageDir} and no join token name: pass --token=NAME (the join_token resource) to join`);
    }
    const caPem = await checkCaPin(this.opts.authServer, this.opts.caPins);
    const client = connect(JoinService, this.opts.authServer, { caPem });
    const keys = generateIssueKeys();
    let certs: IssuedCertificates;
    try {
      const { clusterName } = await client.getClusterName({}, { signal });
      const idToken = await obtainIdToken(join, clusterName);
      const reply = await client.joinWithIdToken(
        { joinToken: join.name, idToken, ...publicKeysOf(keys), requestedTtlMs: BigInt(this.opts.certTtlMs), host: hostFacts() },
        { signal },
      );
      if (!reply.certificates) throw new MeziteError("ERR_MALFORMED_CERT", "the auth service sent an empty join reply");
      certs = reply.certificates;
    } catch (e) {
      throw fromConnectError(e, this.opts.authServer);
    }
    checkCertsMatchKeys(certs, keys);
    if (!bundleHasPin(certs.tlsCaPem, this.opts.caPins)) throw new MeziteError("ERR_WRONG_CA", "the auth service's TLS CA does not match --ca-pin");
    await this.apply(certs, keys, "joined");
  }

  /**
   * `rotated`: a renewal for a CA rotation, not the schedule. It keeps the SSH key: only the
   * certificate changes, so an ssh that read the old certificate and reads ssh_key again to sign
   * still finds its key (a fresh key swapped in mid-login fails that login).
   */
  private async renew(signal: AbortSignal, rotated = false): Promise<void> {
    const state = this.state!;
    let pending = this.storage.loadPending();
    if (pending && pending.from_generation !== state.generation) {
      this.storage.clearPending(); // answered and applied before a crash
      pending = undefined;
    }
    let keys: IssueKeys | undefined;
    if (!pending) {
      const fresh = generateIssueKeys();
      keys = rotated && this.sshKey ? { ...fresh, ssh: this.sshKey } : fresh;
      pending = { request_id: randomBytes(16).toString("hex"), from_generation: state.generation, ttl_ms: this.opts.certTtlMs, keys: serializeKeys(keys) };
      this.storage.savePending(pending);
    }
    keys ??= deserializeKeys(pending.keys); // a request from before a restart: answered again only with its own keys
    const request = buildRenewRequest(Buffer.from(pending.request_id, "hex"), keys, pending.ttl_ms);
    let certs: IssuedCertificates;
    try {
      const reply = await this.renewClient(state).renew(request, { signal });
      if (!reply.certificates) throw new MeziteError("ERR_MALFORMED_CERT", "the auth service sent an empty renewal reply");
      certs = reply.certificates;
    } catch (e) {
      const err = fromConnectError(e, this.opts.authServer);
      // Locked or deleted (a generation mismatch locks the instance): the agent signs with nothing it holds (SPEC §16).
      if (REVOKING_CODES.includes(err.code)) this.keyring?.revoke();
      throw err;
    }
    checkCertsMatchKeys(certs, keys);
    if (certs.identityId !== state.identity_id || certs.instanceId !== state.instance_id) {
      throw new MeziteError("ERR_MALFORMED_CERT", "the auth service answered for another identity or instance");
    }
    await this.apply(certs, keys, "renewed");
    this.storage.clearPending();
  }

  /** State first (it holds the renewal key the server now expects), then the outputs. */
  private async apply(certs: IssuedCertificates, keys: IssueKeys, what: "joined" | "renewed"): Promise<void> {
    const state: IdentityState = {
      version: 1,
      auth_server: this.opts.authServer,
      identity_name: certs.identityName,
      identity_id: certs.identityId,
      instance_id: certs.instanceId,
      generation: certs.generation.toString(),
      tls_ca_pem: certs.tlsCaPem,
      renewal_cert_pem: certs.renewalCertificatePem,
      renewal_key_pem: privateKeyToPem(keys.renewal),
      expires: Number(certs.expires),
      issued: this.now(),
      ca_state: certs.caState,
    };
    // The outputs are written and their fsyncs started before the state is saved, so that the
    // state's fsync joins theirs in one journal commit; they are put in place only once it is.
    const outputs = stageOutputs(this.opts.destinationDir, certs, keys, { sshKeyFile: this.opts.sshKeyFile, sshAgentSocket: this.opts.sshAgentSocket });
    try {
      this.storage.saveState(state);
    } catch (e) {
      // Waited for: a one-shot exits on this error, and must leave no temp file with a key in it.
      await outputs.then((o) => o.discard(), () => undefined);
      throw e;
    }
    this.sshKey = keys.ssh;
    // The agent swaps key and certificate in one assignment; the files follow.
    this.keyring?.set(keys.ssh, certs.sshCertificate, certs.identityName);
    (await outputs).commit();
    this.state = state;
    this.renewals.inc({ kind: what === "joined" ? "join" : "renew" });
    this.deps.log.info(`agent identity ${what}`, {
      identity: certs.identityName,
      instance: certs.instanceId,
      serial: certs.serial.toString(),
      generation: certs.generation.toString(),
      expires: new Date(Number(certs.expires)).toISOString(),
      principals: certs.principals.join(","),
    });
  }
}

/**
 * `mezd node start` (SPEC §7, §20): keeps a joined node's ssh dir current. Three services share
 * one retry loop: revocations (KRL, lock list, User CA keys), pushed on one long-lived stream
 * (NodeService.Watch) so a lock stops logins within seconds, and polled every ~2 s while no
 * stream is up (cut, refused, or an older service); a heartbeat every ~30 s for `mezctl nodes
 * ls`; and host certificate renewal once less than half its life remains. A failing call backs
 * off and leaves the current files in place.
 */
import { closeSync, constants, lstatSync, openSync, readFileSync } from "node:fs";
import { create } from "@bufbuild/protobuf";
import type { Client } from "@connectrpc/connect";
import { NodeService, RenewHostCertificateRequestSchema, type GetRevocationsResponse } from "../api/gen/mezite/v1/node_pb.js";
import { connect } from "../api/client.js";
import { WATCH_KEEPALIVE, holdStream } from "../api/stream.js";
import { fromConnectError } from "../api/errors.js";
import { KRL_HEADER_BYTES, krlContentVersion } from "../ca/krl.js";
import { formatAuthorizedKey, parseAuthorizedKey, parseOpenSSHPrivateKey } from "../ca/sshkey.js";
import { generateP256, privateKeyToPem, publicKeyToDer } from "../ca/x509.js";
import { Backoff, sleep } from "../lib/backoff.js";
import { MeziteError, isMeziteError } from "../lib/errors.js";
import { readFileNoFollow, writeFileAtomic } from "../lib/files.js";
import type { Logger } from "../lib/log.js";
import { Registry } from "../lib/metrics.js";
import {
  PUBLIC_MODE, formatLockState, formatUserCaKeys, pathOf, readNodeConfig, readNodeTls, writeNodeConfig, writeNodeTls, type NodeConfig,
} from "./layout.js";
import { checkNodeCredentials, hostCertValidity } from "./protocol.js";

export interface NodeAgentOptions {
  sshDir: string;
  /** Overrides the address saved at join. */
  authServer: string | undefined;
  /** What heartbeats report as this node's address; empty = the address the service sees. */
  advertiseAddr: string;
  /** Default 2 s. */
  revocationIntervalMs: number;
  /** Default 30 s. */
  heartbeatIntervalMs: number;
  /** Longest wait between retries of a failing call. Default 30 s. */
  maxBackoffMs: number;
  /** Hold a change stream (SPEC §20) and poll only while it is down. Default true. */
  watch?: boolean;
}

export const NODE_DEFAULTS = { revocationIntervalMs: 2_000, heartbeatIntervalMs: 30_000, maxBackoffMs: 30_000 } as const;

export interface NodeAgentDeps {
  log: Logger;
  now?: () => number;
  /** 0..1, for jitter. */
  random?: () => number;
}

/** KRL header: magic (8), format version (4), KRL version (8), generated date (8), then the content. */
const KRL_HEADER_VOLATILE = KRL_HEADER_BYTES;
const KRL_MAGIC = Buffer.from("SSHKRL\n\0", "latin1");

export class NodeAgent {
  readonly registry = new Registry();
  private readonly calls = this.registry.counter("mezite_node_calls_total", "calls to the auth service by operation and result");
  private readonly updates = this.registry.counter("mezite_node_file_updates_total", "ssh dir files replaced, by file");
  private readonly krlBytes = this.registry.counter("mezite_node_krl_received_bytes_total", "KRL bytes received (none when the KRL held is current)");
  private readonly now: () => number;
  private readonly random: () => number;
  private config: NodeConfig;
  private client: Client<typeof NodeService> | undefined;
  private lastRevocationSync: number | undefined;
  /** The KRL file last hashed (heldKrlVersion): its content version and inode, size and mtime. */
  private heldKrl: { version: string; stamp: string } | undefined;
  /** A renewal a Host CA phase change asks for, and when it is due. */
  private caRenewal: { state: string; at: number } | undefined;
  /** The User CA state of the last reply whose keys are in user_ca.pub, reported with each fetch. */
  private userCaState = "";
  /** A change stream is up: revocations are pushed, not polled. */
  private streaming = false;
  /** Something changed that only the next fetch reports (a host certificate of the new Host CA key). */
  private reportDue = false;
  /** The last fetch-and-apply or pushed apply begun (inTurn). */
  private turn: Promise<unknown> = Promise.resolve();

  constructor(private readonly opts: NodeAgentOptions, private readonly deps: NodeAgentDeps) {
    this.now = deps.now ?? Date.now;
    this.random = deps.random ?? Math.random;
    this.config = readNodeConfig(opts.sshDir);
    readNodeTls(opts.sshDir); // fail at start, not at the first call
    this.registry.gauge("mezite_node_host_cert_expiry_seconds", "seconds until the host certificate expires", () => {
      const c = this.hostCertOrUndefined();
      return c && Math.round((c.validBeforeMs - this.now()) / 1000);
    });
    this.registry.gauge("mezite_node_revocations_age_seconds", "seconds since the revocation state was last fetched", () =>
      this.lastRevocationSync === undefined ? undefined : this.streaming ? 0 : Math.round((this.now() - this.lastRevocationSync) / 1000),
    );
  }

  get authServer(): string {
    return this.opts.authServer ?? this.config.auth_server;
  }

  /** Why /readyz should fail, or undefined. */
  notReady(): string | undefined {
    const cert = this.hostCertOrUndefined();
    if (!cert) return "the host certificate is missing or unreadable";
    if (cert.validBeforeMs <= this.now()) return "the host certificate has expired";
    if (this.lastRevocationSync === undefined) return "revocations not fetched yet";
    const age = this.streaming ? 0 : this.now() - this.lastRevocationSync;
    if (age > 30_000) return `revocations last fetched ${Math.round(age / 1000)}s ago`;
    return undefined;
  }

  private hostCert(): ReturnType<typeof hostCertValidity> {
    const path = pathOf(this.opts.sshDir, "hostCert");
    try {
      return hostCertValidity(readFileNoFollow(path) ?? "");
    } catch (e) {
      throw new MeziteError("ERR_STATE_CORRUPT", `${path} is missing or not a certificate: run mezd node join again with a new node token`, { cause: e });
    }
  }

  private hostCertOrUndefined(): ReturnType<typeof hostCertValidity> | undefined {
    try {
      return this.hostCert();
    } catch {
      return undefined;
    }
  }

  private rpc(): Client<typeof NodeService> {
    if (!this.client) {
      const tls = readNodeTls(this.opts.sshDir);
      this.client = connect(NodeService, this.authServer, { certPem: tls.cert_pem, keyPem: tls.key_pem, caPem: this.config.tls_ca_pem }, WATCH_KEEPALIVE);
    }
    return this.client;
  }

  private async call<T>(op: string, f: (c: Client<typeof NodeService>) => Promise<T>): Promise<T> {
    try {
      const r = await f(this.rpc());
      this.calls.inc({ op, result: "ok" });
      return r;
    } catch (e) {
      const err = fromConnectError(e, this.authServer);
      this.calls.inc({ op, result: err.code });
      throw err;
    }
  }

  /** Fetches the revocation state and replaces the files that changed; true when any did. */
  syncRevocations(signal?: AbortSignal): Promise<boolean> {
    return this.inTurn(async () => {
      // What this node holds goes with each fetch: `mezctl ca status` names nodes behind a rotation;
      // and the KRL's version, so an unchanged KRL is not sent again.
      const held = this.heldKrlVersion();
      this.reportDue = false;
      const r = await this.call("revocations", (c) =>
        c.getRevocations({ krlVersion: held, heldCaState: this.config.ca_state ?? "", heldUserCaState: this.userCaState }, signal ? { signal } : {}),
      );
      return this.applyRevocations(r, held, signal);
    });
  }

  /**
   * Fetch-and-apply and a pushed state's apply run one at a time, in the order they began: a poll
   * in flight when the stream comes up must not write its older state over the pushed one (the
   * stream sends again only on a change), nor both see a Host CA renewal due and renew twice.
   */
  private inTurn<T>(f: () => Promise<T>): Promise<T> {
    const p = this.turn.then(f, f);
    this.turn = p.catch(() => undefined);
    return p;
  }

  /**
   * Writes a revocation state, fetched or pushed, and renews the host certificate when a Host CA
   * phase change asks for it and its moment has come; true when any file changed. `held`: the
   * KRL version this node held when the state was made for it.
   */
  private async applyRevocations(r: GetRevocationsResponse, held: string, signal?: AbortSignal): Promise<boolean> {
    // An empty krl means "the one you hold is current", and only when it names the one we sent.
    const krlCurrent = r.krl.length === 0 && held !== "" && r.krlVersion === held;
    checkRevocations(r, krlCurrent);
    this.krlBytes.inc({}, r.krl.length);
    const d = this.opts.sshDir;
    // CA keys first: during a rotation the new key must be trusted before certificates use it.
    const changed = [
      this.replace("userCa", formatUserCaKeys(r.userCaSshKeys)),
      this.replace("locks", formatLockState({ version: 1, identity_ids: r.lockedIdentityIds, instance_ids: r.lockedInstanceIds, roles: r.lockedRoles, logins: r.lockedLogins })),
      !krlCurrent && this.replaceKrl(Buffer.from(r.krl)),
    ].some(Boolean);
    this.lastRevocationSync = this.now();
    this.userCaState = r.userCaState;
    // A Host CA rotation moved on: a host certificate of the signing key, and the TLS trust that
    // follows the auth service's certificate; at a random moment within what the service allows,
    // so a fleet does not renew all at once. (A User CA rotation is all in user_ca.pub above.)
    if (r.caState !== "" && r.caState !== this.config.ca_state) {
      if (this.caRenewal?.state !== r.caState) {
        this.caRenewal = { state: r.caState, at: this.now() + this.random() * Number(r.renewWithinMs) };
        this.deps.log.info("CA rotation phase changed; renewing the host certificate", { ca_state: r.caState, within_ms: Number(r.renewWithinMs) });
      }
      if (this.now() >= this.caRenewal.at) {
        await this.renew(signal);
        this.caRenewal = undefined;
        this.reportDue = true;
      }
    }
    if (changed) this.deps.log.info("revocation state updated", { ssh_dir: d, locked_identities: r.lockedIdentityIds.length, locked_roles: r.lockedRoles.length, locked_logins: r.lockedLogins.length, locked_instances: r.lockedInstanceIds.length });
    return changed;
  }

  private replace(file: "userCa" | "locks", text: string): boolean {
    const path = pathOf(this.opts.sshDir, file);
    if (readFileNoFollow(path) === text) return false;
    writeFileAtomic(path, text, PUBLIC_MODE);
    this.updates.inc({ file });
    return true;
  }

  /**
   * The content version of the KRL on disk ("" = none usable), so the service sends the KRL's bytes
   * only when they changed. Hashed again only when the file is not the one last looked at.
   */
  private heldKrlVersion(): string {
    const path = pathOf(this.opts.sshDir, "krl");
    let st;
    try {
      st = lstatSync(path);
    } catch {
      return "";
    }
    const stamp = `${st.ino}:${st.size}:${st.mtimeMs}`;
    if (this.heldKrl?.stamp === stamp) return this.heldKrl.version;
    const krl = readBinary(path);
    if (!st.isFile() || !krl || !isKrl(krl)) return "";
    this.heldKrl = { version: krlContentVersion(krl), stamp };
    return this.heldKrl.version;
  }

  /** The service stamps every KRL with a fresh version and date: only the content counts as a change. */
  private replaceKrl(krl: Buffer): boolean {
    const path = pathOf(this.opts.sshDir, "krl");
    const current = readBinary(path);
    if (current && current.length >= KRL_HEADER_VOLATILE && current.subarray(KRL_HEADER_VOLATILE).equals(krl.subarray(KRL_HEADER_VOLATILE))) return false;
    writeFileAtomic(path, krl, PUBLIC_MODE);
    this.updates.inc({ file: "krl" });
    return true;
  }

  async heartbeat(signal?: AbortSignal): Promise<void> {
    const expires = BigInt(this.hostCert().validBeforeMs);
    await this.call("heartbeat", (c) => c.heartbeat({ address: this.opts.advertiseAddr, hostCertExpires: expires }, signal ? { signal } : {}));
  }

  /** Renews once less than half the host certificate's life remains; true when it did. */
  async renewIfDue(signal?: AbortSignal): Promise<boolean> {
    const { validAfterMs, validBeforeMs } = this.hostCert();
    if (this.now() < validAfterMs + (validBeforeMs - validAfterMs) / 2) return false;
    await this.renew(signal);
    return true;
  }

  /**
   * The host key stays: sshd loads key and certificate from two files, and a login between two
   * renames would see a certificate for another key. A fresh TLS key is ours alone and goes in
   * one file with its certificate.
   */
  async renew(signal?: AbortSignal): Promise<void> {
    const d = this.opts.sshDir;
    const hostKey = parseOpenSSHPrivateKey(readFileNoFollow(pathOf(d, "hostKey")) ?? "");
    const tls = generateP256().privateKey;
    const hostPublic = formatAuthorizedKey(hostKey);
    const res = await this.call("renew", (c) =>
      c.renewHostCertificate(create(RenewHostCertificateRequestSchema, { hostPublicKey: hostPublic, tlsPublicKey: publicKeyToDer(tls) }), signal ? { signal } : {}),
    );
    const creds = res.credentials;
    if (!creds) throw new MeziteError("ERR_MALFORMED_CERT", "the auth service sent an empty renewal reply");
    checkNodeCredentials(creds, { host: hostKey, tls }, this.now());
    writeNodeTls(d, { cert_pem: creds.tlsCertificatePem, key_pem: privateKeyToPem(tls) });
    this.client = undefined; // the next call presents the new certificate
    writeFileAtomic(pathOf(d, "hostCert"), `${creds.hostCertificate}\n`, PUBLIC_MODE);
    this.config = {
      ...this.config,
      labels: creds.labels,
      tls_ca_pem: creds.tlsCaPem,
      host_ca_ssh_keys: creds.hostCaSshKeys,
      host_cert_expires: Number(creds.hostCertExpires),
      ca_state: creds.caState,
    };
    writeNodeConfig(d, this.config);
    this.updates.inc({ file: "hostCert" });
    this.deps.log.info("host certificate renewed", { node: creds.nodeName, expires: new Date(Number(creds.hostCertExpires)).toISOString() });
  }

  /** While streaming: the spread moment of a Host CA renewal came; renew, then report it. */
  private async renewIfCaDue(signal: AbortSignal): Promise<void> {
    if (this.caRenewal === undefined || this.now() < this.caRenewal.at) return;
    await this.syncRevocations(signal);
    if (this.reportDue) await this.syncRevocations(signal);
  }

  /**
   * Holds the change stream: each event is written as a fetched reply would be; after one that
   * moved the CA state this node holds (new User CA keys written, a host certificate renewed) one
   * fetch reports it, as rotation needs. A cut stream is replaced with jittered backoff; a refused
   * one (caps, an older service) is asked for again after minutes. Polling covers every gap.
   */
  private watchLoop(signal: AbortSignal): Promise<void> {
    return holdStream(
      {
        run: (delivered) => this.watchOnce(signal, delivered),
        down: () => void (this.streaming = false),
        fatal: (e) => isMeziteError(e, "ERR_NOT_AUTHORIZED"), // removed or replaced
        log: this.deps.log,
        meanwhile: "polling",
      },
      signal,
      this.random,
    );
  }

  private async watchOnce(signal: AbortSignal, up: () => void): Promise<void> {
    const held = this.heldKrlVersion();
    const request = { krlVersion: held, heldCaState: this.config.ca_state ?? "", heldUserCaState: this.userCaState };
    let first = true;
    try {
      for await (const ev of this.rpc().watch(request, { signal, timeoutMs: 0 })) {
        if (ev.removed) {
          await this.syncRevocations(signal); // says why (ERR_NOT_AUTHORIZED), which ends the agent
          return;
        }
        if (!ev.revocations) continue;
        const userBefore = this.userCaState;
        const pushed = ev.revocations;
        const wasFirst = first;
        // What this node holds is read in its turn: a poll ahead of it may have just written a KRL.
        await this.inTurn(() => this.applyRevocations(pushed, wasFirst ? held : this.heldKrlVersion(), signal));
        this.calls.inc({ op: "revocations_pushed", result: "ok" });
        if (first) up();
        first = false;
        this.streaming = true;
        if (this.userCaState !== userBefore || this.reportDue) await this.syncRevocations(signal);
      }
    } catch (e) {
      throw fromConnectError(e, this.authServer);
    }
  }

  /**
   * Runs every service until `signal` aborts, or until the service says this node is no longer
   * one (removed or replaced: ERR_NOT_AUTHORIZED), which ends them all and is thrown.
   */
  async run(outer: AbortSignal): Promise<void> {
    this.deps.log.info("node agent started", { node: this.config.name, auth_server: this.authServer, ssh_dir: this.opts.sshDir });
    const stop = new AbortController();
    const onAbort = () => stop.abort();
    outer.addEventListener("abort", onAbort, { once: true });
    const signal = stop.signal;
    const ending = (p: Promise<void>) => p.catch((e: unknown) => (stop.abort(), Promise.reject(e)));
    try {
      await Promise.all([
        // Polled while no stream is up; while one is, only a Host CA renewal's due moment is kept.
        ending(this.every("revocations", this.opts.revocationIntervalMs, signal, () => (this.streaming ? this.renewIfCaDue(signal) : this.syncRevocations(signal)))),
        ...(this.opts.watch !== false ? [ending(this.watchLoop(signal))] : []),
        ending(this.every("heartbeat", this.opts.heartbeatIntervalMs, signal, () => this.heartbeat(signal))),
        // Checked as often as heartbeats: the certificate lives days, half of it is never close.
        ending(this.every("renewal", this.opts.heartbeatIntervalMs, signal, () => this.renewIfDue(signal))),
      ]);
    } finally {
      outer.removeEventListener("abort", onAbort);
    }
  }

  /**
   * Runs `fn` now and then every interval (±10 % jitter). Failures retry with exponential
   * backoff and full jitter up to maxBackoffMs, logged when the error changes and on recovery.
   */
  private async every(name: string, intervalMs: number, signal: AbortSignal, fn: () => Promise<unknown>): Promise<void> {
    // A failing call waits between the interval and min(2 * interval * 2^n, maxBackoffMs).
    const backoff = new Backoff({ baseMs: 2 * intervalMs, maxMs: this.opts.maxBackoffMs, random: this.random });
    let lastError = "";
    while (!signal.aborted) {
      let wait: number;
      try {
        await fn();
        if (backoff.failures > 0) this.deps.log.info(`${name} recovered`, { after_failures: backoff.failures });
        backoff.reset();
        lastError = "";
        wait = intervalMs * (0.9 + this.random() * 0.2);
      } catch (e) {
        if (signal.aborted) break;
        if (isMeziteError(e, "ERR_NOT_AUTHORIZED")) throw e; // removed or replaced: retrying cannot help
        const message = (e as Error)?.message ?? String(e);
        const code = isMeziteError(e) ? e.code : "ERR_INTERNAL";
        wait = Math.max(intervalMs, backoff.next());
        if (message !== lastError) this.deps.log.warn(`${name} failed; keeping the current files and retrying`, { error: message, code, retry_in_ms: wait });
        lastError = message;
      }
      await sleep(wait, signal);
    }
  }
}

/** The file's bytes, or undefined when it is missing or not a plain file we can read (then it is rewritten). */
function readBinary(path: string): Buffer | undefined {
  try {
    const fd = openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW);
    try {
      return readFileSync(fd);
    } finally {
      closeSync(fd);
    }
  } catch {
    return undefined;
  }
}

const isKrl = (b: Uint8Array): boolean => b.length >= KRL_HEADER_VOLATILE && Buffer.from(b.subarray(0, 8)).equals(KRL_MAGIC);

/** sshd refuses every key when it cannot load the KRL or trusts no CA: never write such state. */
function checkRevocations(r: GetRevocationsResponse, krlCurrent: boolean): void {
  if (!krlCurrent && !isKrl(r.krl)) {
    throw new MeziteError("ERR_MALFORMED_CERT", "the auth service sent a revocation list that is not a KRL");
  }
  if (r.userCaSshKeys.length === 0) throw new MeziteError("ERR_MALFORMED_CERT", "the auth service sent no User CA key");
  try {
    r.userCaSshKeys.forEach((l) => parseAuthorizedKey(l));
  } catch (e) {
    throw new MeziteError("ERR_MALFORMED_KEY", "the auth service sent a User CA key that does not parse", { cause: e });
  }
}

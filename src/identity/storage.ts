/**
 * The daemon's storage dir (0700): its renewal credentials and state, the renewal request in
 * flight, and a lock file so two daemons never share one state. The renewal certificate lives
 * only here, never in the destination dir, so a leaked output dir cannot renew itself.
 */
import { rmdirSync, unlinkSync } from "node:fs";
import { join } from "node:path";
import { parseCertificatePem, pemToPrivateKey } from "../ca/x509.js";
import { MeziteError } from "../lib/errors.js";
import { ensureDir, readFileNoFollow, writeFileAtomic } from "../lib/files.js";
import { takeDirLock } from "../lib/pidlock.js";
import { deserializeKeys, type SerializedKeys } from "./protocol.js";

export interface IdentityState {
  version: 1;
  auth_server: string;
  identity_name: string;
  identity_id: string;
  instance_id: string;
  generation: string;
  /** The CAs the auth service's TLS certificate may chain to (PEM bundle; learned at join, MAC-verified, kept current by renewals). */
  tls_ca_pem: string;
  renewal_cert_pem: string;
  renewal_key_pem: string;
  /** When the current certificates expire (unix ms). */
  expires: number;
  /** When they were issued (unix ms): the renewal schedule counts from here. */
  issued: number;
  /** The CAs' state (rotation phases and keys) they were issued in: GetCaState saying another means renew. */
  ca_state?: string;
}

/** A renewal request, written before it is sent, replayed until it is answered. */
export interface PendingRenewal {
  request_id: string; // hex
  /** The generation of the renewal certificate it is sent with. */
  from_generation: string;
  ttl_ms: number;
  keys: SerializedKeys;
}

const STATE = "state.json";
const PENDING = "pending_renewal.json";

function corrupt(dir: string, what: string, cause?: unknown): MeziteError {
  return new MeziteError("ERR_STATE_CORRUPT", `the storage dir ${dir} is corrupt (${what}): remove it and join again with a new token`, { cause });
}

/**
 * Parses what was read back, so a damaged key or certificate is told as corrupt state (final: a
 * new token is needed) rather than a malformed key or a TLS failure blamed on the auth service,
 * both retried forever. The message names the file, never its content.
 */
function parses(dir: string, name: string, parse: () => unknown): void {
  try {
    parse();
  } catch (e) {
    throw corrupt(dir, `${name} holds a key or certificate that does not parse`, e);
  }
}

export class Storage {
  private release: (() => void) | undefined;

  constructor(readonly dir: string) {}

  /** Creates the dir (0700) and takes the lock; refuses if another live daemon holds it. */
  open(): void {
    ensureDir(this.dir, 0o700, { what: `the storage dir ${this.dir}` });
    this.release = takeDirLock(this.dir, (pid) => `another mezd identity (pid ${pid}) is using the storage dir ${this.dir}: stop it, or give this one its own --storage-dir`);
  }

  close(): void {
    this.release?.();
    this.release = undefined;
  }

  private readJson<T>(name: string): T | undefined {
    const text = readFileNoFollow(join(this.dir, name));
    if (text === undefined) return undefined;
    try {
      return JSON.parse(text) as T;
    } catch (e) {
      throw corrupt(this.dir, `${name} is not valid JSON`, e);
    }
  }

  loadState(): IdentityState | undefined {
    const s = this.readJson<Partial<IdentityState>>(STATE);
    if (s === undefined) return undefined;
    const strings = ["auth_server", "identity_name", "identity_id", "instance_id", "generation", "tls_ca_pem", "renewal_cert_pem", "renewal_key_pem"] as const;
    if (s.version !== 1 || strings.some((k) => typeof s[k] !== "string" || s[k] === "") || typeof s.expires !== "number") throw corrupt(this.dir, `${STATE} is incomplete`);
    parses(this.dir, STATE, () => [pemToPrivateKey(s.renewal_key_pem!), parseCertificatePem(s.renewal_cert_pem!)]);
    return s as IdentityState;
  }

  saveState(s: IdentityState): void {
    writeFileAtomic(join(this.dir, STATE), JSON.stringify(s, null, 2) + "\n", 0o600);
  }

  loadPending(): PendingRenewal | undefined {
    const p = this.readJson<Partial<PendingRenewal>>(PENDING);
    if (p === undefined) return undefined;
    if (typeof p.request_id !== "string" || typeof p.from_generation !== "string" || !p.keys) throw corrupt(this.dir, `${PENDING} is incomplete`);
    // Not dropped to renew afresh: the server may have answered it already (the generation moved
    // on), and only this very request, keys and all, is answered again; another is a clone's.
    parses(this.dir, PENDING, () => deserializeKeys(p.keys!));
    return p as PendingRenewal;
  }

  savePending(p: PendingRenewal): void {
    writeFileAtomic(join(this.dir, PENDING), JSON.stringify(p) + "\n", 0o600);
  }

  /**
   * `release`: the state and any pending request go, then the lock and the dir, unless a live
   * daemon holds the lock (it keeps its state in memory; its next renewal is refused, and it
   * exits 3). Returns whether there was state to remove.
   */
  removeAll(): boolean {
    let had = false;
    for (const name of [STATE, PENDING]) {
      try {
        unlinkSync(join(this.dir, name));
        had = true;
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code !== "ENOENT" && code !== "ENOTDIR") throw new MeziteError("ERR_STORAGE", `cannot remove ${join(this.dir, name)}: ${(e as Error).message}`, { cause: e });
      }
    }
    let release: (() => void) | undefined;
    try {
      release = takeDirLock(this.dir, () => "held by a live daemon");
    } catch {
      return had; // a live daemon's (or no dir at all)
    }
    release();
    try {
      rmdirSync(this.dir);
    } catch {
      // not empty: files that are not ours stay, and so does the dir
    }
    return had;
  }

  clearPending(): void {
    try {
      unlinkSync(join(this.dir, PENDING));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "ENOENT") throw new MeziteError("ERR_STORAGE", `cannot remove ${PENDING}: ${(e as Error).message}`, { cause: e });
    }
  }
}

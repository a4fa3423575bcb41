/**
 * The cluster's two certificate authorities. Each has an Ed25519 SSH key and an ECDSA P-256
 * X.509 certificate, two of each during a rotation (rotation.ts). They live in the backend, so every auth service on one database signs with
 * the same keys, but the private keys are sealed (AES-256-GCM) under the cluster key kept in the
 * data dir: a database dump alone cannot sign anything.
 */
import { X509Certificate, createCipheriv, createDecipheriv, createHash, createPrivateKey, createPublicKey, randomBytes, type KeyObject } from "node:crypto";
import { join } from "node:path";
import type { Backend } from "../backend/backend.js";
import { formatAuthorizedKey, generateEd25519, sshFingerprint } from "../ca/sshkey.js";
import { caPin, createCaCertificate, generateP256, parseCertificatePem } from "../ca/x509.js";
import { caName } from "../lib/ca-name.js";
import { MeziteError, isMeziteError } from "../lib/errors.js";
import { readFileNoFollow, writeFileAtomic } from "../lib/files.js";
import { encode, keys, load } from "./records.js";

export type CaKind = "user" | "host";
export const CA_KINDS: CaKind[] = ["user", "host"];

/**
 * Where a CA is in a rotation (SPEC §15). A verifier must trust a key before anything it signed
 * is shown to it, and keep trusting the old key until nothing signed by it is left in use: so the
 * new key is trusted a whole phase (init) before it signs, and the old key a whole phase
 * (update_servers) after it stopped.
 */
export type Phase = "standby" | "init" | "update_clients" | "update_servers" | "rollback";
export const PHASES: Phase[] = ["standby", "init", "update_clients", "update_servers", "rollback"];

/** One key pair of a CA: an Ed25519 SSH key and an ECDSA P-256 X.509 certificate. */
export interface CaKeys {
  sshPrivate: KeyObject;
  sshPublic: KeyObject;
  /** authorized_keys line of the SSH key. */
  sshPublicLine: string;
  /** "SHA256:…", as ssh-keygen -l prints it. */
  sshFingerprint: string;
  x509CertPem: string;
  x509Key: KeyObject;
  x509Cert: X509Certificate;
}

/** How a rotation in progress goes on (stored with the CA, so any auth service continues it). */
export interface RotationState {
  id: string;
  /** auto: every phase lasts grace_ms / 3, then the next begins; manual: `mezctl ca rotate --phase`. */
  mode: "auto" | "manual";
  grace_ms: number;
  started: number;
  phase_started: number;
}

/**
 * A CA as the service uses it: the signing key's fields at top level (what signs now, per phase),
 * and every key a verifier must accept.
 */
export interface CertAuthority extends CaKeys {
  kind: CaKind;
  phase: Phase;
  /** Every key verifiers must accept now, the signing key first. */
  trusted: CaKeys[];
  /** The key in use before a rotation, and the one it brings in (undefined in standby). */
  current: CaKeys;
  next: CaKeys | undefined;
  /**
   * The key that signs server credentials (nodes' host certificates, the auth service's TLS
   * certificate): the new one only from update_servers, so every client trusts it first.
   */
  server: CaKeys;
  rotation: RotationState | undefined;
  /** When the last rotation completed (unix ms), if one has. */
  lastRotated: number | undefined;
  /** StoredCa.spread_ms. */
  spreadMs: number;
  /** The stored record's revision: a phase change is a compare-and-swap on it. */
  revision: string;
}

export interface ClusterCas {
  user: CertAuthority;
  host: CertAuthority;
}

/** The sealed form of one key pair. */
export interface StoredKeys {
  ssh_public: string;
  ssh_private_sealed: string;
  x509_cert_pem: string;
  x509_key_sealed: string;
}

/** A CA record: the current key pair at top level (as before rotations existed), the next beside it. */
export interface StoredCa extends StoredKeys {
  kind: CaKind;
  /** Absent: standby. */
  phase?: Phase;
  next?: StoredKeys;
  rotation?: RotationState;
  last_rotated?: number;
  /** How long daemons and nodes may spread their renewal after a phase change of this (or the last) rotation. */
  spread_ms?: number;
}

/** The key that signs in a phase: the new one from update_clients until the rotation completes. */
export const signsWithNext = (phase: Phase): boolean => phase === "update_clients" || phase === "update_servers";
/** The key that signs server credentials: the new one in update_servers alone (then it is the current one). */
export const serverSignsWithNext = (phase: Phase): boolean => phase === "update_servers";

const CLUSTER_KEY_FILE = "cluster.key";
const CA_VALIDITY_MS = 10 * 365 * 24 * 3_600_000;

/** Reads the data dir's cluster key, creating it when `create` (first start of a cluster). */
export function loadClusterKey(dataDir: string, create: boolean): Buffer | undefined {
  const path = join(dataDir, CLUSTER_KEY_FILE);
  const text = readFileNoFollow(path);
  if (text !== undefined) {
    const key = Buffer.from(text.trim(), "hex");
    if (key.length !== 32) throw new MeziteError("ERR_CONFIG", `${path} is corrupt: it must hold 64 hex characters`);
    return key;
  }
  if (!create) return undefined;
  const key = randomBytes(32);
  writeFileAtomic(path, key.toString("hex") + "\n", 0o600);
  return key;
}

function seal(clusterKey: Buffer, plain: Buffer, aad: string): string {
  const iv = randomBytes(12);
  const c = createCipheriv("aes-256-gcm", clusterKey, iv);
  c.setAAD(Buffer.from(aad));
  const body = Buffer.concat([c.update(plain), c.final()]);
  return Buffer.concat([iv, c.getAuthTag(), body]).toString("base64");
}

function unseal(clusterKey: Buffer, sealed: string, aad: string): Buffer {
  const raw = Buffer.from(sealed, "base64");
  const d = createDecipheriv("aes-256-gcm", clusterKey, raw.subarray(0, 12));
  d.setAAD(Buffer.from(aad));
  d.setAuthTag(raw.subarray(12, 28));
  try {
    return Buffer.concat([d.update(raw.subarray(28)), d.final()]);
  } catch (e) {
    throw new MeziteError(
      "ERR_CONFIG",
      "the CA keys in this backend were sealed with another cluster key: copy cluster.key from the data dir of the auth service that created the cluster",
      { cause: e },
    );
  }
}

/**
 * A new key pair for a CA. A rotation's key gets a subject of its own (the date it was made), so
 * TLS stacks looking up an issuer by name never confuse the two certificates trusted side by side.
 */
export async function createCaKeys(kind: CaKind, clusterName: string, clusterKey: Buffer, now: number, rotated = false): Promise<StoredKeys> {
  const sshPrivate = generateEd25519();
  const ssh = { privateKey: sshPrivate, publicKey: createPublicKey(sshPrivate) };
  const x509 = generateP256();
  const stamp = rotated ? ` ${new Date(now).toISOString().slice(0, 19).replace(/[-:T]/g, "")}` : "";
  const certPem = await createCaCertificate({
    commonName: `${clusterName} ${kind} CA${stamp}`,
    organization: clusterName,
    keys: x509,
    notBefore: new Date(now - 60_000),
    notAfter: new Date(now + CA_VALIDITY_MS),
  });
  const der = (k: KeyObject) => k.export({ format: "der", type: "pkcs8" });
  return {
    ssh_public: formatAuthorizedKey(ssh.publicKey, `${clusterName} ${kind} CA${stamp}`),
    ssh_private_sealed: seal(clusterKey, der(ssh.privateKey), `${kind}/ssh`),
    x509_cert_pem: certPem,
    x509_key_sealed: seal(clusterKey, der(x509.privateKey), `${kind}/x509`),
  };
}

/**
 * A key pair from its sealed form. What nodes and agents are told to trust is derived from the
 * unsealed keys, never taken from the stored copies: a database writer without the cluster key
 * could otherwise swap in a public key of its own. The stored X.509 certificate must hold the
 * unsealed key.
 */
function openKeys(kind: CaKind, stored: StoredKeys, clusterKey: Buffer): CaKeys {
  const pk = (sealed: string, aad: string) => createPrivateKey({ key: unseal(clusterKey, sealed, aad), format: "der", type: "pkcs8" });
  const sshPrivate = pk(stored.ssh_private_sealed, `${kind}/ssh`);
  const sshPublic = createPublicKey(sshPrivate);
  const x509Key = pk(stored.x509_key_sealed, `${kind}/x509`);
  const jwk = (k: KeyObject) => JSON.stringify((k.type === "public" ? k : createPublicKey(k)).export({ format: "jwk" }));
  let certKey: string | undefined;
  try {
    certKey = jwk(parseCertificatePem(stored.x509_cert_pem).publicKey);
  } catch {
    certKey = undefined;
  }
  if (certKey !== jwk(x509Key)) {
    throw new MeziteError("ERR_CONFIG", `the stored ${caName(kind)} certificate does not hold the CA's sealed key: the backend was altered; restore it from a backup`);
  }
  const comment = stored.ssh_public.split(" ").slice(2).join(" ");
  return {
    sshPrivate,
    sshPublic,
    sshPublicLine: formatAuthorizedKey(sshPublic, comment),
    sshFingerprint: sshFingerprint(sshPublic),
    x509CertPem: stored.x509_cert_pem,
    x509Key,
    x509Cert: new X509Certificate(stored.x509_cert_pem),
  };
}

/**
 * Unsealing costs a few ms and services reload the CAs on every phase change: a key pair seen
 * before is reused while its sealed form (and the cluster key that unsealed it) is the same.
 */
const opened = new Map<string, CaKeys>();

function openCached(kind: CaKind, stored: StoredKeys, clusterKey: Buffer): CaKeys {
  const id = `${kind}\0${clusterKey.toString("hex")}\0${stored.ssh_private_sealed}\0${stored.x509_key_sealed}\0${stored.x509_cert_pem}`;
  let keys = opened.get(id);
  if (!keys) {
    keys = openKeys(kind, stored, clusterKey);
    if (opened.size >= 16) opened.clear();
    opened.set(id, keys);
  }
  return keys;
}

export function openCa(stored: StoredCa, revision: string, clusterKey: Buffer): CertAuthority {
  const phase = stored.phase ?? "standby";
  if (!PHASES.includes(phase) || (phase !== "standby") !== (stored.next !== undefined)) {
    throw new MeziteError("ERR_CONFIG", `the stored ${caName(stored.kind)} record is inconsistent (phase ${String(phase).slice(0, 20)}): restore the backend from a backup`);
  }
  const current = openCached(stored.kind, stored, clusterKey);
  const next = stored.next && openCached(stored.kind, stored.next, clusterKey);
  const signer = next && signsWithNext(phase) ? next : current;
  const other = signer === current ? next : current;
  return {
    ...signer,
    kind: stored.kind,
    phase,
    trusted: other ? [signer, other] : [signer],
    current,
    next,
    server: next && serverSignsWithNext(phase) ? next : current,
    rotation: stored.rotation,
    lastRotated: stored.last_rotated,
    spreadMs: stored.spread_ms ?? 0,
    revision,
  };
}

const RETIRED_FILE = "retired-ca-keys";

/**
 * The CA keys this service has seen retired (a rotation done, or a rollback's new key dropped),
 * kept in the data dir beside cluster.key, where a database backup cannot undo it: a backend
 * restored from before a rotation brings its retired key back, and the service refuses to sign
 * with it. A list of fingerprints rather than a rotation counter: it names the very key and
 * when it went, and a restore of a backup taken after the last rotation is not refused.
 * One line per key: "KIND FINGERPRINT RETIRED-AT".
 */
export class RetiredKeys {
  constructor(readonly path: string) {}

  private read(): Map<string, string> {
    const out = new Map<string, string>();
    for (const line of (readFileNoFollow(this.path) ?? "").split("\n")) {
      const [kind, fingerprint, at] = line.trim().split(" ");
      if (kind && fingerprint) out.set(`${kind} ${fingerprint}`, at ?? "");
    }
    return out;
  }

  /** Throws when a key of `ca` was retired before. */
  check(ca: CertAuthority): void {
    const retired = this.read();
    for (const k of ca.trusted) {
      const at = retired.get(`${ca.kind} ${k.sshFingerprint}`);
      if (at === undefined) continue;
      throw new MeziteError(
        "ERR_CONFIG",
        `the backend's ${caName(ca.kind)} key ${k.sshFingerprint} was retired at ${at || "an earlier rotation"} (${this.path}): the database was restored from a backup older than that rotation, and that key is never used again; restore a newer backup`,
      );
    }
  }

  /** Records every key `before` trusted that `after` no longer does. */
  retire(before: CertAuthority, after: CertAuthority, now: number): void {
    const gone = before.trusted.filter((k) => !after.trusted.some((a) => a.sshFingerprint === k.sshFingerprint));
    if (gone.length === 0) return;
    const retired = this.read();
    for (const k of gone) retired.set(`${before.kind} ${k.sshFingerprint}`, new Date(now).toISOString());
    writeFileAtomic(this.path, [...retired].map(([key, at]) => `${key} ${at}\n`).join(""), 0o600);
  }
}

/**
 * The CAs in the backend, for one auth service: opens them, notices when another service changed
 * them (a rotation's phase), and changes them by compare-and-swap. Keys this service saw retired
 * are refused (RetiredKeys).
 */
export class CaStore {
  constructor(
    readonly backend: Backend,
    readonly clusterKey: Buffer,
    readonly clusterName: string,
    readonly retired?: RetiredKeys,
  ) {}

  async load(kind: CaKind): Promise<{ ca: CertAuthority; stored: StoredCa }> {
    const found = await load<StoredCa>(this.backend, keys.ca(kind));
    if (!found) throw new MeziteError("ERR_CONFIG", `the ${caName(kind)} is missing from the backend: restore it from a backup`);
    const ca = openCa(found.value, found.revision, this.clusterKey);
    this.retired?.check(ca);
    return { ca, stored: found.value };
  }

  async loadAll(): Promise<ClusterCas> {
    const [user, host] = await Promise.all([this.load("user"), this.load("host")]);
    return { user: user.ca, host: host.ca };
  }

  /** The CAs as stored now, or undefined when neither record changed since `known`. */
  async reload(known: ClusterCas): Promise<ClusterCas | undefined> {
    const [user, host] = await Promise.all(CA_KINDS.map((k) => this.backend.get(keys.ca(k))));
    if (user?.revision === known.user.revision && host?.revision === known.host.revision) return undefined;
    return this.loadAll();
  }

  /** Replaces a CA record if it is still at `revision`; throws ERR_COMPARE_FAILED otherwise. */
  async swap(kind: CaKind, revision: string, next: StoredCa): Promise<CertAuthority> {
    const item = await this.backend.compareAndSwap(keys.ca(kind), revision, encode(next));
    return openCa(next, item.revision, this.clusterKey);
  }

  /** Records the keys a change from `before` to `after` retired (every service, for the change it sees). */
  noteRetired(before: ClusterCas, after: ClusterCas, now: number): void {
    for (const kind of CA_KINDS) this.retired?.retire(before[kind], after[kind], now);
  }
}

/**
 * Loads the CAs, creating them on the first start of a cluster. Two services starting at once
 * against one database agree: creation is create-if-absent, and the loser loads the winner's.
 */
export async function openCaStore(backend: Backend, dataDir: string, clusterName: string, now: number): Promise<{ store: CaStore; cas: ClusterCas }> {
  const existing = await load<StoredCa>(backend, keys.ca("user"));
  const clusterKey = loadClusterKey(dataDir, existing === undefined);
  if (clusterKey === undefined) {
    throw new MeziteError(
      "ERR_CONFIG",
      `this backend already holds a cluster's CAs but ${join(dataDir, CLUSTER_KEY_FILE)} is missing: copy it from the auth service that created the cluster`,
    );
  }
  for (const kind of CA_KINDS) {
    if (await backend.get(keys.ca(kind))) continue;
    const fresh: StoredCa = { kind, ...(await createCaKeys(kind, clusterName, clusterKey, now)) };
    try {
      await backend.create(keys.ca(kind), encode(fresh));
    } catch (e) {
      if (!isMeziteError(e, "ERR_ALREADY_EXISTS")) throw e;
    }
  }
  const store = new CaStore(backend, clusterKey, clusterName, new RetiredKeys(join(dataDir, RETIRED_FILE)));
  return { store, cas: await store.loadAll() };
}

/** What a verifier trusts, as text: every trusted key's line or certificate, the signing one first. */
export const trustedSshLines = (ca: CertAuthority): string[] => ca.trusted.map((k) => k.sshPublicLine);
export const trustedX509Pems = (ca: CertAuthority): string[] => ca.trusted.map((k) => k.x509CertPem);
/** The TLS CA bundle clients verify the auth service against: every trusted Host CA certificate. */
export const tlsCaBundle = (cas: ClusterCas): string => trustedX509Pems(cas.host).join("");

/**
 * A short digest of what daemons (both CAs) or nodes (the Host CA alone: a User CA rotation
 * reaches them as user_ca.pub) hold from the CAs: phases, signing and trusted keys. Each issue
 * carries it; a daemon or node that polls and sees another renews.
 */
export function caState(cas: ClusterCas, kinds: readonly CaKind[] = CA_KINDS): string {
  const h = createHash("sha256");
  for (const kind of kinds) h.update(`${kind} ${cas[kind].phase} ${cas[kind].trusted.map((k) => k.sshFingerprint).join(",")}\n`);
  return h.digest("hex").slice(0, 32);
}

/** Each CA's own state (caState of that CA alone): what the service records of who holds what. */
export type CaStates = Partial<Record<CaKind, string>>;
export const caStatesOf = (cas: ClusterCas, kinds: readonly CaKind[] = CA_KINDS): CaStates => Object.fromEntries(kinds.map((k) => [k, caState(cas, [k])]));

/** Every trusted Host CA key's TLS pin, the one signing the service's certificate first. */
export function hostCaPins(cas: ClusterCas): string[] {
  const server = caPin(cas.host.server.x509CertPem);
  return [server, ...cas.host.trusted.map((k) => caPin(k.x509CertPem)).filter((p) => p !== server)];
}

/** What a node's ca_state covers. */
export const NODE_CA_KINDS: readonly CaKind[] = ["host"];

/**
 * The cluster's two certificate authorities. Each has an Ed25519 SSH key and an ECDSA P-256
 * X.509 certificate. They live in the backend, so every auth service on one database signs with
 * the same keys, but the private keys are sealed (AES-256-GCM) under the cluster key kept in the
 * data dir: a database dump alone cannot sign anything.
 */
import { createCipheriv, createDecipheriv, createPrivateKey, createPublicKey, generateKeyPairSync, randomBytes, type KeyObject } from "node:crypto";
import { join } from "node:path";
import type { Backend } from "../backend/backend.js";
import { formatAuthorizedKey } from "../ca/sshkey.js";
import { createCaCertificate, generateP256, parseCertificatePem } from "../ca/x509.js";
import { MeziteError, isMeziteError } from "../lib/errors.js";
import { readFileNoFollow, writeFileAtomic } from "../lib/files.js";
import { encode, keys, load } from "./records.js";

export type CaKind = "user" | "host";

export interface CertAuthority {
  kind: CaKind;
  sshPrivate: KeyObject;
  sshPublic: KeyObject;
  /** authorized_keys line of the SSH key. */
  sshPublicLine: string;
  x509CertPem: string;
  x509Key: KeyObject;
}

export interface ClusterCas {
  user: CertAuthority;
  host: CertAuthority;
}

interface StoredCa {
  kind: CaKind;
  ssh_public: string;
  ssh_private_sealed: string;
  x509_cert_pem: string;
  x509_key_sealed: string;
}

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

async function createCa(kind: CaKind, clusterName: string, clusterKey: Buffer, now: number): Promise<StoredCa> {
  const ssh = generateKeyPairSync("ed25519");
  const x509 = generateP256();
  const certPem = await createCaCertificate({
    commonName: `${clusterName} ${kind} CA`,
    organization: clusterName,
    keys: x509,
    notBefore: new Date(now - 60_000),
    notAfter: new Date(now + CA_VALIDITY_MS),
  });
  const der = (k: KeyObject) => k.export({ format: "der", type: "pkcs8" });
  return {
    kind,
    ssh_public: formatAuthorizedKey(ssh.publicKey, `${clusterName} ${kind} CA`),
    ssh_private_sealed: seal(clusterKey, der(ssh.privateKey), `${kind}/ssh`),
    x509_cert_pem: certPem,
    x509_key_sealed: seal(clusterKey, der(x509.privateKey), `${kind}/x509`),
  };
}

/**
 * The CA from its sealed keys. What nodes and agents are told to trust is derived from the
 * unsealed keys, never taken from the stored copies: a database writer without the cluster key
 * could otherwise swap in a public key of its own. The stored X.509 certificate must hold the
 * unsealed key.
 */
function open(stored: StoredCa, clusterKey: Buffer): CertAuthority {
  const pk = (sealed: string, aad: string) => createPrivateKey({ key: unseal(clusterKey, sealed, aad), format: "der", type: "pkcs8" });
  const sshPrivate = pk(stored.ssh_private_sealed, `${stored.kind}/ssh`);
  const sshPublic = createPublicKey(sshPrivate);
  const x509Key = pk(stored.x509_key_sealed, `${stored.kind}/x509`);
  const jwk = (k: KeyObject) => JSON.stringify((k.type === "public" ? k : createPublicKey(k)).export({ format: "jwk" }));
  let certKey: string | undefined;
  try {
    certKey = jwk(parseCertificatePem(stored.x509_cert_pem).publicKey);
  } catch {
    certKey = undefined;
  }
  if (certKey !== jwk(x509Key)) {
    throw new MeziteError("ERR_CONFIG", `the stored ${stored.kind} CA certificate does not hold the CA's sealed key: the backend was altered; restore it from a backup`);
  }
  const comment = stored.ssh_public.split(" ").slice(2).join(" ");
  return {
    kind: stored.kind,
    sshPrivate,
    sshPublic,
    sshPublicLine: formatAuthorizedKey(sshPublic, comment),
    x509CertPem: stored.x509_cert_pem,
    x509Key,
  };
}

/**
 * Loads the CAs, creating them on the first start of a cluster. Two services starting at once
 * against one database agree: creation is create-if-absent, and the loser loads the winner's.
 */
export async function loadOrCreateCas(backend: Backend, dataDir: string, clusterName: string, now: number): Promise<ClusterCas> {
  const existing = await load<StoredCa>(backend, keys.ca("user"));
  const clusterKey = loadClusterKey(dataDir, existing === undefined);
  if (clusterKey === undefined) {
    throw new MeziteError(
      "ERR_CONFIG",
      `this backend already holds a cluster's CAs but ${join(dataDir, CLUSTER_KEY_FILE)} is missing: copy it from the auth service that created the cluster`,
    );
  }
  const get = async (kind: CaKind): Promise<CertAuthority> => {
    const found = await load<StoredCa>(backend, keys.ca(kind));
    if (found) return open(found.value, clusterKey);
    const fresh = await createCa(kind, clusterName, clusterKey, now);
    try {
      await backend.create(keys.ca(kind), encode(fresh));
      return open(fresh, clusterKey);
    } catch (e) {
      if (!isMeziteError(e, "ERR_ALREADY_EXISTS")) throw e;
      const winner = await load<StoredCa>(backend, keys.ca(kind));
      return open(winner!.value, clusterKey);
    }
  };
  return { user: await get("user"), host: await get("host") };
}

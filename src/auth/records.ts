/**
 * The auth service's records and where they live in the backend. Values are JSON; every
 * read-modify-write goes through the backend's compare-and-swap on the item's revision.
 */
import type { Backend, FieldRangeOptions, Item } from "../backend/backend.js";
import type { Role } from "../rbac/role.js";
import type { CaStates } from "./cas.js";
import { MeziteError, isMeziteError } from "../lib/errors.js";

export interface IdentityRecord {
  id: string;
  name: string;
  roles: string[];
  created: number;
}

/**
 * The last renewal answered, so a retry of the very same request gets the very same reply. The
 * reply itself (~6 KB of certificates) is a record of its own, keys.reply(instance's serial):
 * instance records stay small for listings and every renewal's read-modify-write.
 */
export interface LastRequest {
  id: string; // hex request id
  keysHash: string; // hex SHA-256 over the public keys of the request
  fromGeneration: string; // generation the request presented
}

export interface InstanceRecord {
  id: string;
  identityId: string;
  identityName: string;
  generation: string; // bigint as decimal
  created: number;
  lastSeen: number;
  address: string;
  certExpires: number;
  serial: string;
  lastRequest?: LastRequest;
  /** Set for ID-token joins (github, gitlab, oidc): such an instance leaves the store with its certificate. */
  joinMethod?: string;
  /** What the ID token said of who joined (join-methods.ts RECORDED_CLAIMS). */
  claims?: Record<string, string>;
  /** The join token resource an ID-token join came in under. */
  joinToken?: string;
  /** Fingerprint of the User CA key that signed the last certificates (a rotation's progress). */
  userCaKey?: string;
  /** The CA state of each CA the instance holds (issued or reported): who is behind a rotation. */
  caStates?: CaStates;
  /** What the daemon said of its machine at its last join or renewal (validate.ts hostFacts). */
  host?: StoredHostFacts;
}

export interface StoredHostFacts {
  hostName: string;
  os: string;
  arch: string;
  version: string;
}

export interface TokenRecord {
  id: string;
  type: "agent_identity" | "node";
  identityId?: string;
  identityName?: string;
  labels?: Record<string, string>;
  /** A node token made with --replace=NAME: it may take over that node's name and principals. */
  replaces?: string;
  verifyKey: string; // base64 raw Ed25519 public key
  macKey: string; // base64; lets the server prove replies, not join
  created: number;
  expires: number;
  used: boolean;
  usedAt?: number;
}

/** Tokens are kept a day past expiry, so `status` can say "expired" (or "used") rather than forget them. */
export const tokenKeptUntil = (t: TokenRecord): number => t.expires + 24 * 3_600_000;

export type LockKind = "agent_identity" | "instance" | "role" | "login";
export const LOCK_KINDS: LockKind[] = ["agent_identity", "instance", "role", "login"];

export interface LockRecord {
  id: string;
  kind: LockKind;
  target: string;
  reason: string;
  created: number;
  expires: number; // 0 = until removed
}

export interface NodeRecord {
  /** Unique per join: the node certificate carries it, so a removed or replaced node's is dead. */
  id: string;
  name: string;
  /** From the node's token alone; nothing the node sends changes them. */
  labels: Record<string, string>;
  principals: string[];
  /** The host key certified at join (authorized_keys form); renewals keep it. */
  hostKey: string;
  address: string;
  lastHeartbeat: number;
  /** The expiry of the host certificate the node last reported holding (for `nodes ls`). */
  hostCertExpires: number;
  /**
   * The latest expiry of any host certificate the service issued for this node, set at issuance
   * alone: how long its host key stays revoked after `nodes rm` or a replacement. Absent in
   * records written before it existed.
   */
  hostCertsIssuedUntil?: number;
  joined: number;
  /** Fingerprint of the Host CA key that signed the last host certificate (a rotation's progress). */
  hostCaKey?: string;
  /** The CA state of each CA the node holds (issued or reported): who is behind a rotation. */
  caStates?: CaStates;
}

/**
 * Instances made by ID-token joins (each CI run is one) leave the store when their certificates
 * expire, so a fleet of runs does not pile up; each renewal moves the expiry on. Token-joined
 * instances stay until removed.
 */
export function instanceExpiry(inst: InstanceRecord): { expires?: number } {
  return inst.joinMethod !== undefined ? { expires: inst.certExpires } : {};
}

/** Who holds a node name or extra principal (lower case): a claim is live while its node is. */
export interface NodeClaim {
  nodeId: string;
  node: string;
}

/** Every SSH user certificate issued, kept until it expires, so nodes can be told to revoke it. */
export interface IssuedCertRecord {
  serial: string;
  identityId: string;
  identityName: string;
  instanceId: string;
  roles: string[];
  principals: string[];
  expires: number;
}

export interface StoredRole extends Role {
  created: number;
}

export const keys = {
  role: (name: string) => `/roles/${name}`,
  roles: "/roles/",
  identity: (name: string) => `/identities/${name}`,
  identities: "/identities/",
  instance: (identityId: string, id: string) => `/instances/${identityId}/${id}`,
  instancesOf: (identityId: string) => `/instances/${identityId}/`,
  instances: "/instances/",
  token: (id: string) => `/tokens/${id}`,
  tokens: "/tokens/",
  lock: (id: string) => `/locks/${id}`,
  locks: "/locks/",
  node: (name: string) => `/nodes/${name}`,
  nodes: "/nodes/",
  /** Names and principals are case-insensitive, as DNS names are. */
  nodeClaim: (principal: string) => `/node-claims/${principal.toLowerCase()}`,
  /** A removed or replaced node's host key, kept until its last host certificate expires. */
  revokedHostKey: (nodeId: string) => `/revoked-host-keys/${nodeId}`,
  revokedHostKeys: "/revoked-host-keys/",
  /** Under its instance: deleting or locking an instance revokes exactly this range. */
  cert: (instanceId: string, serial: string) => `/certs/${instanceId}/${serial}`,
  certsOf: (instanceId: string) => `/certs/${instanceId}/`,
  certs: "/certs/",
  /** A deleted instance whose certificates are not all expired yet: they stay in the KRL. */
  revokedInstance: (instanceId: string) => `/revoked-instances/${instanceId}`,
  revokedInstances: "/revoked-instances/",
  /** A certificate issued while a lock that catches it was being made: in the KRL until it expires. */
  revokedCert: (serial: string) => `/revoked-certs/${serial}`,
  revokedCerts: "/revoked-certs/",
  /**
   * A random value written after every change the KRL is built from (a tombstone, a serial revoked,
   * a lock made or removed): services rebuild it only when this moved or an entry expired.
   */
  revocationsChanged: "/revocations-changed",
  /** The reply that issued certificate SERIAL: base64 binary IssuedCertificates, kept until it expires. */
  reply: (serial: string) => `/replies/${serial}`,
  /** Index: the tokens of an identity, so its status reads its own tokens, not everyone's. */
  identityToken: (identityId: string, tokenId: string) => `/identity-tokens/${identityId}/${tokenId}`,
  identityTokens: (identityId: string) => `/identity-tokens/${identityId}/`,
  ca: (kind: "user" | "host") => `/cas/${kind}`,
  /** Join token resources (join-methods.ts). */
  joinToken: (name: string) => `/join-tokens/${name}`,
  joinTokens: "/join-tokens/",
  /** An ID token that joined, by id-tokens.ts's use key: kept until the token expires, so it joins once. */
  usedIdToken: (useKey: string) => `/used-id-tokens/${useKey}`,
  /** The cluster's name, set by its first auth service (cluster.ts). */
  clusterName: "/cluster/name",
  /** Admin certificates issued before this instant (unix ms) are refused (admin-cert.ts). */
  adminRevokedBefore: "/cluster/admin-revoked-before",
  audit: "/audit/",
  /** Index: the audit event (its key) of the join or renewal that issued SSH certificate SERIAL. */
  auditSerial: (serial: string) => `/audit-serials/${serial}`,
  /** The dashboard (src/web/sessions.ts): sign-in links and sessions, each by the SHA-256 of its secret. */
  webSignIn: (hash: string) => `/web-sign-ins/${hash}`,
  webSession: (hash: string) => `/web-sessions/${hash}`,
};

export interface Loaded<T> {
  value: T;
  revision: string;
}

/** A stored record's value; a record that is not JSON is a storage error naming its key. */
export function decode<T>(item: Item): T {
  try {
    return JSON.parse(item.value) as T;
  } catch (e) {
    throw new MeziteError("ERR_STORAGE", `stored record ${item.key} is not valid JSON`, { cause: e });
  }
}

export async function load<T>(backend: Backend, key: string): Promise<Loaded<T> | undefined> {
  const item = await backend.get(key);
  return item ? { value: decode<T>(item), revision: item.revision } : undefined;
}

export async function loadAll<T>(backend: Backend, prefix: string): Promise<Loaded<T>[]> {
  return (await backend.range(prefix)).map((item) => ({ value: decode<T>(item), revision: item.revision }));
}

export const encode = (v: unknown): string => JSON.stringify(v);

/**
 * `mezctl create -f`: stores a named resource, refusing one that exists unless `force`, which
 * replaces it. Returns whether one was replaced.
 */
export async function createResource(backend: Backend, key: string, value: unknown, force: boolean, exists: () => MeziteError): Promise<boolean> {
  if (force) {
    const replaced = (await backend.get(key)) !== undefined;
    await backend.put(key, encode(value));
    return replaced;
  }
  try {
    await backend.create(key, encode(value));
    return false;
  } catch (e) {
    if (isMeziteError(e, "ERR_ALREADY_EXISTS")) throw exists();
    throw e;
  }
}

const CHUNK = 2000;

/** A range read in chunks of items, so a scan over a large fleet never holds the event loop for long. */
export function rangeChunks(backend: Backend, prefix: string, chunk = CHUNK): AsyncGenerator<Item[]> {
  return chunked((opts) => backend.range(prefix, opts), chunk);
}

/**
 * Records under `prefix` in chunks, with only `fields` read (Backend.rangeFields), each made by
 * `make` from the fields' values (null where absent): for a listing over a large fleet that shows
 * a few fields of big records.
 */
export async function* loadFieldChunks<R>(backend: Backend, prefix: string, fields: readonly string[], make: (values: unknown[]) => R): AsyncGenerator<R[]> {
  for await (const rows of chunked((opts) => backend.rangeFields(prefix, fields, opts), CHUNK)) yield rows.map((row) => make(row.fields));
}

async function* chunked<R extends { key: string }>(read: (opts: FieldRangeOptions) => Promise<R[]>, chunk: number): AsyncGenerator<R[]> {
  for (let after: string | undefined; ; ) {
    const rows = await read(after === undefined ? { limit: chunk } : { limit: chunk, startAfter: after });
    if (rows.length > 0) yield rows;
    if (rows.length < chunk) return;
    after = rows[rows.length - 1]!.key;
  }
}

/** rangeChunks, decoded. */
export async function* loadChunks<T>(backend: Backend, prefix: string): AsyncGenerator<T[]> {
  for await (const items of rangeChunks(backend, prefix)) yield items.map((i) => decode<T>(i));
}

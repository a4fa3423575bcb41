/**
 * The node's ssh dir (SPEC §7): what `mezd node join` writes, `mezd node start` keeps current and
 * `mezd node principals` reads. sshd as root reads the keys; the principals command runs as an
 * unprivileged user, so everything it reads is world-readable and holds no secret, and the two
 * private keys alone are 0600. Kept free of heavy imports: the principals command loads it.
 */
import { join } from "node:path";
import { MeziteError } from "../lib/errors.js";
import { readFileNoFollow, writeFileAtomic } from "../lib/files.js";

export const FILES = {
  hostKey: "ssh_host_ed25519_key",
  hostCert: "ssh_host_ed25519_key-cert.pub",
  userCa: "user_ca.pub",
  krl: "revoked.krl",
  /** The locks the principals command checks itself, written next to the KRL by `node start`. */
  locks: "revoked_locks.json",
  node: "node.json",
  /** The node's mTLS certificate and key in one file, so a renewal replaces both at once. 0600. */
  tls: "node_tls.json",
  sshdConfig: "sshd_config",
} as const;

export const SECRET_MODE = 0o600;
export const PUBLIC_MODE = 0o644;
/** The dir must be traversable by the principals command's unprivileged user. */
export const DIR_MODE = 0o755;

/** node.json: who this node is and how it reaches the auth service. Public, 0644. */
export interface NodeConfig {
  version: 1;
  name: string;
  labels: Record<string, string>;
  principals: string[];
  auth_server: string;
  /** The CAs the auth service's TLS certificate may chain to (PEM bundle), pinned at join and kept current by renewals. */
  tls_ca_pem: string;
  host_ca_ssh_keys: string[];
  /** Unix ms. */
  host_cert_expires: number;
  /** The CA state (rotation phases) the last host certificate was issued in; absent before rotations existed. */
  ca_state?: string;
}

/** revoked_locks.json: what GetRevocations said is locked. Public, 0644. */
export interface LockState {
  version: 1;
  identity_ids: string[];
  instance_ids: string[];
  roles: string[];
  logins: string[];
}

export const NO_LOCKS: LockState = { version: 1, identity_ids: [], instance_ids: [], roles: [], logins: [] };

export const pathOf = (dir: string, file: keyof typeof FILES): string => join(dir, FILES[file]);

const corrupt = (path: string, why: string) =>
  new MeziteError("ERR_STATE_CORRUPT", `${path} ${why}: run mezd node join again with a new node token`);

function readJson(path: string): unknown {
  const text = readFileNoFollow(path);
  if (text === undefined) throw corrupt(path, "is missing");
  try {
    return JSON.parse(text);
  } catch {
    throw corrupt(path, "is not valid JSON");
  }
}

const isStrings = (v: unknown): v is string[] => Array.isArray(v) && v.every((s) => typeof s === "string");
const isStringMap = (v: unknown): v is Record<string, string> =>
  typeof v === "object" && v !== null && !Array.isArray(v) && Object.values(v).every((s) => typeof s === "string");

export function readNodeConfig(dir: string): NodeConfig {
  const path = pathOf(dir, "node");
  const c = readJson(path) as Partial<NodeConfig> | null;
  const ok =
    c !== null && typeof c === "object" && c.version === 1 && typeof c.name === "string" && isStringMap(c.labels) && isStrings(c.principals) &&
    typeof c.auth_server === "string" && typeof c.tls_ca_pem === "string" &&
    isStrings(c.host_ca_ssh_keys) && typeof c.host_cert_expires === "number";
  if (!ok) throw corrupt(path, "does not hold a node configuration");
  return c as NodeConfig;
}

export function writeNodeConfig(dir: string, c: NodeConfig): void {
  writeFileAtomic(pathOf(dir, "node"), `${JSON.stringify(c, null, 2)}\n`, PUBLIC_MODE);
}

export interface NodeTls {
  cert_pem: string;
  key_pem: string;
}

export function readNodeTls(dir: string): NodeTls {
  const path = pathOf(dir, "tls");
  const t = readJson(path) as Partial<NodeTls> | null;
  if (typeof t?.cert_pem !== "string" || typeof t.key_pem !== "string") throw corrupt(path, "does not hold the node's TLS certificate and key");
  return t as NodeTls;
}

export function writeNodeTls(dir: string, t: NodeTls): void {
  writeFileAtomic(pathOf(dir, "tls"), `${JSON.stringify(t)}\n`, SECRET_MODE);
}

/** A missing or unreadable lock file is an error: the caller fails closed, as sshd does for a KRL. */
export function readLockState(dir: string): LockState {
  const path = pathOf(dir, "locks");
  const s = readJson(path) as Partial<LockState> | null;
  const ok = s !== null && typeof s === "object" && s.version === 1 && isStrings(s.identity_ids) && isStrings(s.instance_ids) && isStrings(s.roles) && isStrings(s.logins);
  if (!ok) throw corrupt(path, "does not hold a lock list");
  return s as LockState;
}

export function formatLockState(s: LockState): string {
  const sorted = (a: string[]) => [...new Set(a)].sort();
  const norm: LockState = { version: 1, identity_ids: sorted(s.identity_ids), instance_ids: sorted(s.instance_ids), roles: sorted(s.roles), logins: sorted(s.logins) };
  return `${JSON.stringify(norm)}\n`;
}

/** User CA keys, one authorized_keys line each (every trusted CA during a rotation). */
export function formatUserCaKeys(lines: string[]): string {
  return lines.map((l) => `${l.trim()}\n`).join("");
}

/**
 * Paths go into sshd_config unquoted and into a command line where sshd expands %-tokens, so a
 * path with whitespace, quotes, '%' or '#' is refused rather than written subtly wrong.
 */
export function checkConfigPath(path: string, what: string): void {
  if (!path.startsWith("/") || /[\s"'%#\\]/.test(path)) {
    throw new MeziteError("ERR_USAGE", `${what} ${JSON.stringify(path)} must be an absolute path without spaces, quotes, '%', '#' or '\\' (it goes into sshd_config)`);
  }
}

/**
 * The snippet an sshd running as root includes. sshd keeps the first value of a keyword, so the
 * Include belongs near the top of sshd_config, before any Match block.
 */
export function renderSshdConfig(dir: string, mezdPath: string, principalsUser: string): string {
  checkConfigPath(dir, "--ssh-dir");
  checkConfigPath(mezdPath, "the mezd binary");
  return [
    "# Written by `mezd node join`: this node's host certificate, the cluster's User CA, its",
    "# revocation list, and the command that checks a certificate's roles against this node's",
    `# labels. Include it near the top of sshd_config (before any Match block):`,
    `#   Include ${join(dir, FILES.sshdConfig)}`,
    `HostKey ${join(dir, FILES.hostKey)}`,
    `HostCertificate ${join(dir, FILES.hostCert)}`,
    `TrustedUserCAKeys ${join(dir, FILES.userCa)}`,
    `RevokedKeys ${join(dir, FILES.krl)}`,
    `AuthorizedPrincipalsCommand ${mezdPath} node principals --ssh-dir=${dir} %u %k`,
    `AuthorizedPrincipalsCommandUser ${principalsUser}`,
    "",
  ].join("\n");
}

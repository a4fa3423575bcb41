/**
 * An agent identity's destination dir as msh reads it (SPEC §6 outputs): who the certificate
 * says the identity is, its roles and logins, and how long it has left. Read only: msh never
 * writes the dir and never uses the daemon's storage (its renewal key); `msh release` alone
 * removes both once the instance has ended (identity/release.ts).
 */
import { existsSync, readFileSync } from "node:fs";
import { isAbsolute, join, resolve } from "node:path";
import { CERT_EXTENSIONS } from "../api/cert-extensions.js";
import { parseSshCertificate } from "../ca/sshcert.js";
import { MeziteError } from "../lib/errors.js";
import { unwritableInSshConfig } from "../identity/options.js";
import { configPath } from "../identity/outputs.js";
import type { RoleAccess } from "../rbac/access.js";

export interface IdentityDir {
  dir: string;
  /** From the certificate's mezite-identity@mezite extension. */
  identity: { name: string; id: string; instance: string };
  roles: string[];
  /** The logins (certificate principals). */
  principals: string[];
  serial: bigint;
  keyId: string;
  validAfterMs: number;
  validBeforeMs: number;
  /** IdentityAgent from DIR/ssh_config, when the daemon serves the key over an agent socket. */
  agentSocket: string | undefined;
  /** Per-role node rules the certificate carries. */
  access: RoleAccess[];
}

export function usage(message: string): MeziteError {
  return new MeziteError("ERR_USAGE", message);
}

/** --identity-dir, or $MEZITE_IDENTITY_DIR; made absolute. */
export function identityDirOption(value: string | undefined): string {
  const v = value ?? (process.env["MEZITE_IDENTITY_DIR"] || undefined);
  if (v === undefined || v === "") throw usage("--identity-dir or $MEZITE_IDENTITY_DIR is required: the destination dir mezd identity writes, e.g. /var/lib/mezite-identity/NAME");
  return isAbsolute(v) ? v : resolve(v);
}

function readOutput(dir: string, name: string): string {
  try {
    return readFileSync(join(dir, name), "utf8");
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "ENOENT") {
      if (!existsSync(dir)) throw usage(`${dir} does not exist: pass the destination dir of mezd identity as --identity-dir (or $MEZITE_IDENTITY_DIR)`);
      throw new MeziteError("ERR_NOT_FOUND", `${join(dir, name)} is missing: has mezd identity written this dir yet?`);
    }
    if (code === "EACCES") throw new MeziteError("ERR_STORAGE", `cannot read ${join(dir, name)}: permission denied (run msh as the user mezd identity writes for)`);
    throw new MeziteError("ERR_STORAGE", `cannot read ${join(dir, name)}: ${(e as Error).message}`, { cause: e });
  }
}

/** IdentityAgent from an ssh_config the daemon wrote, if any: the path itself (outputs.ts's configPath undone). */
export function agentSocketFrom(sshConfig: string): string | undefined {
  const m = /^\s*IdentityAgent\s+("?)([^"\n]+)\1\s*$/im.exec(sshConfig);
  const v = m?.[2]?.trim();
  return v === undefined || v.toLowerCase() === "none" ? undefined : v.replace(/%%/g, "%");
}

/**
 * A path of this identity dir (or its agent socket) as an ssh option's or ssh_config's argument:
 * quoted when it holds blanks, % doubled (ssh expands %-tokens there); what ssh cannot be given
 * at all is refused with one line.
 */
export function sshPath(p: string): string {
  const why = unwritableInSshConfig(p);
  if (why !== undefined) throw usage(`${p} holds ${why}: ssh cannot be pointed at it; use an identity dir without it`);
  return configPath(p);
}

export function readIdentityDir(dirOption: string | undefined): IdentityDir {
  const dir = identityDirOption(dirOption);
  const certText = readOutput(dir, "ssh_cert");
  let cert;
  try {
    cert = parseSshCertificate(certText);
  } catch (e) {
    throw new MeziteError("ERR_MALFORMED_CERT", `${join(dir, "ssh_cert")} is not an SSH certificate: ${(e as Error).message}`, { cause: e });
  }
  const ext = cert.extensions;
  let identity: IdentityDir["identity"] | undefined;
  let access: RoleAccess[] = [];
  try {
    const id = JSON.parse(ext[CERT_EXTENSIONS.identity] ?? "null") as Record<string, unknown> | null;
    if (typeof id?.["name"] === "string" && typeof id["id"] === "string" && typeof id["instance"] === "string") identity = { name: id["name"], id: id["id"], instance: id["instance"] };
    access = JSON.parse(ext[CERT_EXTENSIONS.roleRules] ?? "[]") as RoleAccess[];
  } catch {
    identity = undefined;
  }
  if (identity === undefined) throw new MeziteError("ERR_MALFORMED_CERT", `${join(dir, "ssh_cert")} carries no Mezite agent identity: is this a mezd identity destination dir?`);
  let sshConfig = "";
  if (existsSync(join(dir, "ssh_config"))) sshConfig = readOutput(dir, "ssh_config");
  const roles = (ext[CERT_EXTENSIONS.roles] ?? "").split(",").filter(Boolean);
  return {
    dir,
    identity,
    roles,
    principals: cert.principals,
    serial: cert.serial,
    keyId: cert.keyId,
    validAfterMs: cert.validAfter * 1000,
    validBeforeMs: cert.validBefore === Infinity ? Infinity : cert.validBefore * 1000,
    agentSocket: agentSocketFrom(sshConfig),
    access,
  };
}

/** Refuses an expired certificate with a line that says what to check. */
export function requireValid(d: IdentityDir, now = Date.now()): void {
  if (d.validBeforeMs <= now) {
    const ago = Math.round((now - d.validBeforeMs) / 60_000);
    throw new MeziteError("ERR_CERT_EXPIRED", `the certificate in ${d.dir} expired ${ago < 1 ? "moments" : `${ago}m`} ago: is mezd identity running and able to renew?`);
  }
}

/**
 * ssh_config for this dir (msh config; msh ssh and scp use it through -F): the key, certificate
 * and known hosts, or the daemon's agent socket when its ssh_config names one.
 */
export function renderClientConfig(d: IdentityDir, o: { host?: string; user?: string } = {}): string {
  const f = (n: string) => sshPath(join(d.dir, n));
  return [
    `# msh config --identity-dir=${d.dir}: agent identity ${d.identity.name}; the files are replaced on every renewal`,
    `Host ${o.host ?? "*"}`,
    ...(o.user !== undefined ? [`    User ${o.user}`] : []),
    ...(d.agentSocket !== undefined ? [`    IdentityAgent ${sshPath(d.agentSocket)}`] : [`    IdentityFile ${f("ssh_key")}`]),
    `    CertificateFile ${f("ssh_cert")}`,
    `    UserKnownHostsFile ${f("ssh_known_hosts")}`,
    "    IdentitiesOnly yes",
    "    StrictHostKeyChecking yes",
    "",
  ].join("\n");
}

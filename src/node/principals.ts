/**
 * `mezd node principals --ssh-dir=DIR %u %k`, sshd's AuthorizedPrincipalsCommand (SPEC §7): prints
 * the login when the certificate's roles allow it on this node, nothing otherwise. It decides from
 * local files alone (works with the auth service down) and answers on every login, so it loads
 * only the certificate parser and role evaluation. It never fails loudly: any refusal, garbage
 * included, is empty output, exit 0 and one line on stderr for sshd's log.
 */
import type { KeyObject } from "node:crypto";
import { CERT_EXTENSIONS } from "../api/cert-extensions.js";
import { parseSshCertificate, verifySshCertificate, type SshCertificate } from "../ca/sshcert.js";
import { parseAuthorizedKey } from "../ca/sshkey.js";
import { readFileNoFollow } from "../lib/files.js";
import { canLogin, type LabelRule, type RoleAccess } from "../rbac/access.js";
import { pathOf, readLockState, readNodeConfig, type LockState } from "./layout.js";

const EXT = CERT_EXTENSIONS;

/** sshd's %k is one certificate; anything far larger is not one. */
const MAX_CERT_CHARS = 16_384;

export interface PrincipalsInput {
  login: string;
  /** sshd's %k: the certificate blob in base64. */
  cert: string;
  userCaKeys: KeyObject[];
  nodeLabels: Record<string, string>;
  locks: LockState;
  nowSeconds: number;
}

export type Decision = { allow: true } | { allow: false; reason: string; who?: string };

class Refusal extends Error {}
const refuse = (reason: string): never => {
  throw new Refusal(reason);
};

/** The whole decision, pure: tests freeze the clock here. */
export function decide(i: PrincipalsInput): Decision {
  let who: string | undefined;
  try {
    if (i.cert.length > MAX_CERT_CHARS) refuse("the certificate is too large");
    let cert: SshCertificate;
    try {
      cert = parseSshCertificate(i.cert);
    } catch {
      return refuse("the offered key is not an Ed25519 OpenSSH certificate");
    }
    who = `${JSON.stringify(cert.keyId)} serial ${cert.serial}`;
    if (cert.type !== "user") refuse("not a user certificate");
    verifyAgainstAny(cert, i.userCaKeys, i.nowSeconds);
    if (!cert.principals.includes(i.login)) refuse(`the certificate does not name the login ${JSON.stringify(i.login)}`);
    const { identity, roleNames, roles } = mezitePart(cert);
    const locked =
      (i.locks.identity_ids.includes(identity.id) && `the agent identity ${JSON.stringify(identity.name)} is locked`) ||
      (i.locks.instance_ids.includes(identity.instance) && `the instance ${JSON.stringify(identity.instance)} is locked`) ||
      (roleNames.find((r) => i.locks.roles.includes(r)) !== undefined && "one of its roles is locked") ||
      (i.locks.logins.includes(i.login) && `the login ${JSON.stringify(i.login)} is locked`);
    if (locked) refuse(locked);
    if (!canLogin(roles, i.login, i.nodeLabels)) refuse(`its roles do not allow the login ${JSON.stringify(i.login)} on this node`);
    return { allow: true };
  } catch (e) {
    const reason = e instanceof Refusal ? e.message : "the certificate could not be evaluated";
    return who === undefined ? { allow: false, reason } : { allow: false, reason, who };
  }
}

/** Signed by one of the trusted User CA keys (several during a rotation), and valid now. */
function verifyAgainstAny(cert: SshCertificate, caKeys: KeyObject[], nowSeconds: number): void {
  let last = "no User CA key is trusted (user_ca.pub is empty)";
  for (const ca of caKeys) {
    try {
      verifySshCertificate(cert, ca, nowSeconds);
      return;
    } catch (e) {
      const code = (e as { code?: string }).code;
      last =
        code === "ERR_WRONG_CA" ? "the certificate is not signed by this cluster's User CA"
        : code === "ERR_BAD_SIGNATURE" ? "the certificate's signature does not verify"
        : code === "ERR_CERT_EXPIRED" ? "the certificate has expired"
        : code === "ERR_CERT_NOT_YET_VALID" ? "the certificate is not valid yet"
        : "the certificate does not verify";
      if (code !== "ERR_WRONG_CA") break; // the right CA said no: another key will not say yes
    }
  }
  refuse(last);
}

interface MezitePart {
  identity: { name: string; id: string; instance: string };
  roleNames: string[];
  roles: RoleAccess[];
}

/** The extensions a node decides by; a certificate without them is not Mezite's to admit. */
function mezitePart(cert: SshCertificate): MezitePart {
  const ext = (name: string) => cert.extensions[name] ?? refuse(`the certificate has no ${name} extension`);
  const json = (name: string): unknown => {
    const text = ext(name);
    try {
      return JSON.parse(text);
    } catch {
      return refuse(`the ${name} extension is not JSON`);
    }
  };
  const id = json(EXT.identity) as Record<string, unknown> | null;
  if (typeof id?.["name"] !== "string" || typeof id["id"] !== "string" || typeof id["instance"] !== "string") refuse(`the ${EXT.identity} extension is malformed`);
  const access = json(EXT.roleRules);
  if (!Array.isArray(access) || !access.every(isRoleAccess)) refuse(`the ${EXT.roleRules} extension is malformed`);
  const roles = (access as RoleAccess[]).map((r) => ({ ...r, maxSessionTtlMs: 0 }));
  const roleNames = [...new Set([...ext(EXT.roles).split(",").filter(Boolean), ...roles.map((r) => r.role)])];
  const { name, id: identityId, instance } = id as { name: string; id: string; instance: string };
  return { identity: { name, id: identityId, instance }, roleNames, roles };
}

const isStrings = (v: unknown): v is string[] => Array.isArray(v) && v.every((s) => typeof s === "string");
const isRule = (v: unknown): v is LabelRule => typeof v === "object" && v !== null && !Array.isArray(v) && Object.values(v).every(isStrings);
const isSide = (v: unknown) => typeof v === "object" && v !== null && isStrings((v as { logins?: unknown }).logins) && isRule((v as { labels?: unknown }).labels);
function isRoleAccess(v: unknown): boolean {
  const r = v as Partial<RoleAccess> | null;
  return typeof r === "object" && r !== null && typeof r.role === "string" && isSide(r.allow) && isSide(r.deny);
}

/** Lines of user_ca.pub that parse; the others are skipped (sshd skips them too). */
function readUserCaKeys(dir: string): KeyObject[] {
  const text = readFileNoFollow(pathOf(dir, "userCa")) ?? "";
  const keys: KeyObject[] = [];
  for (const line of text.split("\n")) {
    if (line.trim() === "" || line.trimStart().startsWith("#")) continue;
    try {
      keys.push(parseAuthorizedKey(line));
    } catch {
      /* a key type we do not issue with */
    }
  }
  return keys;
}

/**
 * The command itself: reads the node's files and decides. Returns what to print, so the CLI
 * writes it and tests call it in-process.
 */
export function principalsCommand(sshDir: string | undefined, args: string[], nowMs = Date.now()): { stdout: string; stderr: string } {
  const say = (why: string) => ({ stdout: "", stderr: `mezd node principals: ${why}\n` });
  if (!sshDir) return say("refused: --ssh-dir is missing");
  const [login, cert] = args;
  if (args.length !== 2 || !login || !cert) return say("refused: expected exactly two arguments, %u and %k");
  let input: PrincipalsInput;
  try {
    input = { login, cert, userCaKeys: readUserCaKeys(sshDir), nodeLabels: readNodeConfig(sshDir).labels, locks: readLockState(sshDir), nowSeconds: Math.floor(nowMs / 1000) };
  } catch (e) {
    return say(`refused ${JSON.stringify(login)}: ${(e as Error).message.split("\n")[0]}`);
  }
  const d = decide(input);
  if (d.allow) return { stdout: `${login}\n`, stderr: "" };
  return say(`refused ${JSON.stringify(login)}${d.who ? ` for ${d.who}` : ""}: ${d.reason}`);
}

/**
 * Entry without commander, for a fast path in mezd.ts that skips every other import:
 * `argv` is what follows `node principals` (`--ssh-dir=DIR` or `--ssh-dir DIR`, then %u %k).
 */
export function principalsMain(argv: string[]): void {
  let sshDir: string | undefined;
  const args: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] as string;
    if (a.startsWith("--ssh-dir=")) sshDir = a.slice("--ssh-dir=".length);
    else if (a === "--ssh-dir") sshDir = argv[++i];
    else args.push(a);
  }
  let out: { stdout: string; stderr: string };
  try {
    out = principalsCommand(sshDir, args);
  } catch (e) {
    out = { stdout: "", stderr: `mezd node principals: refused: ${String((e as Error)?.message ?? e).split("\n")[0]}\n` };
  }
  process.stderr.write(out.stderr);
  process.stdout.write(out.stdout);
}

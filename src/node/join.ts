/**
 * `mezd node join` (SPEC §7): one JoinNode call with a node token, then the ssh dir an sshd
 * running as root includes. Nothing is written before the reply is proven, and every target is
 * checked for symlinks before the call, so a refused write never burns the one-time token.
 */
import { lstatSync } from "node:fs";
import { dirname, isAbsolute, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { JoinService, type NodeCredentials } from "../api/gen/mezite/v1/join_pb.js";
import { connect } from "../api/client.js";
import { fromConnectError } from "../api/errors.js";
import { checkCaPin, parseCaPins } from "../api/pin.js";
import { parseToken } from "../ca/jointoken.js";
import { encodeKrl } from "../ca/krl.js";
import { encodeOpenSSHPrivateKey } from "../ca/sshkey.js";
import { bundleHasPin, privateKeyToPem } from "../ca/x509.js";
import { MeziteError } from "../lib/errors.js";
import { assertNotSymlink, ensureDir, readFileNoFollow, writeFileAtomic } from "../lib/files.js";
import {
  DIR_MODE, FILES, NO_LOCKS, PUBLIC_MODE, SECRET_MODE, checkConfigPath, readNodeConfig, formatLockState, formatUserCaKeys, pathOf, renderSshdConfig, writeNodeConfig, writeNodeTls,
} from "./layout.js";
import { buildJoinNodeRequest, generateNodeKeys, verifyJoinNodeReply } from "./protocol.js";

export interface JoinOptions {
  authServer: string;
  token: Buffer;
  hostname: string;
  /** Extra host certificate principals (other names or addresses clients use). */
  principals: string[];
  sshDir: string;
  /** Empty: not checked. */
  caPins: string[];
  /** The user sshd runs the principals command as. */
  principalsUser: string;
  /** The mezd that sshd runs as AuthorizedPrincipalsCommand: absolute, in a root-owned path. */
  mezdPath: string;
  /** Join even though the ssh dir holds a joined node already. */
  force: boolean;
}

export interface RawJoinOptions {
  authServer?: string | undefined;
  token?: string | undefined;
  tokenFile?: string | undefined;
  hostname?: string | undefined;
  principals?: string | undefined;
  sshDir?: string | undefined;
  caPin?: string | undefined;
  principalsUser?: string | undefined;
  mezdPath?: string | undefined;
  force?: string | boolean | undefined;
}

const usage = (msg: string): never => {
  throw new MeziteError("ERR_USAGE", msg);
};

export function resolveJoinOptions(raw: RawJoinOptions, env: NodeJS.ProcessEnv = process.env): JoinOptions {
  if (!raw.authServer) usage("--auth-server is required (host:port of the auth service)");
  if (!raw.hostname) usage("--hostname is required (the node's name, also its host certificate principal)");
  if (!raw.sshDir) usage("--ssh-dir is required (where the host key, certificates and the sshd_config snippet go)");
  if (raw.token !== undefined && raw.tokenFile !== undefined) usage("give the token once: --token or --token-file, not both");
  let text = raw.token ?? env["MEZITE_TOKEN"];
  if (raw.tokenFile !== undefined) {
    const t = readFileNoFollow(raw.tokenFile);
    if (t === undefined) usage(`--token-file ${raw.tokenFile}: no such file`);
    text = t;
  }
  if (text === undefined || text.trim() === "") usage("a node token is required: --token-file, --token or $MEZITE_TOKEN (from mezctl tokens add --type=node)");
  let token: Buffer;
  try {
    token = parseToken(text!);
  } catch {
    throw new MeziteError("ERR_TOKEN_INVALID", "the join token is malformed: it must be the 64 hex characters printed by mezctl tokens add");
  }
  const caPins = raw.caPin === undefined ? [] : parseCaPins(raw.caPin);
  const user = raw.principalsUser ?? "nobody";
  if (!/^[a-z_][a-z0-9_.-]*$/.test(user) || user === "root") usage("--principals-user must name an unprivileged local user (default nobody)");
  if (raw.mezdPath !== undefined && !isAbsolute(raw.mezdPath)) usage("--mezd-path must be an absolute path");
  const sshDir = resolve(raw.sshDir!);
  checkConfigPath(sshDir, "--ssh-dir");
  return {
    authServer: raw.authServer!,
    token,
    hostname: raw.hostname!,
    principals: (raw.principals ?? "").split(",").map((p) => p.trim()).filter(Boolean),
    sshDir,
    caPins,
    principalsUser: user,
    mezdPath: raw.mezdPath ?? mezdPath(),
    force: raw.force === true,
  };
}

/**
 * bin/mezd of this installation: this file sits two levels below the root, as src/node/join.ts,
 * dist/node/join.js or a chunk of the bundle in dist/bundle/ (scripts/bundle.mjs keeps it there).
 */
export function mezdPath(): string {
  return fileURLToPath(new URL("../../bin/mezd", import.meta.url));
}

/**
 * sshd refuses an AuthorizedPrincipalsCommand that is, or sits below, anything not owned by root
 * or writable by group or others ("Unsafe AuthorizedPrincipalsCommand"). Say so at join time.
 */
export function unsafeCommandReason(path: string): string | undefined {
  for (let p = path; ; p = dirname(p)) {
    const st = lstatSync(p, { throwIfNoEntry: false });
    if (!st) return `${p} does not exist`;
    if (st.uid !== 0) return `${p} is not owned by root`;
    if ((st.mode & 0o022) !== 0) return `${p} is writable by group or others`;
    if (p === dirname(p)) return undefined;
  }
}

/** The principals command runs unprivileged: every directory above the ssh dir must let it through. */
export function unreachableDirReason(dir: string): string | undefined {
  for (let p = dir; ; p = dirname(p)) {
    const st = lstatSync(p, { throwIfNoEntry: false });
    if (st && (st.mode & 0o001) === 0) return `${p} is not searchable by other users`;
    if (p === dirname(p)) return undefined;
  }
}

/**
 * A second join into a joined node's ssh dir would silently make this machine another node (new
 * host key, the old node left behind in nodes ls): refused before the token is spent.
 */
function refuseIfJoined(dir: string): void {
  if (readFileNoFollow(pathOf(dir, "node")) === undefined) return;
  let name = "";
  try {
    name = ` "${readNodeConfig(dir).name}"`;
  } catch {
    // unreadable: still a node's file
  }
  throw new MeziteError("ERR_USAGE", `${dir} already holds joined node${name}: run mezd node start with it, or join into another --ssh-dir (--force makes this machine a new node there)`);
}

export interface JoinResult {
  credentials: NodeCredentials;
  written: { file: string; what: string }[];
  include: string;
  warnings: string[];
}

export async function joinNode(o: JoinOptions, now: () => number = Date.now): Promise<JoinResult> {
  const mezd = o.mezdPath;
  const snippet = renderSshdConfig(o.sshDir, mezd, o.principalsUser); // refuses bad paths before the call
  ensureDir(o.sshDir, DIR_MODE, { what: `--ssh-dir ${o.sshDir}` });
  for (const f of Object.keys(FILES) as (keyof typeof FILES)[]) assertNotSymlink(pathOf(o.sshDir, f));
  if (!o.force) refuseIfJoined(o.sshDir);

  if (o.caPins.length > 0) await checkCaPin(o.authServer, o.caPins);
  const keys = generateNodeKeys();
  const { request, macKey } = buildJoinNodeRequest(o.token, o.hostname, o.principals, keys);
  let creds: NodeCredentials;
  try {
    const reply = await connect(JoinService, o.authServer, {}).joinNode(request);
    creds = verifyJoinNodeReply(request, reply, macKey, keys, now());
  } catch (e) {
    throw fromConnectError(e, o.authServer);
  }
  if (o.caPins.length > 0 && !bundleHasPin(creds.tlsCaPem, o.caPins)) throw new MeziteError("ERR_WRONG_CA", "the auth service's TLS CA does not match --ca-pin");

  const d = o.sshDir;
  const written: { file: string; what: string }[] = [];
  const put = (file: keyof typeof FILES, data: string | Uint8Array, mode: number, what: string) => {
    writeFileAtomic(pathOf(d, file), data, mode);
    written.push({ file: pathOf(d, file), what: `${what} (${mode.toString(8).padStart(4, "0")})` });
  };
  put("hostKey", encodeOpenSSHPrivateKey(keys.host, `node/${creds.nodeName}`), SECRET_MODE, "SSH host key");
  put("hostCert", `${creds.hostCertificate}\n`, PUBLIC_MODE, "host certificate from the Host CA");
  put("userCa", formatUserCaKeys(creds.userCaSshKeys), PUBLIC_MODE, "User CA keys for TrustedUserCAKeys");
  // A KRL or lock list already here (a re-join) is kept: `node start` refreshes both anyway.
  if (readFileNoFollow(pathOf(d, "krl")) === undefined) {
    put("krl", encodeKrl({ version: 0n, generatedAt: Math.floor(now() / 1000), sections: [] }), PUBLIC_MODE, "revocation list for RevokedKeys, empty");
  }
  if (readFileNoFollow(pathOf(d, "locks")) === undefined) put("locks", formatLockState(NO_LOCKS), PUBLIC_MODE, "locked identities, roles and logins, none yet");
  writeNodeTls(d, { cert_pem: creds.tlsCertificatePem, key_pem: privateKeyToPem(keys.tls) });
  written.push({ file: pathOf(d, "tls"), what: "mTLS certificate and key for mezd node start (0600)" });
  writeNodeConfig(d, {
    version: 1,
    name: creds.nodeName,
    labels: creds.labels,
    principals: o.principals,
    auth_server: o.authServer,
    tls_ca_pem: creds.tlsCaPem,
    host_ca_ssh_keys: creds.hostCaSshKeys,
    host_cert_expires: Number(creds.hostCertExpires),
    ca_state: creds.caState,
  });
  written.push({ file: pathOf(d, "node"), what: "node name, labels and auth server (0644)" });
  put("sshdConfig", snippet, PUBLIC_MODE, "sshd_config snippet to Include");

  const warnings: string[] = [];
  const unsafe = unsafeCommandReason(mezd);
  if (unsafe) warnings.push(`sshd will refuse ${mezd} as AuthorizedPrincipalsCommand: ${unsafe}; install mezite in a root-owned location, or pass --mezd-path with a root-owned wrapper that runs it`);
  const unreachable = unreachableDirReason(d);
  if (unreachable) warnings.push(`the principals command (run as ${o.principalsUser}) cannot read ${d}: ${unreachable}`);
  return { credentials: creds, written, include: `Include ${join(d, FILES.sshdConfig)}`, warnings };
}

export function joinReport(r: JoinResult, sshDir: string): string {
  const c = r.credentials;
  const labels = Object.entries(c.labels).map(([k, v]) => `${k}=${v}`).join(",") || "none";
  const width = Math.max(...r.written.map((w) => w.file.length));
  return [
    `Node "${c.nodeName}" joined (labels: ${labels}; host certificate valid until ${new Date(Number(c.hostCertExpires)).toISOString()}).`,
    `Wrote:`,
    ...r.written.map((w) => `  ${w.file.padEnd(width)}  ${w.what}`),
    ``,
    `Add this line near the top of /etc/ssh/sshd_config (before any Match block) and reload sshd:`,
    `  ${r.include}`,
    ``,
    `Then keep revocations and the host certificate current with:`,
    `  mezd node start --ssh-dir=${sshDir}`,
    ...r.warnings.map((w) => `\nWarning: ${w}`),
    ``,
  ].join("\n");
}

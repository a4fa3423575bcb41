/**
 * `mezd identity start` options, resolved once into a fully defaulted, range-checked object
 * (SPEC §6). Every rule here is a usage error (exit 2) with one line saying what to change.
 */
import { readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { parseCaPins } from "../api/pin.js";
import { parseToken } from "../ca/jointoken.js";
import { formatDuration, parseDuration } from "../lib/duration.js";
import { MeziteError } from "../lib/errors.js";

export interface IdentityOptions {
  /** host:port of the auth service. */
  authServer: string;
  /** The one-time token (raw 32 bytes); only needed to join with join method "token". */
  token: Buffer | undefined;
  /** How to join (SPEC §14): a one-time token, or an ID token under a join token resource. */
  join: TokenJoin | IdTokenJoin;
  destinationDir: string;
  /** Default: DEST/.mezite. */
  storageDir: string;
  /** Requested certificate TTL; the roles may cap it. Default 1h, at least 1m. */
  certTtlMs: number;
  /** Default 20m, at least 10s, shorter than certTtlMs. */
  renewalIntervalMs: number;
  oneShot: boolean;
  diagAddr: string | undefined;
  /** sha256:HEX of the auth service's TLS CA key (any of them: several during a rotation), checked before joining; empty = not checked. */
  caPins: string[];
  /** --one-shot-retry: how long a one-shot join or renewal keeps retrying a failing auth service. Default 30s. */
  oneShotRetryMs: number;
  /** --ssh-agent-socket: serve the SSH key and certificate over the SSH agent protocol here (absolute). */
  sshAgentSocket: string | undefined;
  /** False with --no-ssh-key-file: the SSH private key lives in the agent alone (SPEC §16). */
  sshKeyFile: boolean;
  /**
   * --ca-check-interval: how often a running daemon asks whether a CA rotation moved on (SPEC §15).
   * Default 45s (±10 %), so a phase change is seen within a minute. Each check is one mTLS
   * handshake on the auth service: 2.8–3.2 ms of its CPU measured, as much as a renewal, so 1,000
   * daemons cost ~7 % of a core.
   */
  caCheckIntervalMs: number;
  /** Hold a change stream (SPEC §20) and ask every caCheckIntervalMs only while it is down. Default true. */
  watch?: boolean;
}

export type JoinMethod = "token" | "github" | "gitlab" | "oidc";
export const JOIN_METHODS: readonly JoinMethod[] = ["token", "github", "gitlab", "oidc"];

export interface TokenJoin {
  method: "token";
}

/** A join with the platform's ID token, presented under the join token resource `name`. */
export interface IdTokenJoin {
  method: Exclude<JoinMethod, "token">;
  /** The join token resource's name (--token). */
  name: string | undefined;
  /** gitlab and oidc: where the JWT is read (github fetches it from the Actions runtime). */
  idTokenFile: string | undefined;
  idTokenEnv: string;
}

export const MIN_CERT_TTL_MS = 60_000;
export const MIN_RENEWAL_INTERVAL_MS = 10_000;
export const MIN_CA_CHECK_INTERVAL_MS = 1_000;

export interface RawIdentityOptions {
  authServer?: string | undefined;
  token?: string | undefined;
  tokenFile?: string | undefined;
  destinationDir?: string | undefined;
  storageDir?: string | undefined;
  certTtl?: string | undefined;
  renewalInterval?: string | undefined;
  oneShot?: boolean | string | undefined;
  diagAddr?: string | undefined;
  caPin?: string | undefined;
  joinMethod?: string | undefined;
  idTokenFile?: string | undefined;
  idTokenEnv?: string | undefined;
  oneShotRetry?: string | undefined;
  sshAgentSocket?: string | undefined;
  /** commander's --no-ssh-key-file sets sshKeyFile: false. */
  sshKeyFile?: boolean | string | undefined;
  caCheckInterval?: string | undefined;
}

function usage(msg: string): never {
  throw new MeziteError("ERR_USAGE", msg);
}

function duration(value: string, flag: string): number {
  try {
    return parseDuration(value);
  } catch {
    usage(`${flag}: "${value}" is not a duration such as 90s, 20m or 1h`);
  }
}

/** Why `p` cannot be named in the generated ssh_config (outputs.ts quotes blanks and doubles %), or undefined. */
export function unwritableInSshConfig(p: string): string | undefined {
  if (/["\x00-\x1f\x7f]/.test(p)) return "a double quote or a control character";
  if (p.includes("${")) return '"${" (ssh would expand it as an environment variable)';
  return undefined;
}

export function resolveIdentityOptions(raw: RawIdentityOptions, env: NodeJS.ProcessEnv = process.env): IdentityOptions {
  if (!raw.authServer) usage("--auth-server is required (host:port of the auth service)");
  if (!raw.destinationDir) usage("--destination-dir is required (where certificates are written)");
  const sources = [raw.token !== undefined, raw.tokenFile !== undefined].filter(Boolean).length;
  if (sources > 1) usage("give the token once: --token or --token-file, not both");
  const method = (raw.joinMethod ?? "token") as JoinMethod;
  if (!JOIN_METHODS.includes(method)) usage(`--join-method must be one of ${JOIN_METHODS.join(", ")}`);
  let tokenText = raw.token ?? env["MEZITE_TOKEN"];
  if (raw.tokenFile !== undefined) {
    try {
      tokenText = readFileSync(raw.tokenFile, "utf8");
    } catch (e) {
      usage(`--token-file ${raw.tokenFile}: ${(e as NodeJS.ErrnoException).code === "ENOENT" ? "no such file" : (e as Error).message}`);
    }
  }
  let token: Buffer | undefined;
  let joinHow: IdentityOptions["join"] = { method: "token" };
  if (method !== "token") {
    // The token names the join token resource; the secret is the platform's ID token.
    const name = tokenText?.trim() || undefined;
    if (name !== undefined && !/^[a-z0-9][a-z0-9._-]{0,62}$/.test(name)) usage(`--token with --join-method=${method} names a join token resource ([a-z0-9][a-z0-9._-]{0,62})`);
    // The ID token is a bearer credential: it goes only to a server proven to be the cluster's.
    if (raw.caPin === undefined) usage(`--ca-pin is required with --join-method=${method} (mezctl status prints it): the ID token is sent only to the pinned auth service`);
    if (method === "github" && (raw.idTokenFile !== undefined || raw.idTokenEnv !== undefined)) usage("--join-method=github fetches its ID token from the Actions runtime: leave out --id-token-file and --id-token-env");
    if (raw.idTokenEnv !== undefined && !/^[A-Za-z_][A-Za-z0-9_]*$/.test(raw.idTokenEnv)) usage("--id-token-env must name an environment variable");
    joinHow = { method, name, idTokenFile: raw.idTokenFile, idTokenEnv: raw.idTokenEnv ?? "MEZITE_ID_TOKEN" };
  } else if (raw.idTokenFile !== undefined || raw.idTokenEnv !== undefined) {
    usage("--id-token-file and --id-token-env need --join-method=gitlab or oidc");
  } else if (tokenText !== undefined && tokenText.trim() !== "") {
    try {
      token = parseToken(tokenText);
    } catch {
      // parseToken's message never repeats the input; neither does this one.
      throw new MeziteError("ERR_TOKEN_INVALID", "the join token is malformed: it must be the 64 hex characters printed by mezctl");
    }
  }
  const certTtlMs = duration(raw.certTtl ?? "1h", "--cert-ttl");
  const renewalIntervalMs = duration(raw.renewalInterval ?? "20m", "--renewal-interval");
  if (certTtlMs < MIN_CERT_TTL_MS) usage(`--cert-ttl must be at least ${formatDuration(MIN_CERT_TTL_MS)}`);
  if (renewalIntervalMs < MIN_RENEWAL_INTERVAL_MS) usage(`--renewal-interval must be at least ${formatDuration(MIN_RENEWAL_INTERVAL_MS)}`);
  if (renewalIntervalMs >= certTtlMs) {
    usage(`--renewal-interval (${formatDuration(renewalIntervalMs)}) must be shorter than --cert-ttl (${formatDuration(certTtlMs)}), or certificates would expire before renewal`);
  }
  const caPins = raw.caPin === undefined ? [] : parseCaPins(raw.caPin);
  const oneShot = raw.oneShot === true || raw.oneShot === "true";
  const oneShotRetryMs = duration(raw.oneShotRetry ?? "30s", "--one-shot-retry");
  const sshKeyFile = !(raw.sshKeyFile === false || raw.sshKeyFile === "false");
  const caCheckIntervalMs = duration(raw.caCheckInterval ?? "45s", "--ca-check-interval");
  if (caCheckIntervalMs < MIN_CA_CHECK_INTERVAL_MS) usage(`--ca-check-interval must be at least ${formatDuration(MIN_CA_CHECK_INTERVAL_MS)}`);
  if (raw.sshAgentSocket === "") usage("--ssh-agent-socket needs a path");
  // sun_path holds 108 bytes with its NUL: a longer path cannot be bound.
  if (raw.sshAgentSocket !== undefined && Buffer.byteLength(resolve(raw.sshAgentSocket)) > 107) usage("--ssh-agent-socket: the path is longer than a Unix socket allows (107 bytes)");
  if (raw.sshAgentSocket !== undefined && oneShot) usage("--ssh-agent-socket needs a running daemon: it cannot be used with --one-shot");
  if (!sshKeyFile && raw.sshAgentSocket === undefined) usage("--no-ssh-key-file needs --ssh-agent-socket: without a key file the agent is the only holder of the SSH key");
  const dest = resolve(raw.destinationDir);
  const socket = raw.sshAgentSocket === undefined ? undefined : resolve(raw.sshAgentSocket);
  for (const [flag, p] of [["--destination-dir", dest], ["--ssh-agent-socket", socket]] as const) {
    const why = p === undefined ? undefined : unwritableInSshConfig(p);
    if (why) usage(`${flag}: the path holds ${why}, which ssh_config cannot name: choose another path`);
  }
  return {
    authServer: raw.authServer,
    token,
    join: joinHow,
    // Absolute, because ssh_config names the outputs by these paths and ssh may run elsewhere.
    destinationDir: dest,
    storageDir: resolve(raw.storageDir ?? join(raw.destinationDir, ".mezite")),
    certTtlMs,
    renewalIntervalMs,
    oneShot,
    diagAddr: raw.diagAddr,
    caPins,
    oneShotRetryMs,
    sshAgentSocket: socket,
    sshKeyFile,
    caCheckIntervalMs,
  };
}

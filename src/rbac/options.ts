/**
 * Role options that become SSH certificate critical options and extensions (SPEC §19,
 * PROTOCOL.certkeys), so stock sshd enforces them. Pure.
 *
 * Combining roles, the most restrictive wins, and an option a role does not set is no vote
 * (a role written for something else does not switch forwarding off for a role that permits it);
 * when no role sets an option, its default applies:
 * - permit_*: false if any role sets false. Defaults: pty true; port, agent and X11 forwarding
 *   false for agent identities. permit-user-rc is never issued.
 * - force_command: the one command every role that sets it names. Two different commands are
 *   refused at issue: picking none would hand out a shell that both roles meant to forbid, and
 *   picking one would run a command the other role did not allow.
 * - source_address: the addresses every role that sets it allows (the intersection of the CIDR
 *   lists); an empty intersection is refused at issue, as no address could use the certificate.
 */
import { isIP } from "node:net";
import { ipv6Groups } from "../lib/address.js";
import { MeziteError } from "../lib/errors.js";

export interface RoleOptions {
  forceCommand?: string;
  /** CIDR blocks (a bare address is one host), as written. */
  sourceAddress?: string[];
  permitPortForwarding?: boolean;
  permitAgentForwarding?: boolean;
  permitX11Forwarding?: boolean;
  permitPty?: boolean;
}

/** The YAML names of the boolean options, and their defaults for agent identities. */
export const PERMIT_OPTIONS = {
  permit_port_forwarding: { field: "permitPortForwarding", extension: "permit-port-forwarding", default: false },
  permit_agent_forwarding: { field: "permitAgentForwarding", extension: "permit-agent-forwarding", default: false },
  permit_x11_forwarding: { field: "permitX11Forwarding", extension: "permit-X11-forwarding", default: false },
  permit_pty: { field: "permitPty", extension: "permit-pty", default: true },
} as const;

export type PermitOption = keyof typeof PERMIT_OPTIONS;

/** OpenSSH parses source-address into a 64-byte buffer; a list this long is not an allow-list. */
const MAX_SOURCE_ADDRESSES = 64;
const MAX_FORCE_COMMAND = 4096;

interface Cidr {
  text: string;
  family: 4 | 6;
  net: bigint;
  prefix: number;
}

function ipv4ToBigInt(s: string): bigint {
  return s.split(".").reduce((acc, part) => (acc << 8n) | BigInt(Number(part)), 0n);
}

function ipv6ToBigInt(s: string): bigint {
  return ipv6Groups(s).reduce((acc, g) => (acc << 16n) | BigInt(g), 0n);
}

/**
 * One source-address entry as OpenSSH's addr_pton_cidr takes it: an IPv4 or IPv6 address, with
 * an optional /prefix, whose host bits are zero (sshd refuses the whole certificate otherwise).
 */
export function parseCidr(text: string, where = "source_address"): Cidr {
  const bad = (why: string): never => {
    throw new MeziteError("ERR_BAD_ROLE", `${where}: "${text}" ${why}`);
  };
  const [addr = "", prefixText, extra] = text.split("/");
  if (extra !== undefined) bad("is not an address or CIDR block such as 10.0.0.0/8");
  const family = isIP(addr);
  if ((family !== 4 && family !== 6) || addr.includes("%")) return bad("is not an address or CIDR block such as 10.0.0.0/8");
  const width = family === 4 ? 32 : 128;
  let prefix = width;
  if (prefixText !== undefined) {
    if (!/^\d{1,3}$/.test(prefixText) || Number(prefixText) > width) bad(`has no valid prefix length (0 to ${width})`);
    prefix = Number(prefixText);
  }
  const net = family === 4 ? ipv4ToBigInt(addr) : ipv6ToBigInt(addr);
  const hostBits = (1n << BigInt(width - prefix)) - 1n;
  if ((net & hostBits) !== 0n) bad("has host bits set: write the network address (sshd refuses a certificate with it)");
  return { text, family, net, prefix };
}

/** Whether block `inner` lies within block `outer`. */
function within(inner: Cidr, outer: Cidr): boolean {
  if (inner.family !== outer.family || inner.prefix < outer.prefix) return false;
  const width = inner.family === 4 ? 32 : 128;
  const shift = BigInt(width - outer.prefix);
  return inner.net >> shift === outer.net >> shift;
}

/** The addresses both lists allow: two blocks overlap only when one holds the other, and then the smaller is their overlap. */
function intersect(a: Cidr[], b: Cidr[]): Cidr[] {
  const out: Cidr[] = [];
  for (const x of a) {
    for (const y of b) {
      const overlap = within(x, y) ? x : within(y, x) ? y : undefined;
      if (overlap && !out.some((o) => within(overlap, o))) {
        for (let i = out.length - 1; i >= 0; i--) if (within(out[i]!, overlap)) out.splice(i, 1);
        out.push(overlap);
      }
    }
  }
  return out;
}

type Obj = Record<string, unknown>;

/** Reads the certificate options of a role's spec.options (max_session_ttl is role.ts's). */
export function optionsFromDocument(o: Obj, where = "spec.options"): RoleOptions {
  const bad = (message: string): never => {
    throw new MeziteError("ERR_BAD_ROLE", message);
  };
  const out: RoleOptions = {};
  const fc = o["force_command"];
  if (fc !== undefined && fc !== null) {
    if (typeof fc !== "string" || fc.trim() === "") bad(`${where}.force_command must be a non-empty command`);
    const cmd = fc as string;
    if (/[\0\r\n]/.test(cmd)) bad(`${where}.force_command must be one line`);
    if (cmd.length > MAX_FORCE_COMMAND) bad(`${where}.force_command is longer than ${MAX_FORCE_COMMAND} characters`);
    out.forceCommand = cmd;
  }
  const sa = o["source_address"];
  if (sa !== undefined && sa !== null) {
    const list = typeof sa === "string" ? sa.split(",").map((s) => s.trim()) : sa;
    if (!Array.isArray(list) || list.length === 0 || !list.every((s) => typeof s === "string")) {
      bad(`${where}.source_address must be a CIDR block or a list of them, e.g. [10.0.0.0/8]`);
    }
    const texts = [...new Set(list as string[])];
    if (texts.length > MAX_SOURCE_ADDRESSES) bad(`${where}.source_address has more than ${MAX_SOURCE_ADDRESSES} entries`);
    for (const t of texts) parseCidr(t, `${where}.source_address`);
    out.sourceAddress = texts;
  }
  for (const [name, p] of Object.entries(PERMIT_OPTIONS)) {
    const v = o[name];
    if (v === undefined || v === null) continue;
    if (typeof v !== "boolean") bad(`${where}.${name} must be true or false`);
    out[p.field] = v as boolean;
  }
  return out;
}

/** The options as the YAML an admin writes (only those set). */
export function optionsToDocument(o: RoleOptions): Obj {
  const out: Obj = {};
  if (o.forceCommand !== undefined) out["force_command"] = o.forceCommand;
  if (o.sourceAddress !== undefined) out["source_address"] = o.sourceAddress;
  for (const [name, p] of Object.entries(PERMIT_OPTIONS)) if (o[p.field] !== undefined) out[name] = o[p.field];
  return out;
}

export interface CertificateOptions {
  criticalOptions: Record<string, string>;
  /** The standard extensions to grant (value ""). */
  extensions: Record<string, string>;
}

function conflict(message: string): MeziteError {
  return new MeziteError("ERR_ROLE_CONFLICT", message);
}

/** The most restrictive combination of these roles' options, as certificate fields. */
export function certificateOptions(roles: { role: string; options?: RoleOptions | undefined }[]): CertificateOptions {
  const criticalOptions: Record<string, string> = {};
  const extensions: Record<string, string> = {};
  const setting = <K extends keyof RoleOptions>(k: K) => roles.flatMap((r) => (r.options?.[k] !== undefined ? [{ role: r.role, value: r.options[k]! }] : []));

  const commands = setting("forceCommand");
  const distinct = [...new Set(commands.map((c) => c.value))];
  if (distinct.length > 1) {
    const names = commands.map((c) => c.role).join(", ");
    throw conflict(`roles [${names}] force different commands: no certificate is issued until one command is left (edit or remove one role's force_command)`);
  }
  if (distinct[0] !== undefined) criticalOptions["force-command"] = distinct[0];

  const sources = setting("sourceAddress");
  if (sources.length > 0) {
    let allowed = sources[0]!.value.map((t) => parseCidr(t));
    for (const s of sources.slice(1)) allowed = intersect(allowed, s.value.map((t) => parseCidr(t)));
    if (allowed.length === 0) {
      throw conflict(`roles [${sources.map((s) => s.role).join(", ")}] have no source address in common: no certificate is issued, since no address could use it`);
    }
    criticalOptions["source-address"] = allowed.map((c) => c.text).join(",");
  }

  for (const p of Object.values(PERMIT_OPTIONS)) {
    const votes = setting(p.field);
    const permitted = votes.length === 0 ? p.default : votes.every((v) => v.value === true);
    if (permitted) extensions[p.extension] = "";
  }
  return { criticalOptions, extensions };
}

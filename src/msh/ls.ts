/**
 * msh ls: the nodes an identity may log into, from the auth service's AgentService, called with
 * the destination dir's OUTPUT certificate (x509_cert.pem, x509_key.pem). That certificate can
 * read this and nothing else: renewal takes the renewal certificate, which msh never touches.
 *
 * Where the auth service is and which CA its TLS certificate must chain to: --auth-server and
 * --tls-ca when given, else what the daemon learned at join (its storage dir's state.json: only
 * the `auth_server` and `tls_ca_pem` fields are read).
 */
import { join } from "node:path";
import { create } from "@bufbuild/protobuf";
import { AgentService, ListAccessibleNodesResponseSchema, type AccessibleNode, type ListAccessibleNodesResponse } from "../api/gen/mezite/v1/agent_pb.js";
import { connect } from "../api/client.js";
import { fromConnectError } from "../api/errors.js";
import { isoTime, relTime, table } from "../cli/output.js";
import { MeziteError } from "../lib/errors.js";
import { readFileNoFollow } from "../lib/files.js";
import type { IdentityDir } from "./identity-dir.js";

export interface LsOptions {
  authServer?: string | undefined;
  tlsCaFile?: string | undefined;
  /** The daemon's storage dir (default DIR/.mezite). */
  storageDir?: string | undefined;
}

function readRequired(path: string, what: string): string {
  const text = readFileNoFollow(path);
  if (text === undefined) throw new MeziteError("ERR_NOT_FOUND", `${path} is missing: ${what}`);
  return text;
}

/** The auth address and TLS CA: flags first, then the daemon's state. */
export function authTarget(d: IdentityDir, o: LsOptions): { addr: string; caPem: string } {
  let state: { auth_server?: unknown; tls_ca_pem?: unknown } | undefined;
  const storage = o.storageDir ?? join(d.dir, ".mezite");
  const loadState = () => {
    if (state) return state;
    let text: string | undefined;
    try {
      text = readFileNoFollow(join(storage, "state.json"));
    } catch (e) {
      throw new MeziteError("ERR_STORAGE", `cannot read the daemon's state in ${storage} (${(e as Error).message}): pass --auth-server and --tls-ca`, { cause: e });
    }
    if (text === undefined) throw new MeziteError("ERR_USAGE", `no daemon state in ${storage}: pass --storage-dir, or --auth-server and --tls-ca`);
    try {
      const s = JSON.parse(text) as Record<string, unknown>;
      state = { auth_server: s["auth_server"], tls_ca_pem: s["tls_ca_pem"] };
    } catch {
      throw new MeziteError("ERR_STATE_CORRUPT", `${join(storage, "state.json")} is not valid JSON`);
    }
    return state;
  };
  const addr = o.authServer ?? loadState().auth_server;
  const caPem = o.tlsCaFile !== undefined ? readRequired(o.tlsCaFile, "--tls-ca must name the auth service's TLS CA (PEM)") : loadState().tls_ca_pem;
  if (typeof addr !== "string" || addr === "") throw new MeziteError("ERR_USAGE", "the auth service's address is unknown: pass --auth-server");
  if (typeof caPem !== "string" || !caPem.includes("BEGIN CERTIFICATE")) throw new MeziteError("ERR_USAGE", "the auth service's TLS CA is unknown: pass --tls-ca");
  return { addr, caPem };
}

/**
 * A page refused for the identity's listing rate (ERR_RATE_LIMITED: many CI runs of one identity
 * listing at once, or a large fleet's many pages) is asked again after about a second, a few times;
 * then the refusal is the answer.
 */
const RATE_RETRY_MS = 1000;
const RATE_RETRIES = 8;

/** Every page of the listing, as one reply sorted by node name (what a single call used to return). */
export async function listAccessibleNodes(d: IdentityDir, o: LsOptions): Promise<ListAccessibleNodesResponse> {
  const { addr, caPem } = authTarget(d, o);
  const certPem = readRequired(join(d.dir, "x509_cert.pem"), "has mezd identity written this dir?");
  const keyPem = readRequired(join(d.dir, "x509_key.pem"), "has mezd identity written this dir?");
  const client = connect(AgentService, addr, { certPem, keyPem, caPem });
  const page = async (pageToken: string): Promise<ListAccessibleNodesResponse> => {
    for (let tries = 0; ; tries++) {
      try {
        return await client.listAccessibleNodes({ pageToken });
      } catch (e) {
        const err = fromConnectError(e, addr);
        if (err.code !== "ERR_RATE_LIMITED" || tries >= RATE_RETRIES) throw err;
        await new Promise((r) => setTimeout(r, RATE_RETRY_MS * (0.5 + Math.random())));
      }
    }
  };
  const first = await page("");
  const nodes: AccessibleNode[] = [...first.nodes];
  for (let token = first.nextPageToken; token !== ""; ) {
    const r = await page(token);
    nodes.push(...r.nodes);
    token = r.nextPageToken;
  }
  nodes.sort((a, b) => a.name.localeCompare(b.name));
  return create(ListAccessibleNodesResponseSchema, { identity: first.identity, roles: first.roles, nodes });
}

export function lsText(r: ListAccessibleNodesResponse, now = Date.now()): string {
  const labels = (l: Record<string, string>) => Object.keys(l).sort().map((k) => `${k}=${l[k]}`).join(",");
  return table(["NODE", "LOGINS", "LABELS", "ADDRESS", "LAST HEARTBEAT"], r.nodes.map((n) => [n.name, n.logins.join(","), labels(n.labels), n.address, relTime(n.lastHeartbeat, now)]));
}

export function lsDoc(r: ListAccessibleNodesResponse) {
  return r.nodes.map((n) => ({ name: n.name, logins: n.logins, labels: n.labels, address: n.address, last_heartbeat: isoTime(n.lastHeartbeat) }));
}

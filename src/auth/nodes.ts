/**
 * Nodes (SPEC §7, §13): join with a node token, host certificates from the Host CA, heartbeats.
 * A node's name and every extra principal are claimed once: a join that names a principal another
 * live node holds is refused unless its token was made to replace that node. Labels come from the
 * token alone; renewals and heartbeats never change name, labels, principals or host key. What
 * nodes poll to stop SSH logins within seconds is in revocations.ts.
 */
import { randomUUID, type KeyObject } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import {
  JoinNodeResponseSchema,
  NodeCredentialsSchema,
  type JoinNodeRequest,
  type JoinNodeResponse,
  type NodeCredentials,
} from "../api/gen/mezite/v1/join_pb.js";
import { joinNodeReplyTranscript, joinNodeRequestTranscript } from "../api/transcripts.js";
import type { WriteOp } from "../backend/backend.js";
import { mac } from "../ca/jointoken.js";
import { formatSshCertificate, signSshCertificate } from "../ca/sshcert.js";
import { formatAuthorizedKey } from "../ca/sshkey.js";
import { issueClientCertificate, randomSerial, type P256Point } from "../ca/x509.js";
import { MeziteError, isMeziteError } from "../lib/errors.js";
import { NODE_CA_KINDS, caState, caStatesOf, tlsCaBundle, trustedSshLines, type ClusterCas } from "./cas.js";
import type { AuthContext, Caller } from "./context.js";
import { BACKDATE_MS } from "./issue.js";
import { markRevocationsChanged } from "./locks.js";
import { encode, keys, load, type Loaded, type NodeClaim, type NodeRecord, type TokenRecord } from "./records.js";
import { checkToken, commitJoin } from "./tokens.js";
import * as v from "./validate.js";

/** Host certificates live a week and are renewed by `mezd node start` well before that. */
export const HOST_CERT_TTL_MS = 7 * 24 * 3_600_000;

/** `cas`: as read once by the caller, so the node record names the Host CA key that signed. */
export async function issueNodeCredentials(ctx: AuthContext, cas: ClusterCas, node: NodeRecord, hostKey: KeyObject, tlsKey: P256Point): Promise<NodeCredentials> {
  const now = ctx.now();
  const notAfter = now + HOST_CERT_TTL_MS;
  const hostCert = signSshCertificate(
    {
      type: "host",
      publicKey: hostKey,
      serial: randomSerial(),
      keyId: `node/${node.name}`,
      principals: [...new Set([node.name, ...node.principals])],
      validAfter: Math.floor((now - BACKDATE_MS) / 1000),
      validBefore: Math.floor(notAfter / 1000),
    },
    cas.host.server.sshPrivate,
  );
  const tlsPem = await issueClientCertificate({
    caCertPem: cas.host.x509CertPem,
    caKey: cas.host.x509Key,
    publicKey: tlsKey,
    notBefore: new Date(now - BACKDATE_MS),
    notAfter: new Date(notAfter),
    commonName: node.name,
    organization: ctx.clusterName,
    spiffeId: `spiffe://${ctx.clusterName}/node/${node.name}`,
    kind: "node",
    nodeId: node.id,
  });
  return create(NodeCredentialsSchema, {
    hostCertificate: formatSshCertificate(hostCert, `node/${node.name}`),
    tlsCertificatePem: tlsPem,
    tlsCaPem: tlsCaBundle(cas),
    userCaSshKeys: trustedSshLines(cas.user),
    hostCaSshKeys: trustedSshLines(cas.host),
    caState: caState(cas, NODE_CA_KINDS),
    nodeName: node.name,
    labels: node.labels,
    hostCertExpires: BigInt(notAfter),
  });
}

/** The principals a node claims: its name and extra principals, each once, case-insensitively. */
function claimedBy(node: Pick<NodeRecord, "name" | "principals">): string[] {
  return [...new Set([node.name, ...node.principals].map((p) => p.toLowerCase()))];
}

/** A claim is held while the node that made it still exists with the same id. */
async function liveClaim(ctx: AuthContext, principal: string): Promise<{ claim: Loaded<NodeClaim>; holder: Loaded<NodeRecord> } | { stale: Loaded<NodeClaim> | undefined }> {
  const claim = await load<NodeClaim>(ctx.backend, keys.nodeClaim(principal));
  if (!claim) return { stale: undefined };
  const holder = await load<NodeRecord>(ctx.backend, keys.node(claim.value.node));
  return holder && holder.value.id === claim.value.nodeId ? { claim, holder } : { stale: claim };
}

function nameTaken(principal: string, holder: string): MeziteError {
  return new MeziteError(
    "ERR_ALREADY_EXISTS",
    `"${principal}" already belongs to node "${holder}": pick another name, or replace that machine with a token from mezctl tokens add --type=node --replace=${holder}`,
  );
}

/**
 * Keeps a removed or replaced node's host key revoked for agents until the last host certificate
 * the service issued for it expires: the record's hostCertsIssuedUntil, which only issuance moves
 * (a heartbeat's reported expiry never does). A record from before that field: a week from now,
 * the longest any certificate issued until now can live.
 */
export function revokeHostKey(node: NodeRecord, now: number): WriteOp {
  return { op: "put", key: keys.revokedHostKey(node.id), value: node.hostKey, expires: node.hostCertsIssuedUntil ?? now + HOST_CERT_TTL_MS };
}

/** Host keys of removed or replaced nodes whose certificates have not all expired: `@revoked` lines for agents. */
export async function revokedHostKeys(ctx: AuthContext): Promise<string[]> {
  return (await ctx.backend.range(keys.revokedHostKeys)).map((i) => i.value);
}

/**
 * The writes that claim the new node's principals and record it, replacing `replaced` (whose
 * claims it may take over). Every claim is a create or a compare-and-swap on what was read, so
 * two joins racing for one name cannot both win.
 */
async function claimOps(ctx: AuthContext, node: NodeRecord, replaced: Loaded<NodeRecord> | undefined): Promise<WriteOp[]> {
  const ops: WriteOp[] = [];
  for (const principal of claimedBy(node)) {
    const found = await liveClaim(ctx, principal);
    const value = encode({ nodeId: node.id, node: node.name } satisfies NodeClaim);
    if ("holder" in found) {
      if (found.holder.value.id !== replaced?.value.id) throw nameTaken(principal, found.holder.value.name);
      ops.push({ op: "cas", key: keys.nodeClaim(principal), revision: found.claim.revision, value });
    } else if (found.stale) {
      ops.push({ op: "cas", key: keys.nodeClaim(principal), revision: found.stale.revision, value });
    } else {
      ops.push({ op: "create", key: keys.nodeClaim(principal), value });
    }
  }
  if (replaced) {
    ops.push({ op: "cas", key: keys.node(node.name), revision: replaced.revision, value: encode(node) }, revokeHostKey(replaced.value, ctx.now()));
  } else {
    ops.push({ op: "create", key: keys.node(node.name), value: encode(node) });
  }
  return ops;
}

/** The node a --replace token replaces, which must be the name being joined; undefined otherwise. */
async function replacedNode(ctx: AuthContext, token: TokenRecord, name: string): Promise<Loaded<NodeRecord> | undefined> {
  if (!token.replaces) return undefined;
  if (token.replaces.toLowerCase() !== name.toLowerCase()) {
    throw new MeziteError("ERR_USAGE", `this token replaces node "${token.replaces}": join with --hostname=${token.replaces}`);
  }
  return load<NodeRecord>(ctx.backend, keys.node(token.replaces));
}

export async function joinNode(ctx: AuthContext, req: JoinNodeRequest, caller: Caller): Promise<JoinNodeResponse> {
  v.hexId(req.tokenId, 32, "token_id");
  const name = v.hostPrincipal(req.hostname, "hostname");
  const principals = [...new Set(req.principals.map((p) => v.hostPrincipal(p, "principals")))];
  const hostKey = v.sshKey(req.hostPublicKey, "host_public_key");
  const tlsKey = v.p256Key(req.tlsPublicKey, "tls_public_key");
  v.bytes(req.nonce, 32, "nonce");
  v.bytes(req.proof, 64, "proof");
  let labels: Record<string, string> = {};
  try {
    const token = await checkToken(ctx, req.tokenId, "node", joinNodeRequestTranscript(req), req.proof);
    labels = token.value.labels ?? {};
    const replaced = await replacedNode(ctx, token.value, name);
    const now = ctx.now();
    const cas = ctx.cas;
    const node: NodeRecord = {
      id: randomUUID(),
      name: replaced?.value.name ?? name,
      labels,
      principals,
      hostKey: formatAuthorizedKey(hostKey),
      address: caller.remoteAddr,
      lastHeartbeat: now,
      hostCertExpires: now + HOST_CERT_TTL_MS,
      joined: now,
      hostCaKey: cas.host.server.sshFingerprint,
      caStates: caStatesOf(cas), // the join writes user_ca.pub too
    };
    const creds = await issueNodeCredentials(ctx, cas, node, hostKey, tlsKey);
    node.hostCertExpires = node.hostCertsIssuedUntil = Number(creds.hostCertExpires);
    const ops = await claimOps(ctx, node, replaced);
    // A lost race for a name: say who won it (the token stays unused).
    await commitJoin(ctx, token, ops, async () => {
      for (const p of claimedBy(node)) {
        const found = await liveClaim(ctx, p);
        if ("holder" in found && found.holder.value.id !== replaced?.value.id) return nameTaken(p, found.holder.value.name);
      }
      return new MeziteError("ERR_COMPARE_FAILED", "another join changed this node's names at the same time: join again");
    });
    if (replaced) await markRevocationsChanged(ctx.backend); // the replaced node's stream ends (watch.ts)
    await ctx.audit.emit({
      type: "node.join",
      identity: node.name,
      remote_addr: caller.remoteAddr,
      detail: `${labelsText(labels)}${replaced ? ` replaced node id ${replaced.value.id}` : ""}`,
    });
    return create(JoinNodeResponseSchema, {
      credentials: creds,
      mac: mac(Buffer.from(token.value.macKey, "base64"), joinNodeReplyTranscript(req, creds)),
    });
  } catch (e) {
    if (isMeziteError(e, "ERR_TOKEN_UNKNOWN")) {
      ctx.audit.tallyUnknownToken(caller.remoteAddr);
      throw e;
    }
    await ctx.audit.emit({
      type: "node.join",
      identity: name,
      remote_addr: caller.remoteAddr,
      success: false,
      error: isMeziteError(e) ? e.code : "ERR_INTERNAL",
      detail: [labelsText(labels), principals.length ? `principals=${principals.join(",")}` : ""].filter(Boolean).join(" "),
    });
    throw e;
  }
}

export function labelsText(labels: Record<string, string>): string {
  return Object.entries(labels).map(([k, l]) => `${k}=${l}`).join(",");
}

/** The calling node's record, if its certificate is still the one of the node by that name. */
export async function callingNode(ctx: AuthContext, caller: Caller): Promise<Loaded<NodeRecord>> {
  const name = caller.cert?.subjectCommonName ?? "";
  const found = await load<NodeRecord>(ctx.backend, keys.node(name));
  if (!found || found.value.id !== caller.cert?.nodeId) {
    throw new MeziteError("ERR_NOT_AUTHORIZED", `node "${name}" was removed or replaced: join it again with a new node token`);
  }
  return found;
}

/** Changes the calling node's record by compare-and-swap: a concurrent rm or replace wins. */
async function updateNode(ctx: AuthContext, caller: Caller, change: (n: NodeRecord) => NodeRecord): Promise<NodeRecord> {
  for (;;) {
    const found = await callingNode(ctx, caller);
    const next = change(found.value);
    try {
      await ctx.backend.compareAndSwap(keys.node(next.name), found.revision, encode(next));
      return next;
    } catch (e) {
      if (!isMeziteError(e, "ERR_COMPARE_FAILED")) throw e;
    }
  }
}

export async function renewNode(ctx: AuthContext, caller: Caller, hostPublicKey: string, tlsPublicKey: Uint8Array): Promise<NodeCredentials> {
  const hostKey = v.sshKey(hostPublicKey, "host_public_key");
  const tlsKey = v.p256Key(tlsPublicKey, "tls_public_key");
  const node = (await callingNode(ctx, caller)).value;
  if (formatAuthorizedKey(hostKey) !== node.hostKey) {
    throw new MeziteError("ERR_NOT_AUTHORIZED", `node "${node.name}" joined with another host key: a new host key needs a new join (mezctl tokens add --type=node --replace=${node.name})`);
  }
  const cas = ctx.cas;
  const creds = await issueNodeCredentials(ctx, cas, node, hostKey, tlsKey);
  const issued = Number(creds.hostCertExpires);
  await updateNode(ctx, caller, (n) => ({
    ...n,
    hostCertExpires: issued,
    hostCertsIssuedUntil: Math.max(n.hostCertsIssuedUntil ?? ctx.now() + HOST_CERT_TTL_MS, issued),
    hostCaKey: cas.host.server.sshFingerprint,
    caStates: { ...n.caStates, ...caStatesOf(cas, NODE_CA_KINDS) },
  }));
  await ctx.audit.emit({ type: "node.renew", identity: node.name, remote_addr: caller.remoteAddr });
  return creds;
}

/**
 * Only the address and the host certificate's expiry it reports (shown in `nodes ls`): nothing a
 * node says changes who it is, nor how long its host key stays revoked (hostCertsIssuedUntil).
 */
export async function heartbeat(ctx: AuthContext, caller: Caller, address: string, hostCertExpires: number): Promise<void> {
  // Empty: the address the service sees. Anything else is shown to users as is: host:port only.
  if (address !== "") v.sshAddress(address, "address");
  await updateNode(ctx, caller, (n) => ({
    ...n,
    address: address || caller.remoteAddr,
    lastHeartbeat: ctx.now(),
    hostCertExpires: hostCertExpires > 0 && hostCertExpires <= n.hostCertExpires ? hostCertExpires : n.hostCertExpires,
  }));
}

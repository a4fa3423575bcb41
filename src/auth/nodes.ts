/**
 * Nodes (SPEC §7): join with a node token, host certificates from the Host CA and heartbeats.
 * What they poll to stop SSH logins within seconds is in revocations.ts.
 */
import type { KeyObject } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import {
  JoinNodeResponseSchema,
  NodeCredentialsSchema,
  type JoinNodeRequest,
  type JoinNodeResponse,
  type NodeCredentials,
} from "../api/gen/mezite/v1/join_pb.js";
import { joinNodeReplyTranscript, joinNodeRequestTranscript } from "../api/transcripts.js";
import { mac } from "../ca/jointoken.js";
import { formatSshCertificate, signSshCertificate } from "../ca/sshcert.js";
import { issueClientCertificate, randomSerial, type P256Point } from "../ca/x509.js";
import { MeziteError, isMeziteError } from "../lib/errors.js";
import type { AuthContext } from "./context.js";
import { BACKDATE_MS } from "./issue.js";
import { checkToken, commitJoin } from "./join.js";
import { encode, keys, load, type NodeRecord } from "./records.js";
import * as v from "./validate.js";

/** Host certificates live a week and are renewed by `mezd node start` well before that. */
export const HOST_CERT_TTL_MS = 7 * 24 * 3_600_000;

export async function issueNodeCredentials(ctx: AuthContext, node: NodeRecord, hostKey: KeyObject, tlsKey: P256Point): Promise<NodeCredentials> {
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
    ctx.cas.host.sshPrivate,
  );
  const tlsPem = await issueClientCertificate({
    caCertPem: ctx.cas.host.x509CertPem,
    caKey: ctx.cas.host.x509Key,
    publicKey: tlsKey,
    notBefore: new Date(now - BACKDATE_MS),
    notAfter: new Date(notAfter),
    commonName: node.name,
    organization: ctx.clusterName,
    spiffeId: `spiffe://${ctx.clusterName}/node/${node.name}`,
    kind: "node",
  });
  return create(NodeCredentialsSchema, {
    hostCertificate: formatSshCertificate(hostCert, `node/${node.name}`),
    tlsCertificatePem: tlsPem,
    tlsCaPem: ctx.cas.host.x509CertPem,
    userCaSshKeys: [ctx.cas.user.sshPublicLine],
    hostCaSshKeys: [ctx.cas.host.sshPublicLine],
    nodeName: node.name,
    labels: node.labels,
    hostCertExpires: BigInt(notAfter),
  });
}

export async function joinNode(ctx: AuthContext, req: JoinNodeRequest, remoteAddr: string): Promise<JoinNodeResponse> {
  v.hexId(req.tokenId, 32, "token_id");
  const name = v.hostname(req.hostname, "hostname");
  req.principals.forEach((p) => v.hostname(p, "principals"));
  const hostKey = v.sshKey(req.hostPublicKey, "host_public_key");
  const tlsKey = v.p256Key(req.tlsPublicKey, "tls_public_key");
  v.bytes(req.nonce, 32, "nonce");
  v.bytes(req.proof, 64, "proof");
  try {
    const token = await checkToken(ctx, req.tokenId, "node", joinNodeRequestTranscript(req), req.proof);
    const now = ctx.now();
    const node: NodeRecord = {
      name,
      labels: token.value.labels ?? {},
      principals: req.principals,
      address: remoteAddr,
      lastHeartbeat: now,
      hostCertExpires: now + HOST_CERT_TTL_MS,
      joined: now,
    };
    const creds = await issueNodeCredentials(ctx, node, hostKey, tlsKey);
    await commitJoin(ctx, token, [{ op: "put", key: keys.node(name), value: encode(node) }]);
    await ctx.audit.emit({ type: "node.join", identity: name, remote_addr: remoteAddr, detail: Object.entries(node.labels).map(([k, l]) => `${k}=${l}`).join(",") });
    return create(JoinNodeResponseSchema, {
      credentials: creds,
      mac: mac(Buffer.from(token.value.macKey, "base64"), joinNodeReplyTranscript(req, creds)),
    });
  } catch (e) {
    await ctx.audit.emit({ type: "node.join", identity: name, remote_addr: remoteAddr, success: false, error: isMeziteError(e) ? e.code : "ERR_INTERNAL" });
    throw e;
  }
}

export async function renewNode(ctx: AuthContext, nodeName: string, hostPublicKey: string, tlsPublicKey: Uint8Array): Promise<NodeCredentials> {
  const hostKey = v.sshKey(hostPublicKey, "host_public_key");
  const tlsKey = v.p256Key(tlsPublicKey, "tls_public_key");
  const found = await load<NodeRecord>(ctx.backend, keys.node(nodeName));
  if (!found) throw new MeziteError("ERR_NOT_FOUND", `node ${nodeName} is not registered: join it again with a new node token`);
  const creds = await issueNodeCredentials(ctx, found.value, hostKey, tlsKey);
  await ctx.backend.put(keys.node(nodeName), encode({ ...found.value, hostCertExpires: Number(creds.hostCertExpires) }));
  await ctx.audit.emit({ type: "node.renew", identity: nodeName });
  return creds;
}

export async function heartbeat(ctx: AuthContext, nodeName: string, address: string, hostCertExpires: number): Promise<void> {
  const found = await load<NodeRecord>(ctx.backend, keys.node(nodeName));
  if (!found) return;
  const next: NodeRecord = { ...found.value, address: address || found.value.address, lastHeartbeat: ctx.now(), hostCertExpires: hostCertExpires || found.value.hostCertExpires };
  await ctx.backend.put(keys.node(nodeName), encode(next));
}

/**
 * What the join proofs sign and MAC: an unambiguous encoding of the fields (never protobuf bytes,
 * whose encoding is not canonical). Both sides build it here, from the same messages.
 *
 * Every field of a reply that a client uses is in its MAC, each list item and each label key and
 * value as its own length-prefixed item: an unpinned first join trusts nothing the MAC leaves out
 * (SPEC §4). The "v2" labels mark that rule: a v1 transcript joined lists with separators, so a
 * label value "prod,tier=db" MAC'd like two labels.
 */
import { transcript } from "../ca/jointoken.js";
import type { IssuedCertificates } from "./gen/mezite/v1/common_pb.js";
import type { JoinNodeRequest, JoinRequest, NodeCredentials } from "./gen/mezite/v1/join_pb.js";

export function joinRequestTranscript(r: JoinRequest): Buffer {
  const h = r.host;
  const host = h ? [h.hostName, h.os, h.arch, h.version] : [];
  return transcript("mezite/v2 join-request", [r.tokenId, r.sshPublicKey, r.x509PublicKey, r.renewalPublicKey, r.nonce, BigInt(r.requestedTtlMs), host]);
}

export function issuedTranscript(c: IssuedCertificates): Buffer {
  return transcript("mezite/v2 issued", [
    c.sshCertificate,
    c.x509CertificatePem,
    c.renewalCertificatePem,
    c.userCaSshKeys,
    c.hostCaSshKeys,
    c.userCaX509Pems,
    c.tlsCaPem,
    c.serial,
    BigInt(c.expires),
    c.generation,
    c.identityName,
    c.identityId,
    c.instanceId,
    c.principals,
    c.revokedHostKeys,
    c.caState,
  ]);
}

/** The join reply MAC covers the request too, so a reply cannot be replayed to another join. */
export function joinReplyTranscript(req: JoinRequest, certs: IssuedCertificates): Buffer {
  return Buffer.concat([joinRequestTranscript(req), issuedTranscript(certs)]);
}

export function joinNodeRequestTranscript(r: JoinNodeRequest): Buffer {
  return transcript("mezite/v2 join-node-request", [r.tokenId, r.hostname, r.principals, r.hostPublicKey, r.tlsPublicKey, r.nonce]);
}

/** Labels as one flat list, sorted by key: key, value, key, value (each its own item). */
function labelItems(labels: Record<string, string>): string[] {
  return Object.keys(labels).sort().flatMap((k) => [k, labels[k]!]);
}

export function joinNodeReplyTranscript(req: JoinNodeRequest, c: NodeCredentials): Buffer {
  return Buffer.concat([
    joinNodeRequestTranscript(req),
    transcript("mezite/v2 node-credentials", [
      c.hostCertificate, c.tlsCertificatePem, c.tlsCaPem, c.userCaSshKeys, c.hostCaSshKeys, c.nodeName, labelItems(c.labels), BigInt(c.hostCertExpires), c.caState,
    ]),
  ]);
}

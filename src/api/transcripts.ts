/**
 * What the join proofs sign and MAC: an unambiguous encoding of the fields (never protobuf bytes,
 * whose encoding is not canonical). Both sides build it here, from the same messages.
 */
import { transcript } from "../ca/jointoken.js";
import type { IssuedCertificates } from "./gen/mezite/v1/common_pb.js";
import type { JoinNodeRequest, JoinRequest, NodeCredentials } from "./gen/mezite/v1/join_pb.js";

export function joinRequestTranscript(r: JoinRequest): Buffer {
  return transcript("mezite/v1 join-request", [r.tokenId, r.sshPublicKey, r.x509PublicKey, r.renewalPublicKey, r.nonce, BigInt(r.requestedTtlMs)]);
}

export function issuedTranscript(c: IssuedCertificates): Buffer {
  return transcript("mezite/v1 issued", [
    c.sshCertificate,
    c.x509CertificatePem,
    c.renewalCertificatePem,
    c.userCaSshKeys.join("\n"),
    c.hostCaSshKeys.join("\n"),
    c.userCaX509Pems.join("\n"),
    c.tlsCaPem,
    c.serial,
    BigInt(c.expires),
    c.generation,
    c.identityName,
    c.identityId,
    c.instanceId,
    c.principals.join(","),
    c.caState,
  ]);
}

/** The join reply MAC covers the request too, so a reply cannot be replayed to another join. */
export function joinReplyTranscript(req: JoinRequest, certs: IssuedCertificates): Buffer {
  return Buffer.concat([joinRequestTranscript(req), issuedTranscript(certs)]);
}

export function joinNodeRequestTranscript(r: JoinNodeRequest): Buffer {
  return transcript("mezite/v1 join-node-request", [r.tokenId, r.hostname, r.principals.join(","), r.hostPublicKey, r.tlsPublicKey, r.nonce]);
}

export function joinNodeReplyTranscript(req: JoinNodeRequest, c: NodeCredentials): Buffer {
  const labels = Object.entries(c.labels).sort(([a], [b]) => (a < b ? -1 : 1)).map(([k, v]) => `${k}=${v}`).join(",");
  return Buffer.concat([
    joinNodeRequestTranscript(req),
    transcript("mezite/v1 node-credentials", [
      c.hostCertificate, c.tlsCertificatePem, c.tlsCaPem, c.userCaSshKeys.join("\n"), c.hostCaSshKeys.join("\n"), c.nodeName, labels, BigInt(c.hostCertExpires), c.caState,
    ]),
  ]);
}

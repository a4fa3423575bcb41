/**
 * The node side of JoinNode (SPEC §4, §7): keys made here, the request proven with the
 * token-derived key, and the reply trusted only once its MAC verifies and its certificates are
 * for our keys and signed by the Host CA it names.
 */
import { randomBytes, type KeyObject } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import { JoinNodeRequestSchema, type JoinNodeRequest, type JoinNodeResponse, type NodeCredentials } from "../api/gen/mezite/v1/join_pb.js";
import { checkNodeValues } from "../api/reply-values.js";
import { joinNodeReplyTranscript, joinNodeRequestTranscript } from "../api/transcripts.js";
import { deriveTokenSecrets, signProof, verifyMac } from "../ca/jointoken.js";
import { parseSshCertificate, verifySshCertificate } from "../ca/sshcert.js";
import { ed25519RawPublic, generateEd25519, formatAuthorizedKey, parseAuthorizedKey } from "../ca/sshkey.js";
import { generateP256, parseCertificatePem, publicKeyToDer, splitCertificateBundle } from "../ca/x509.js";
import { MeziteError } from "../lib/errors.js";

export interface NodeKeys {
  /** Ed25519 SSH host key. */
  host: KeyObject;
  /** P-256 key of the node's mTLS certificate. */
  tls: KeyObject;
}

export function generateNodeKeys(): NodeKeys {
  return { host: generateEd25519(), tls: generateP256().privateKey };
}

export function buildJoinNodeRequest(token: Buffer, hostname: string, principals: string[], keys: NodeKeys): { request: JoinNodeRequest; macKey: Buffer } {
  const secrets = deriveTokenSecrets(token);
  const request = create(JoinNodeRequestSchema, {
    tokenId: secrets.tokenId,
    hostname,
    principals,
    hostPublicKey: formatAuthorizedKey(keys.host),
    tlsPublicKey: publicKeyToDer(keys.tls),
    nonce: randomBytes(32),
  });
  request.proof = signProof(secrets.signingKey, joinNodeRequestTranscript(request));
  return { request, macKey: secrets.macKey };
}

export function verifyJoinNodeReply(request: JoinNodeRequest, reply: JoinNodeResponse, macKey: Buffer, keys: NodeKeys, nowMs: number): NodeCredentials {
  const creds = reply.credentials;
  if (!creds || !verifyMac(macKey, joinNodeReplyTranscript(request, creds), reply.mac)) {
    throw new MeziteError("ERR_BAD_PROOF", "the join reply does not prove knowledge of the token: the server is not the cluster's auth service (or the reply was altered)");
  }
  checkNodeCredentials(creds, keys, nowMs);
  return creds;
}

/**
 * The host certificate must be a host certificate for our key, signed by a Host CA the reply
 * names and valid now; the TLS certificate must be for our TLS key. Also applied to renewals.
 */
export function checkNodeCredentials(c: NodeCredentials, keys: NodeKeys, nowMs: number): void {
  const bad = (why: string, cause?: unknown) => new MeziteError("ERR_MALFORMED_CERT", `the auth service sent node credentials that ${why}`, cause === undefined ? undefined : { cause });
  checkNodeValues(c);
  let hostCert, tlsCert, hostCas: KeyObject[];
  try {
    hostCert = parseSshCertificate(c.hostCertificate);
    tlsCert = parseCertificatePem(c.tlsCertificatePem);
    hostCas = c.hostCaSshKeys.map((l) => parseAuthorizedKey(l));
    c.userCaSshKeys.forEach((l) => parseAuthorizedKey(l));
    splitCertificateBundle(c.tlsCaPem).forEach((pem) => parseCertificatePem(pem));
  } catch (e) {
    throw bad("do not parse", e);
  }
  if (c.userCaSshKeys.length === 0) throw bad("name no User CA key");
  if (hostCert.type !== "host") throw bad("hold a user certificate where the host certificate belongs");
  if (!ed25519RawPublic(hostCert.publicKey).equals(ed25519RawPublic(keys.host))) throw bad("are for another host key than ours");
  if (!publicKeyToDer(tlsCert.publicKey).equals(publicKeyToDer(keys.tls))) throw bad("are for another TLS key than ours");
  const signedByNamedCa = hostCas.some((ca) => {
    try {
      verifySshCertificate(hostCert, ca, Math.floor(nowMs / 1000));
      return true;
    } catch {
      return false;
    }
  });
  if (!signedByNamedCa) throw bad("hold a host certificate not signed by the Host CA, or not valid now");
}

/** The host certificate's validity, for the renewal schedule and heartbeats. */
export function hostCertValidity(line: string): { validAfterMs: number; validBeforeMs: number } {
  const c = parseSshCertificate(line);
  return { validAfterMs: c.validAfter * 1000, validBeforeMs: c.validBefore * 1000 };
}

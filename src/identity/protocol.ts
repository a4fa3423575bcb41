/**
 * The client half of join and renewal (SPEC §4, §6): fresh keys made here, requests built and
 * proven with the token-derived key, and replies checked before anything in them is trusted.
 */
import { randomBytes, type KeyObject } from "node:crypto";
import { arch, hostname, platform } from "node:os";
import { create } from "@bufbuild/protobuf";
import { HostFactsSchema, type HostFacts, type IssuedCertificates } from "../api/gen/mezite/v1/common_pb.js";
import { JoinRequestSchema, type JoinRequest, type JoinResponse } from "../api/gen/mezite/v1/join_pb.js";
import { RenewRequestSchema, type RenewRequest } from "../api/gen/mezite/v1/renew_pb.js";
import { checkIssuedValues } from "../api/reply-values.js";
import { joinReplyTranscript, joinRequestTranscript } from "../api/transcripts.js";
import { deriveTokenSecrets, signProof, verifyMac } from "../ca/jointoken.js";
import { parseSshCertificate } from "../ca/sshcert.js";
import { ed25519RawPublic, generateEd25519, encodeOpenSSHPrivateKey, formatAuthorizedKey, parseOpenSSHPrivateKey } from "../ca/sshkey.js";
import { generateP256, parseCertificatePem, pemToPrivateKey, privateKeyToPem, publicKeyToDer } from "../ca/x509.js";
import { MeziteError } from "../lib/errors.js";
import { buildInfo } from "../lib/version.js";

/** The three private keys behind one issue, made on this machine and never sent. */
export interface IssueKeys {
  ssh: KeyObject;
  x509: KeyObject;
  renewal: KeyObject;
}

export function generateIssueKeys(): IssueKeys {
  return { ssh: generateEd25519(), x509: generateP256().privateKey, renewal: generateP256().privateKey };
}

/** As stored in the pending-request file: PEM text, 0600. */
export interface SerializedKeys {
  ssh: string;
  x509: string;
  renewal: string;
}

export function serializeKeys(k: IssueKeys): SerializedKeys {
  return { ssh: encodeOpenSSHPrivateKey(k.ssh), x509: privateKeyToPem(k.x509), renewal: privateKeyToPem(k.renewal) };
}

export function deserializeKeys(s: SerializedKeys): IssueKeys {
  return { ssh: parseOpenSSHPrivateKey(s.ssh), x509: pemToPrivateKey(s.x509), renewal: pemToPrivateKey(s.renewal) };
}

/** The public halves of a request's keys, as Join, JoinWithIdToken and Renew carry them. */
export const publicKeysOf = (k: IssueKeys) => ({
  sshPublicKey: formatAuthorizedKey(k.ssh),
  x509PublicKey: publicKeyToDer(k.x509),
  renewalPublicKey: publicKeyToDer(k.renewal),
});

/** What the daemon tells of its machine with every join and renewal (SPEC §18): shown, never trusted. */
export function hostFacts(): HostFacts {
  // The service takes printable ASCII only: anything else (a non-ASCII host name) is shown as "?".
  const printable = (s: string) => s.replace(/[^\x20-\x7e]/g, "?").trim().slice(0, 253);
  return create(HostFactsSchema, { hostName: printable(hostname()), os: printable(platform()), arch: printable(arch()), version: printable(buildInfo().version) });
}

export function buildJoinRequest(token: Buffer, keys: IssueKeys, ttlMs: number): { request: JoinRequest; macKey: Buffer } {
  const secrets = deriveTokenSecrets(token);
  const request = create(JoinRequestSchema, {
    tokenId: secrets.tokenId,
    ...publicKeysOf(keys),
    host: hostFacts(),
    nonce: randomBytes(32),
    requestedTtlMs: BigInt(ttlMs),
  });
  request.proof = signProof(secrets.signingKey, joinRequestTranscript(request));
  return { request, macKey: secrets.macKey };
}

/**
 * Trusts a join reply only when its MAC verifies: the server proved it knows the token, so the
 * CA keys in it are the cluster's and not a man in the middle's.
 */
export function verifyJoinReply(request: JoinRequest, reply: JoinResponse, macKey: Buffer, keys: IssueKeys): IssuedCertificates {
  const certs = reply.certificates;
  if (!certs || !verifyMac(macKey, joinReplyTranscript(request, certs), reply.mac)) {
    throw new MeziteError("ERR_BAD_PROOF", "the join reply does not prove knowledge of the token: the server is not the cluster's auth service (or the reply was altered)");
  }
  checkCertsMatchKeys(certs, keys);
  return certs;
}

export function buildRenewRequest(requestId: Uint8Array, keys: IssueKeys, ttlMs: number): RenewRequest {
  return create(RenewRequestSchema, { requestId, ...publicKeysOf(keys), requestedTtlMs: BigInt(ttlMs), host: hostFacts() });
}

/**
 * The certificates must be for the keys we hold, or the outputs would not work together; and
 * every value written from the reply must be one well-formed item.
 */
export function checkCertsMatchKeys(c: IssuedCertificates, keys: IssueKeys): void {
  checkIssuedValues(c);
  const same = (a: Buffer, b: Buffer) => a.equals(b);
  try {
    const ssh = parseSshCertificate(c.sshCertificate);
    const x509 = parseCertificatePem(c.x509CertificatePem);
    const renewal = parseCertificatePem(c.renewalCertificatePem);
    if (
      same(ed25519RawPublic(ssh.publicKey), ed25519RawPublic(keys.ssh)) &&
      same(publicKeyToDer(x509.publicKey), publicKeyToDer(keys.x509)) &&
      same(publicKeyToDer(renewal.publicKey), publicKeyToDer(keys.renewal))
    ) {
      return;
    }
  } catch (e) {
    throw new MeziteError("ERR_MALFORMED_CERT", "the auth service sent certificates that do not parse", { cause: e });
  }
  throw new MeziteError("ERR_MALFORMED_CERT", "the auth service sent certificates for other keys than ours");
}

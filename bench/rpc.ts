/**
 * One call on one new connection, closed right after the reply. src/api/client.ts leaves each
 * connection idle for 5 s (right for a daemon that exits or sleeps 20 minutes); a benchmark making
 * thousands of calls would pile those up on the server and skew it.
 */
import { randomBytes } from "node:crypto";
import type { DescService } from "@bufbuild/protobuf";
import { createClient, type Client } from "@connectrpc/connect";
import { Http2SessionManager, createGrpcTransport } from "@connectrpc/connect-node";
import type { ClientTls } from "../src/api/client.js";
import { JoinService } from "../src/api/gen/mezite/v1/join_pb.js";
import { RenewService } from "../src/api/gen/mezite/v1/renew_pb.js";
import { privateKeyToPem } from "../src/ca/x509.js";
import { buildJoinRequest, buildRenewRequest, generateIssueKeys, verifyJoinReply } from "../src/identity/protocol.js";

export async function once<T extends DescService, R>(service: T, addr: string, tls: ClientTls, fn: (c: Client<T>) => Promise<R>): Promise<R> {
  const url = `https://${addr}`;
  const verify = tls.caPem !== undefined;
  const sessionManager = new Http2SessionManager(url, {}, {
    ...(tls.certPem !== undefined ? { cert: tls.certPem, key: tls.keyPem } : {}),
    ...(verify ? { ca: tls.caPem } : {}),
    rejectUnauthorized: verify,
    minVersion: "TLSv1.3",
  });
  try {
    return await fn(createClient(service, createGrpcTransport({ baseUrl: url, sessionManager, defaultTimeoutMs: 30_000 })));
  } finally {
    sessionManager.abort();
  }
}

/** A daemon's renewal state: what it presents on the next renewal. */
export interface Renewer {
  certPem: string;
  keyPem: string;
  caPem: string;
}

/** Joins with a token as mezd identity does (fresh keys, proof, reply MAC checked). */
export async function joinOnce(addr: string, token: string): Promise<Renewer> {
  const keys = generateIssueKeys();
  const { request, macKey } = buildJoinRequest(Buffer.from(token, "hex"), keys, 3_600_000);
  const reply = await once(JoinService, addr, {}, (c) => c.join(request));
  const certs = verifyJoinReply(request, reply, macKey, keys);
  return { certPem: certs.renewalCertificatePem, keyPem: privateKeyToPem(keys.renewal), caPem: certs.tlsCaPem };
}

/** Renews with fresh keys; `r` then holds the new renewal certificate. */
export async function renewOnce(addr: string, r: Renewer): Promise<void> {
  const keys = generateIssueKeys();
  const res = await once(RenewService, addr, { certPem: r.certPem, keyPem: r.keyPem, caPem: r.caPem }, (c) =>
    c.renew(buildRenewRequest(randomBytes(16), keys, 3_600_000)),
  );
  if (!res.certificates) throw new Error("renew reply without certificates");
  r.certPem = res.certificates.renewalCertificatePem;
  r.keyPem = privateKeyToPem(keys.renewal);
}

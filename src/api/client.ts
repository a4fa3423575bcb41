/**
 * gRPC clients over TLS for every program that talks to the auth service. The one place that
 * knows how addresses, client certificates and server verification are wired.
 */
import { createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import type { DescService } from "@bufbuild/protobuf";
import type { PeerCertificate } from "node:tls";

export interface ClientTls {
  /** Client certificate and key (PEM) for mTLS; absent for Join. */
  certPem?: string;
  keyPem?: string;
  /** The CA that must have signed the server's certificate; absent = not verified (Join only). */
  caPem?: string;
  /** Called with the server's certificate chain before any request is sent (CA pinning). */
  checkServer?: (cert: PeerCertificate) => Error | undefined;
}

/** Bounds every call, so a dead server is an error rather than a hang. */
export const DEFAULT_CALL_TIMEOUT_MS = 15_000;

export function normalizeAddr(addr: string): string {
  const a = addr.replace(/^https?:\/\//, "").replace(/\/+$/, "");
  return /:\d+$/.test(a) ? a : `${a}:3025`;
}

export function connect<T extends DescService>(service: T, addr: string, tls: ClientTls): Client<T> {
  const verify = tls.caPem !== undefined;
  const transport = createGrpcTransport({
    baseUrl: `https://${normalizeAddr(addr)}`,
    defaultTimeoutMs: DEFAULT_CALL_TIMEOUT_MS,
    // Daemons make a new client per renewal: let each connection go soon after its call.
    idleConnectionTimeoutMs: 5_000,
    nodeOptions: {
      ...(tls.certPem !== undefined ? { cert: tls.certPem } : {}),
      ...(tls.keyPem !== undefined ? { key: tls.keyPem } : {}),
      ...(verify ? { ca: tls.caPem } : {}),
      rejectUnauthorized: verify,
      minVersion: "TLSv1.3",
      ...(tls.checkServer ? { checkServerIdentity: (_host: string, cert: PeerCertificate) => tls.checkServer!(cert) } : {}),
    },
  });
  return createClient(service, transport);
}

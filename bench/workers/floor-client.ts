/**
 * The client half of the crypto floor's server measurements, run in a child process so that only
 * the server's CPU is counted: `concurrency` loops, each opening a new connection per operation,
 * until killed. Mode "tls": a full TLS 1.3 handshake with a client certificate, then close. Mode
 * "grpc": one Renew call on a new HTTP/2 connection, then close (the transport a renewal pays for).
 */
import { connect } from "node:tls";
import { createClient } from "@connectrpc/connect";
import { Http2SessionManager, createGrpcTransport } from "@connectrpc/connect-node";
import { RenewService } from "../../src/api/gen/mezite/v1/renew_pb.js";

export interface ClientSetup {
  mode: "tls" | "grpc";
  port: number;
  certPem: string;
  keyPem: string;
  caPem: string;
  concurrency: number;
}

function tlsLoop(s: ClientSetup): void {
  const sock = connect({ host: "127.0.0.1", port: s.port, cert: s.certPem, key: s.keyPem, ca: s.caPem, minVersion: "TLSv1.3", ALPNProtocols: ["h2"], servername: "localhost" });
  sock.on("secureConnect", () => sock.end());
  sock.on("error", () => {});
  sock.on("close", () => tlsLoop(s));
  sock.resume();
}

async function grpcLoop(s: ClientSetup): Promise<void> {
  const url = `https://127.0.0.1:${s.port}`;
  for (;;) {
    const sessionManager = new Http2SessionManager(url, {}, { cert: s.certPem, key: s.keyPem, ca: s.caPem, minVersion: "TLSv1.3", servername: "localhost" });
    try {
      await createClient(RenewService, createGrpcTransport({ baseUrl: url, sessionManager })).renew({ requestId: new Uint8Array(16) });
    } catch {
      // the server is being stopped
    } finally {
      sessionManager.abort();
    }
  }
}

process.once("message", (s: ClientSetup) => {
  for (let i = 0; i < s.concurrency; i++) {
    if (s.mode === "tls") tlsLoop(s);
    else void grpcLoop(s);
  }
});

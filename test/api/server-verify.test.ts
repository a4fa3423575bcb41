/**
 * How every client (daemon, node agent, mezctl, msh) verifies the auth service's TLS certificate
 * (src/api/client.ts verifiedConnection, src/ca/x509.ts serverCertificateProblem): against the
 * cluster's TLS CA bundle and nothing else, before a byte of HTTP/2 is sent. A real HTTP/2 server
 * over TLS presents each certificate; a refused one must see no HTTP/2 preface and no request.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createSecureServer, type Http2SecureServer, type ServerHttp2Session } from "node:http2";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { before, describe, test } from "node:test";
import { ConnectError } from "@connectrpc/connect";
import { connect } from "../../src/api/client.js";
import { JoinService } from "../../src/api/gen/mezite/v1/join_pb.js";
import { OPENSSL_PATH, missingComponent } from "../harness/require.js";
import { createCaCertificate, generateP256, issueClientCertificate, issueServerCertificate, pemDecode, pemEncode, privateKeyToPem, type KeyPair } from "../../src/ca/x509.js";

const HOUR = 3_600_000;
const now = Date.now();

interface Ca {
  pem: string;
  keys: KeyPair;
}

async function makeCa(name: string, notAfter = new Date(now + HOUR)): Promise<Ca> {
  const keys = generateP256();
  return { keys, pem: await createCaCertificate({ commonName: name, keys, notBefore: new Date(now - HOUR), notAfter }) };
}

/** A server certificate of `ca` for `names` (IPs and DNS names), and its key. */
async function serverCert(ca: Ca, names: { ip?: string[]; dns?: string[] }, notAfter = new Date(now + HOUR)): Promise<{ cert: string; key: string }> {
  const keys = generateP256();
  const cert = await issueServerCertificate({ caCertPem: ca.pem, caKey: ca.keys.privateKey, publicKey: keys.publicKey, notBefore: new Date(now - 2 * HOUR), notAfter, commonName: "auth", dnsNames: names.dns ?? [], ipAddresses: names.ip ?? [] });
  return { cert, key: privateKeyToPem(keys.privateKey) };
}

/** One server per test: counts the HTTP/2 SETTINGS (the client's preface) and the requests it received. */
class Server {
  settings = 0;
  requests = 0;
  private server!: Http2SecureServer;
  private sessions: ServerHttp2Session[] = [];
  port = 0;

  async start(tls: { cert: string; key: string }): Promise<void> {
    this.server = createSecureServer(tls);
    this.server.on("session", (s) => {
      this.sessions.push(s);
      s.on("remoteSettings", () => this.settings++);
    });
    this.server.on("stream", (stream) => {
      this.requests++;
      // Any well-formed gRPC reply: reaching here is what the good cases test.
      stream.respond({ ":status": 200, "content-type": "application/grpc", "grpc-status": "12", "grpc-message": "reached" }, { endStream: true });
    });
    await new Promise<void>((r) => this.server.listen(0, "127.0.0.1", r));
    this.port = (this.server.address() as AddressInfo).port;
  }

  async stop(): Promise<void> {
    // The client keeps an idle connection for 5 s: closed here, the test need not wait for it.
    for (const s of this.sessions) s.destroy();
    await new Promise((r) => this.server.close(r));
  }
}

/** Calls the server at `host` trusting `caPem`; the call's error message (the call always fails). */
async function call(server: Server, host: string, caPem: string): Promise<string> {
  try {
    await connect(JoinService, `${host}:${server.port}`, { caPem }).joinNode({}, { timeoutMs: 5_000 });
  } catch (e) {
    return ConnectError.from(e).rawMessage;
  }
  throw new Error("the call succeeded against a server that only answers errors");
}

describe("the auth service's TLS certificate, as every client verifies it", () => {
  let ca: Ca;
  let otherCa: Ca;
  before(async () => {
    [ca, otherCa] = await Promise.all([makeCa("cluster TLS CA"), makeCa("another CA")]);
  });

  async function outcome(tls: { cert: string; key: string }, caPem: string, host = "127.0.0.1"): Promise<{ message: string; settings: number; requests: number }> {
    const server = new Server();
    await server.start(tls);
    try {
      const message = await call(server, host, caPem);
      return { message, settings: server.settings, requests: server.requests };
    } finally {
      await server.stop();
    }
  }

  function refused(o: { message: string; settings: number; requests: number }, why: RegExp): void {
    assert.match(o.message, why);
    assert.equal(o.settings, 0, "no HTTP/2 preface reached the server");
    assert.equal(o.requests, 0, "no request reached the server");
  }

  test("a certificate of the bundle's CA for the address dialled is accepted (IP and DNS name)", async () => {
    const byIp = await outcome(await serverCert(ca, { ip: ["127.0.0.1"] }), ca.pem);
    assert.match(byIp.message, /reached/);
    assert.equal(byIp.requests, 1);
    const byName = await outcome(await serverCert(ca, { dns: ["localhost"] }), ca.pem, "localhost");
    assert.match(byName.message, /reached/);
  });

  test("during a rotation the bundle holds two CAs: a certificate of either is accepted", async () => {
    const o = await outcome(await serverCert(ca, { ip: ["127.0.0.1"] }), otherCa.pem + ca.pem);
    assert.match(o.message, /reached/);
  });

  test("a certificate of another CA is refused before anything is sent", async () => {
    refused(await outcome(await serverCert(otherCa, { ip: ["127.0.0.1"] }), ca.pem), /the auth service's TLS certificate is not signed by the cluster's TLS CA/);
  });

  test("a certificate of the cluster's CA with its signature altered (a forgery naming that CA) is refused", async () => {
    const good = await serverCert(ca, { ip: ["127.0.0.1"] });
    const der = pemDecode(good.cert, "CERTIFICATE");
    der[der.length - 1]! ^= 1; // the last byte of the signature's s: still DER, no longer the CA's signature
    refused(await outcome({ cert: pemEncode(der, "CERTIFICATE"), key: good.key }, ca.pem), /is not signed by the cluster's TLS CA/);
  });

  test("a node's certificate (same CA, clientAuth only, its CN the host dialled) is refused as a server's", async () => {
    const keys = generateP256();
    const cert = await issueClientCertificate({ caCertPem: ca.pem, caKey: ca.keys.privateKey, publicKey: keys.publicKey, notBefore: new Date(now - HOUR), notAfter: new Date(now + HOUR), commonName: "localhost", kind: "node", nodeId: "n1" });
    refused(await outcome({ cert, key: privateKeyToPem(keys.privateKey) }, ca.pem, "localhost"), /is not a server certificate/);
  });

  test("the CA's own certificate presented as the server's is refused", async () => {
    refused(await outcome({ cert: ca.pem, key: privateKeyToPem(ca.keys.privateKey) }, ca.pem), /is not a server certificate/);
  });

  // Certificates our CA code cannot make, made with openssl. The bundle certificate that signed the
  // server's must be a CA (basicConstraints) allowed to sign certificates (keyUsage), and the
  // server's must name it as its issuer: here the third is signed by the bundle CA's key under
  // another CA certificate's name.
  for (const [what, caExt, signer] of [
    ["that is not a CA (basicConstraints CA:FALSE)", "basicConstraints=critical,CA:FALSE", "ca"],
    ["whose key usage lacks keyCertSign", "keyUsage=critical,digitalSignature", "ca"],
    ["under another name (the bundle CA's key, another issuer)", "basicConstraints=critical,CA:TRUE", "renamed"],
  ] as const) {
    test(`a certificate signed by a bundle certificate ${what} is refused`, async (t) => {
      if (OPENSSL_PATH === undefined) return missingComponent(t, "openssl", "apt-get install openssl");
      const dir = mkdtempSync(join(tmpdir(), "mezite-verify-"));
      try {
        const openssl = (...args: string[]) => {
          const r = spawnSync(OPENSSL_PATH!, args, { cwd: dir, encoding: "utf8" });
          assert.equal(r.status, 0, r.stderr);
        };
        const p256 = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
        openssl("req", "-x509", ...p256, "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=bundle", "-days", "1", "-addext", caExt);
        openssl("req", "-x509", "-key", "ca.key", "-out", "renamed.pem", "-subj", "/CN=renamed", "-days", "1");
        openssl("req", "-new", ...p256, "-keyout", "srv.key", "-out", "srv.csr", "-subj", "/CN=auth");
        writeFileSync(join(dir, "srv.ext"), "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n");
        openssl("x509", "-req", "-in", "srv.csr", "-CA", `${signer}.pem`, "-CAkey", "ca.key", "-CAcreateserial", "-days", "1", "-extfile", "srv.ext", "-out", "srv.pem");
        const read = (f: string) => readFileSync(join(dir, f), "utf8");
        refused(await outcome({ cert: read("srv.pem"), key: read("srv.key") }, read("ca.pem")), /is not signed by the cluster's TLS CA/);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });
  }

  test("a certificate for another host is refused", async () => {
    refused(await outcome(await serverCert(ca, { dns: ["auth.example.com"], ip: ["10.0.0.1"] }), ca.pem), /is not for 127\.0\.0\.1/);
  });

  test("an expired certificate is refused, and so is one of an expired CA", async () => {
    refused(await outcome(await serverCert(ca, { ip: ["127.0.0.1"] }, new Date(now - 60_000)), ca.pem), /is not valid now/);
    const expiredCa = await makeCa("expired CA", new Date(now - 60_000));
    refused(await outcome(await serverCert(expiredCa, { ip: ["127.0.0.1"] }, new Date(now - 60_000 - 1)), expiredCa.pem), /is signed by a TLS CA that is not valid now/);
  });

  test("a bundle that holds no certificate refuses every server, with the reason", async () => {
    refused(await outcome(await serverCert(ca, { ip: ["127.0.0.1"] }), "not a PEM"), /cannot be checked: expected one or more PEM CERTIFICATE blocks/);
  });
});

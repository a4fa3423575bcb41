/**
 * The crypto floor (bench section 1), in one process: the crypto one renewal cannot avoid, each
 * part measured in this process's CPU time (not wall time: the machine is shared).
 *  - the server side of a TLS 1.3 handshake with a P-256 client certificate, configured as the
 *    auth service is (P-256 server chain, client chain checked against the CAs), with the client
 *    loop in a child process so only the server's CPU is counted. Measured with and without TLS
 *    1.3 session tickets: the floor takes the cheaper, since no daemon ever resumes a session;
 *  - one Ed25519 signature (the SSH certificate) and two ECDSA P-256 signatures (the X.509 output
 *    and renewal certificates) over messages of the real sizes.
 * For the findings it also measures, on the same footing, the layers above the floor: a Renew call
 * on a new connection answered with a canned reply of a real renewal's size, by gRPC framed by hand
 * on Node's HTTP/2 and by the connect adapter the service uses (same TLS, session tickets on); and
 * the service's own issuing code (issueAgentCertificates).
 * Usage: floor.ts WINDOW_MS ROUNDS. Prints one JSON line.
 */
import { fork } from "node:child_process";
import { constants, generateKeyPairSync, randomBytes, randomUUID, sign } from "node:crypto";
import { createSecureServer } from "node:http2";
import type { AddressInfo, Server } from "node:net";
import { createServer, type TLSSocket } from "node:tls";
import { create, toBinary } from "@bufbuild/protobuf";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { RenewResponseSchema, RenewService } from "../../src/api/gen/mezite/v1/renew_pb.js";
import { openCaStore } from "../../src/auth/cas.js";
import { instanceAccess, issueAgentCertificates } from "../../src/auth/issue.js";
import { MemoryBackend } from "../../src/backend/memory.js";
import { generateP256, issueClientCertificate, issueServerCertificate, p256PointFromDer, privateKeyToPem, publicKeyToDer } from "../../src/ca/x509.js";
import { parseRoleYaml } from "../../src/rbac/role.js";
import { SEED_ROLE } from "../../test/harness/auth.js";
import { median, sleep, tempDir } from "../lib.js";
import type { ClientSetup } from "./floor-client.js";

const windowMs = Number(process.argv[2] ?? "3000");
const rounds = Number(process.argv[3] ?? "2");

function cpuUs(): number {
  const u = process.cpuUsage();
  return u.user + u.system;
}

/** CPU microseconds per call of `fn`, run for about `ms` of CPU time. */
async function perCall(fn: () => unknown, ms: number): Promise<number> {
  for (let i = 0; i < 200; i++) await fn(); // warm up
  const start = cpuUs();
  let n = 0;
  while (cpuUs() - start < ms * 1000) {
    for (let i = 0; i < 20; i++) await fn();
    n += 20;
  }
  return (cpuUs() - start) / n;
}

const now = Date.now();
const { cas } = await openCaStore(new MemoryBackend(), tempDir("floor"), "bench.mezite", now);
const validity = { notBefore: new Date(now - 60_000), notAfter: new Date(now + 3_600_000) };
const serverKeys = generateP256();
const serverCert = await issueServerCertificate({
  caCertPem: cas.host.x509CertPem, caKey: cas.host.x509Key, publicKey: serverKeys.publicKey, ...validity,
  commonName: "bench auth", dnsNames: ["localhost"], ipAddresses: ["127.0.0.1"],
});
const clientKeys = generateP256();
const clientCert = await issueClientCertificate({
  caCertPem: cas.user.x509CertPem, caKey: cas.user.x509Key, publicKey: clientKeys.publicKey, ...validity,
  commonName: "bench-identity", organization: "bench.mezite", kind: "renewal", identityId: randomUUID(), instanceId: randomUUID(), generation: 7n,
});

/** The auth service's TLS settings (src/auth/server.ts). */
const tls = (tickets: boolean) => ({
  key: privateKeyToPem(serverKeys.privateKey),
  cert: serverCert + cas.host.x509CertPem,
  ca: [cas.user.x509CertPem, cas.host.x509CertPem],
  requestCert: true,
  rejectUnauthorized: false,
  minVersion: "TLSv1.3" as const,
  ALPNProtocols: ["h2"],
  ...(tickets ? {} : { secureOptions: constants.SSL_OP_NO_TICKET }),
});

// A real renewal's reply, for the gRPC stack measurement.
const roles = [{ ...parseRoleYaml(SEED_ROLE), created: now }];
const identity = { id: randomUUID(), name: "bench-identity", roles: ["ci-deployer"], created: now };
// As the service gets them: the P-256 keys as checked points (validate.ts).
const point = () => p256PointFromDer(publicKeyToDer(generateP256().publicKey));
const pub = { ssh: generateKeyPairSync("ed25519").publicKey, x509: point(), renewal: point() };
const issueOnce = () =>
  issueAgentCertificates({ cas, clusterName: "bench.mezite", identity, access: instanceAccess(roles, undefined), instanceId: randomUUID(), generation: 8n, keys: pub, requestedTtlMs: 3_600_000, now: Date.now(), revokedHostKeys: [] });
const reply = create(RenewResponseSchema, { certificates: (await issueOnce()).certs });

type Kind = "tls+tickets" | "tls" | "h2" | "grpc";

/** The reply as gRPC frames it: flag byte, 4-byte length, message. */
const framed = (() => {
  const msg = toBinary(RenewResponseSchema, reply);
  const head = Buffer.alloc(5);
  head.writeUInt32BE(msg.length, 1);
  return Buffer.concat([head, msg]);
})();

function startServer(kind: Kind, onOp: () => void): Server {
  if (kind === "h2") {
    // gRPC by hand on Node's HTTP/2: what the transport costs without a framework on top.
    const s = createSecureServer(tls(true));
    s.on("stream", (stream) => {
      stream.on("error", () => {}); // the client is killed mid-call at the end
      stream.on("data", () => {});
      stream.on("end", () => {
        if (stream.destroyed) return;
        onOp();
        stream.respond({ ":status": 200, "content-type": "application/grpc+proto" }, { waitForTrailers: true });
        stream.on("wantTrailers", () => stream.sendTrailers({ "grpc-status": "0" }));
        stream.end(framed);
      });
    });
    s.on("sessionError", () => {});
    return s;
  }
  if (kind === "grpc") {
    const handler = connectNodeAdapter({
      routes: (r) => r.service(RenewService, { renew: () => (onOp(), reply) }),
      readMaxBytes: 64 * 1024,
    });
    const s = createSecureServer(tls(true), handler);
    s.on("sessionError", () => {});
    return s;
  }
  const s = createServer(tls(kind === "tls+tickets"), (sock: TLSSocket) => {
    onOp();
    sock.on("error", () => {});
    sock.end();
  });
  s.on("tlsClientError", () => {});
  return s;
}

/** Server CPU microseconds per operation (handshake or call), clients in a child process. */
async function serverCpuPerOp(kind: Kind): Promise<number> {
  let ops = 0;
  const server = startServer(kind, () => ops++);
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const client = fork(new URL("./floor-client.ts", import.meta.url).pathname, [], { execArgv: ["--import", "tsx"], stdio: ["ignore", "inherit", "inherit", "ipc"] });
  const setup: ClientSetup = {
    mode: kind === "grpc" || kind === "h2" ? "grpc" : "tls",
    port: (server.address() as AddressInfo).port,
    certPem: clientCert,
    keyPem: privateKeyToPem(clientKeys.privateKey),
    caPem: cas.host.x509CertPem,
    concurrency: 4,
  };
  client.send(setup);
  while (ops < 100) await sleep(20); // warm up
  const o0 = ops;
  const c0 = cpuUs();
  await sleep(windowMs);
  const us = (cpuUs() - c0) / (ops - o0);
  client.kill("SIGKILL");
  server.close();
  if ("closeAllConnections" in server) (server as unknown as { closeAllConnections(): void }).closeAllConnections();
  return us;
}

const samples: Record<Kind, number[]> = { "tls+tickets": [], tls: [], h2: [], grpc: [] };
for (let r = 0; r < rounds; r++) {
  for (const kind of Object.keys(samples) as Kind[]) samples[kind].push(await serverCpuPerOp(kind));
}

const sshBody = randomBytes(1100); // an agent's SSH certificate body, extensions included
const tbs = randomBytes(560); // an X.509 TBSCertificate of an output or renewal certificate
const ed25519Us = await perCall(() => sign(null, sshBody, cas.user.sshPrivate), windowMs / 3);
const p256Us = await perCall(() => sign("sha256", tbs, cas.user.x509Key), windowMs / 3);
const issueUs = await perCall(issueOnce, windowMs / 2);

const handshakeUs = median(samples.tls);
const floorUs = handshakeUs + ed25519Us + 2 * p256Us;
process.stdout.write(
  JSON.stringify({
    handshakeUs,
    handshakeTicketsUs: median(samples["tls+tickets"]),
    h2CallUs: median(samples.h2),
    grpcCallUs: median(samples.grpc),
    ed25519Us,
    p256Us,
    issueUs,
    floorUs,
    floorPerCore: 1e6 / floorUs,
  }) + "\n",
);
process.exit(0);

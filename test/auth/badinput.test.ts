/**
 * Bad input (SPEC §10) against the real service: malformed requests are InvalidArgument, oversized
 * ones ResourceExhausted, forged proofs PermissionDenied; none of them consumes a token, moves a
 * generation or locks anything, and the service goes on answering valid calls.
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { randomBytes } from "node:crypto";
import { connect as http2Connect } from "node:http2";
import { create } from "@bufbuild/protobuf";
import { Code, createClient } from "@connectrpc/connect";
import { compressionGzip, createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import { JoinRequestSchema, JoinService, type JoinRequest } from "../../src/api/gen/mezite/v1/join_pb.js";
import { RenewRequestSchema, type RenewRequest } from "../../src/api/gen/mezite/v1/renew_pb.js";
import { connect } from "../../src/api/client.js";
import { buildJoinRequest, buildRenewRequest, generateIssueKeys } from "../../src/identity/protocol.js";
import { SEED_ROLE, startAuth, type AuthProcess } from "../harness/auth.js";
import { addIdentity, createRole, join, pending, refused, refusedWith, renew, renewalTls, renewRaw, statusOf } from "./client.js";

const OVERSIZED = "ssh-ed25519 " + "A".repeat(70 * 1024);
let auth: AuthProcess;

before(async () => {
  auth = await startAuth();
  await createRole(auth, SEED_ROLE);
});
after(() => auth?.stop());

/** One gRPC call written by hand, for bodies no client library would send. */
function rawGrpc(path: string, body: Buffer): Promise<{ status: string; message: string }> {
  return new Promise((resolve, reject) => {
    const session = http2Connect(`https://${auth.addr}`, { rejectUnauthorized: false });
    session.on("error", reject);
    const req = session.request({ ":method": "POST", ":path": path, "content-type": "application/grpc", te: "trailers" });
    let head: Record<string, unknown> = {};
    req.on("response", (h) => (head = h));
    req.on("trailers", (t) => (head = { ...head, ...t }));
    req.on("data", () => {});
    req.on("end", () => {
      session.close();
      resolve({ status: String(head["grpc-status"]), message: decodeURIComponent(String(head["grpc-message"] ?? "")) });
    });
    req.on("error", reject);
    req.end(body);
  });
}

function frame(payload: Buffer, claimedLength = payload.length): Buffer {
  const head = Buffer.alloc(5);
  head.writeUInt32BE(claimedLength, 1);
  return Buffer.concat([head, payload]);
}

test("malformed and oversized Join requests are refused; the token survives them and then works", async () => {
  const token = await addIdentity(auth, "target", ["ci-deployer"]);
  const { request } = buildJoinRequest(Buffer.from(token, "hex"), generateIssueKeys(), 3_600_000);
  const variant = (fields: Partial<JoinRequest>) => connect(JoinService, auth.addr, {}).join(create(JoinRequestSchema, { ...request, ...fields }));
  const other = generateIssueKeys();
  const swapped = buildJoinRequest(Buffer.from(token, "hex"), other, 3_600_000).request.sshPublicKey;

  const invalid = await Promise.all([
    variant({ tokenId: "not-a-token-id" }),
    variant({ tokenId: request.tokenId.toUpperCase() }),
    variant({ tokenId: "" }),
    variant({ sshPublicKey: "ssh-ed25519 AAAAgarbage" }),
    variant({ sshPublicKey: "" }),
    variant({ x509PublicKey: randomBytes(91) }),
    variant({ renewalPublicKey: new Uint8Array() }),
    variant({ nonce: randomBytes(8) }),
    variant({ proof: randomBytes(10) }),
    variant({ requestedTtlMs: -5n }),
  ].map((p) => refused(p, "ERR_USAGE", Code.InvalidArgument)));
  for (const r of invalid) assert.match(r.message, /^invalid request: /);
  await refusedWith(variant({ sshPublicKey: OVERSIZED }), Code.ResourceExhausted);
  // Well formed but forged: a proof by someone without the token, or keys swapped in transit.
  await refused(variant({ proof: randomBytes(64) }), "ERR_BAD_PROOF", Code.PermissionDenied);
  await refused(variant({ sshPublicKey: swapped }), "ERR_BAD_PROOF", Code.PermissionDenied);

  const joined = await join(auth.addr, token);
  assert.equal(joined.certs.generation, 1n);
});

test("garbage on the wire: bytes that are not protobuf, a frame that lies about its length", async () => {
  const notProtobuf = await rawGrpc("/mezite.v1.JoinService/Join", frame(Buffer.from([0xff, 0xff, 0xff, 0xff, 0x0f, 0x01])));
  assert.equal(notProtobuf.status, String(Code.InvalidArgument), notProtobuf.message);
  assert.match(notProtobuf.message, /could not be parsed as mezite\.v1\.JoinRequest/);
  const twoMessages = await rawGrpc("/mezite.v1.JoinService/Join", Buffer.concat([frame(Buffer.alloc(0)), frame(Buffer.alloc(0))]));
  assert.equal(twoMessages.status, String(Code.InvalidArgument), twoMessages.message);
  const huge = await rawGrpc("/mezite.v1.JoinService/Join", frame(randomBytes(16), 1 << 30));
  assert.equal(huge.status, String(Code.ResourceExhausted), huge.message);
  const truncated = await rawGrpc("/mezite.v1.JoinService/Join", frame(randomBytes(16), 4096));
  assert.notEqual(truncated.status, "0", truncated.message);
});

test("malformed and oversized Renew requests are refused without moving the generation or locking", async () => {
  const held = await join(auth.addr, await addIdentity(auth, "renews", ["ci-deployer"]));
  const good = buildRenewRequest(pending().requestId, generateIssueKeys(), 3_600_000);
  const variant = (fields: Partial<RenewRequest>) => renewRaw(auth.addr, renewalTls(held), create(RenewRequestSchema, { ...good, ...fields }));
  await Promise.all([
    variant({ requestId: randomBytes(3) }),
    variant({ sshPublicKey: "ssh-rsa AAAAB3NzaC1yc2E= x" }),
    variant({ x509PublicKey: randomBytes(65) }),
    variant({ renewalPublicKey: randomBytes(2000) }),
    variant({ requestedTtlMs: 10n }),
  ].map((p) => refused(p, "ERR_USAGE", Code.InvalidArgument)));
  await refusedWith(variant({ sshPublicKey: OVERSIZED }), Code.ResourceExhausted);

  const s = await statusOf(auth, "renews");
  assert.deepEqual(s.instances.map((i) => [i.generation, i.locked]), [[1n, false]]);
  assert.equal((await renew(auth.addr, held)).certs.generation, 2n);
});

test("Join and Renew in other encodings go to the general gRPC stack: gzip, and the Connect protocol", async () => {
  // Plain gRPC Join and Renew have a fast path of their own (src/api/grpc-unary.ts).
  const gzip = createGrpcTransport({ baseUrl: `https://${auth.addr}`, sendCompression: compressionGzip, nodeOptions: { rejectUnauthorized: false } });
  const keys = generateIssueKeys();
  const { request } = buildJoinRequest(Buffer.from(await addIdentity(auth, "gzipped", ["ci-deployer"]), "hex"), keys, 3_600_000);
  assert.equal((await createClient(JoinService, gzip).join(request)).certificates?.identityName, "gzipped");
  const connectProtocol = createConnectTransport({ baseUrl: `https://${auth.addr}`, httpVersion: "2", nodeOptions: { rejectUnauthorized: false } });
  await refused(createClient(JoinService, connectProtocol).join(request), "ERR_TOKEN_USED", Code.PermissionDenied);
});

test("after all that the service is still up and serving", async () => {
  assert.equal(auth.proc.exitCode, null);
  assert.equal(auth.proc.signalCode, null);
  const joined = await join(auth.addr, await addIdentity(auth, "after", ["ci-deployer"]));
  assert.equal((await renew(auth.addr, joined)).certs.generation, 2n);
  assert.doesNotMatch(auth.output(), /"level":"error"/, "nothing above was an internal error");
});

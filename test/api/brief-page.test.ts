/**
 * A brief listing page encoded by hand (src/api/brief-page.ts) is, byte for byte, what protobuf-es
 * writes for the same statuses through the schema, and decodes back to them; statuses decoded by
 * hand (as mezctl reads them) are what protobuf-es reads, whatever other fields they carry.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { test } from "node:test";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { briefPage, decodeBriefStatus, type BriefStatus } from "../../src/api/brief-page.js";
import { ListAgentIdentitiesEncodedResponseSchema, ListAgentIdentitiesResponseSchema } from "../../src/api/gen/mezite/v1/admin_pb.js";
import { AgentIdentityStatusSchema, InstanceSchema, LockSchema } from "../../src/api/gen/mezite/v1/common_pb.js";

const viaSchema = (statuses: BriefStatus[]) =>
  toBinary(ListAgentIdentitiesResponseSchema, create(ListAgentIdentitiesResponseSchema, { identities: statuses.map((s) => create(AgentIdentityStatusSchema, s)) }));
const byHand = (statuses: BriefStatus[]) => toBinary(ListAgentIdentitiesResponseSchema, briefPage(statuses));

const status = (o: Partial<BriefStatus> = {}): BriefStatus => ({ name: "ci-runner", roles: ["ci-deployer"], locked: false, state: "active", generation: 2n, lastSeen: 1_796_554_364_364n, certExpires: 1_796_557_964_364n, ...o });

test("edge values: zeros left out, empty repeated elements kept, 64-bit and negative integers, multi-byte text, long strings", () => {
  const edges: BriefStatus[] = [
    status(),
    status({ name: "", roles: [], state: "", generation: 0n, lastSeen: 0n, certExpires: 0n }),
    status({ roles: ["", "monitor", ""], locked: true, state: "locked" }),
    status({ generation: 2n ** 64n - 1n, lastSeen: -1n, certExpires: -(2n ** 63n) }),
    status({ generation: 2n ** 53n - 1n, lastSeen: 2n ** 53n, certExpires: 2n ** 63n - 1n }),
    status({ generation: 127n, lastSeen: 128n, certExpires: 16_383n }),
    status({ name: "größe-✓-😀", roles: ["ロール"], state: "awaiting join" }),
    status({ name: "x".repeat(300), roles: ["r".repeat(20_000)] }),
  ];
  for (const s of edges) assert.deepEqual(Buffer.from(byHand([s])), Buffer.from(viaSchema([s])), JSON.stringify(s, (_, v) => (typeof v === "bigint" ? String(v) : v)));
  assert.deepEqual(Buffer.from(byHand(edges)), Buffer.from(viaSchema(edges)));
  assert.deepEqual(Buffer.from(byHand([])), Buffer.from(viaSchema([])));
});

const big = () => randomBytes(8).readBigUInt64BE() >> BigInt(randomBytes(1)[0]! % 64);
const text = () => randomBytes(randomBytes(1)[0]! % 40).toString("latin1");
const randomStatus = () =>
  status({ name: text(), roles: Array.from({ length: randomBytes(1)[0]! % 4 }, text), locked: randomBytes(1)[0]! % 2 === 0, state: text(), generation: big(), lastSeen: BigInt.asIntN(64, big()), certExpires: BigInt.asIntN(64, big()) });
const briefOf = ({ name, roles, locked, state, generation, lastSeen, certExpires }: BriefStatus): BriefStatus => ({ name, roles, locked, state, generation, lastSeen, certExpires });

test("500 random statuses: the same bytes as the schema's, and decoded, the same statuses", () => {
  const statuses = Array.from({ length: 500 }, randomStatus);
  const bytes = byHand(statuses);
  assert.deepEqual(Buffer.from(bytes), Buffer.from(viaSchema(statuses)));
  const decoded = fromBinary(ListAgentIdentitiesResponseSchema, bytes).identities;
  assert.equal(decoded.length, statuses.length);
  decoded.forEach((d, i) => assert.deepEqual(briefOf(d), statuses[i]));
});

test("decoded by hand from a page read with each status left encoded: what fromBinary reads, other fields skipped", () => {
  const edges = [
    status(),
    status({ name: "", roles: [], state: "", generation: 0n, lastSeen: 0n, certExpires: 0n }),
    status({ roles: ["", "monitor", ""], locked: true, generation: 2n ** 64n - 1n, lastSeen: -1n, certExpires: -(2n ** 63n) }),
    status({ name: "größe-✓-😀", generation: 2n ** 53n + 1n, lastSeen: 2n ** 49n, certExpires: 2n ** 49n - 1n }),
  ];
  const full = [...edges, ...Array.from({ length: 300 }, randomStatus)].map((s, i) =>
    create(AgentIdentityStatusSchema, {
      ...s,
      // Fields a whole status has and a brief one does not: a newer service's extra fields look the same.
      id: `id-${i}`, created: 7n, tokenState: "used", lastAddress: "10.0.0.1", principals: ["deploy"], principalsError: "x".repeat(i % 200),
      locks: [create(LockSchema, { id: "l", targetKind: "instance", target: "t", expires: -5n })],
      instances: [create(InstanceSchema, { id: "i", generation: 3n, claims: { repo: "a/b" }, principals: ["deploy"] })],
    }),
  );
  const bytes = toBinary(ListAgentIdentitiesResponseSchema, create(ListAgentIdentitiesResponseSchema, { identities: full }));
  const encoded = fromBinary(ListAgentIdentitiesEncodedResponseSchema, bytes).identities;
  assert.equal(encoded.length, full.length);
  encoded.forEach((b, i) => assert.deepEqual(decodeBriefStatus(b), briefOf(full[i]!)));
  // The hand-encoded page reads back the same way.
  const page = fromBinary(ListAgentIdentitiesEncodedResponseSchema, toBinary(ListAgentIdentitiesResponseSchema, briefPage(edges)));
  assert.deepEqual(page.identities.map(decodeBriefStatus), edges);
});

test("a malformed status is one clear error, not a wrong row", () => {
  const good = toBinary(AgentIdentityStatusSchema, create(AgentIdentityStatusSchema, status()));
  for (const bad of [good.subarray(0, 5), Buffer.from([0x0a, 0x20, 0x61]), Buffer.from([0x28, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]), Buffer.from([0x0b])]) {
    assert.throws(() => decodeBriefStatus(bad), /^Error: the auth service sent a malformed identity status/, Buffer.from(bad).toString("hex"));
  }
});

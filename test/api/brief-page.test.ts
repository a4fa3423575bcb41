/**
 * A brief listing page encoded by hand (src/api/brief-page.ts) is, byte for byte, what protobuf-es
 * writes for the same statuses through the schema, and decodes back to them.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { test } from "node:test";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { briefPage, type BriefStatus } from "../../src/api/brief-page.js";
import { ListAgentIdentitiesResponseSchema } from "../../src/api/gen/mezite/v1/admin_pb.js";
import { AgentIdentityStatusSchema } from "../../src/api/gen/mezite/v1/common_pb.js";

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

test("500 random statuses: the same bytes as the schema's, and decoded, the same statuses", () => {
  const big = () => randomBytes(8).readBigUInt64BE() >> BigInt(randomBytes(1)[0]! % 64);
  const text = () => randomBytes(randomBytes(1)[0]! % 40).toString("latin1");
  const statuses = Array.from({ length: 500 }, () =>
    status({ name: text(), roles: Array.from({ length: randomBytes(1)[0]! % 4 }, text), locked: randomBytes(1)[0]! % 2 === 0, state: text(), generation: big(), lastSeen: BigInt.asIntN(64, big()), certExpires: BigInt.asIntN(64, big()) }),
  );
  const bytes = byHand(statuses);
  assert.deepEqual(Buffer.from(bytes), Buffer.from(viaSchema(statuses)));
  const decoded = fromBinary(ListAgentIdentitiesResponseSchema, bytes).identities;
  assert.equal(decoded.length, statuses.length);
  decoded.forEach((d, i) => {
    const { name, roles, locked, state, generation, lastSeen, certExpires } = d;
    assert.deepEqual({ name, roles, locked, state, generation, lastSeen, certExpires }, statuses[i]);
  });
});

/**
 * Daemons tell the service their host name, OS, architecture and version with every join and
 * renewal (SPEC §18); status shows them, and a daemon cannot put control characters there.
 */
import assert from "node:assert/strict";
import { arch, hostname, platform } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { connect } from "../../src/api/client.js";
import { JoinService } from "../../src/api/gen/mezite/v1/join_pb.js";
import { joinRequestTranscript } from "../../src/api/transcripts.js";
import { deriveTokenSecrets, parseToken, signProof } from "../../src/ca/jointoken.js";
import { buildJoinRequest, generateIssueKeys } from "../../src/identity/protocol.js";
import { mezctlOk } from "../harness/auth.js";
import { addIdentity, identityTestbed, oneShot } from "./fixture.js";

const bed = identityTestbed("facts");

interface Facts { host_name: string; os: string; arch: string; version: string }

async function instanceHost(name: string): Promise<Facts | null> {
  const s = JSON.parse(await mezctlOk(bed.auth, "agent-identities", "status", name, "--format=json")) as { instances: { host: Facts | null }[] };
  return s.instances[0]!.host;
}

test("a join and a renewal record the daemon's host facts; status shows them in JSON and text", async () => {
  const token = await addIdentity(bed.auth, "facts");
  const dest = join(bed.tmp, "facts");
  const joined = await oneShot(bed.auth.addr, dest, [], { MEZITE_TOKEN: token });
  assert.equal(joined.code, 0, joined.stderr);
  const expected = { host_name: hostname(), os: platform(), arch: arch() };
  const facts = await instanceHost("facts");
  assert.deepEqual({ ...facts, version: undefined }, { ...expected, version: undefined });
  assert.match(facts!.version, /^\d+\.\d+\.\d+/, "the bundle's version");
  const renewed = await oneShot(bed.auth.addr, dest);
  assert.equal(renewed.code, 0, renewed.stderr);
  assert.deepEqual(await instanceHost("facts"), facts, "kept through a renewal");
  const text = await mezctlOk(bed.auth, "agent-identities", "status", "facts");
  assert.match(text, new RegExp(`host ${hostname()} \\(${platform()}/${arch()}, mezd ${facts!.version.replace(/\./g, "\\.")}\\)`));
});

test("host facts with control characters are refused, and the token is not spent", async () => {
  const token = await addIdentity(bed.auth, "facts-bad");
  const { request } = buildJoinRequest(parseToken(token), generateIssueKeys(), 3_600_000);
  request.host!.hostName = "web\u001b[2J01";
  request.proof = signProof(deriveTokenSecrets(parseToken(token)).signingKey, joinRequestTranscript(request));
  await assert.rejects(connect(JoinService, bed.auth.addr, {}).join(request), /host\.hostName must be printable text/);
  const ok = await oneShot(bed.auth.addr, join(bed.tmp, "facts-bad"), [], { MEZITE_TOKEN: token });
  assert.equal(ok.code, 0, ok.stderr);
});

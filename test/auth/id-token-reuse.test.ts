/**
 * "An ID token joins once" (SPEC §14) across auth services whose clocks differ: the used-token
 * record outlives the token's exp by a few minutes, so a service whose clock lags (and so still
 * takes the token as valid) finds it used.
 */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { exportJWK, generateKeyPair, SignJWT } from "jose";
import { TokenVerifierSchema } from "../../src/api/gen/mezite/v1/admin_pb.js";
import { JoinWithIdTokenRequestSchema } from "../../src/api/gen/mezite/v1/join_pb.js";
import { roleToProto } from "../../src/api/roles.js";
import { addAgentIdentity } from "../../src/auth/admin/identities.js";
import { createRole } from "../../src/auth/admin/roles.js";
import type { AdminCaller } from "../../src/auth/context.js";
import { LEEWAY_S } from "../../src/auth/id-tokens.js";
import { joinWithIdToken } from "../../src/auth/join.js";
import { createJoinToken } from "../../src/auth/join-methods.js";
import { MemoryBackend } from "../../src/backend/memory.js";
import { deriveTokenSecrets, generateToken } from "../../src/ca/jointoken.js";
import { ed25519RawPublic } from "../../src/ca/sshkey.js";
import { generateIssueKeys, publicKeysOf } from "../../src/identity/protocol.js";
import { parseRoleYaml } from "../../src/rbac/role.js";
import { SEED_ROLE } from "../harness/auth.js";
import { unitAuthContext } from "../harness/auth-context.js";

const dir = mkdtempSync(join(tmpdir(), "mezite-id-token-reuse-"));
after(() => rmSync(dir, { recursive: true, force: true }));
const BY: AdminCaller = { remoteAddr: "127.0.0.1", cert: undefined, audit: { actor: "test", remote_addr: "127.0.0.1" } };

test("a used ID token stays used past its exp for a service whose clock lags two minutes", async () => {
  // The database's clock (which expires records) and service A's; service B's lags 2 minutes.
  let clock = Date.UTC(2026, 11, 1, 12);
  const backend = new MemoryBackend({ now: () => clock, sweepIntervalMs: 0 });
  const a = await unitAuthContext({ backend, dataDir: dir, clusterName: "unit.mezite", now: () => clock });
  const b = await unitAuthContext({ backend, dataDir: dir, clusterName: "unit.mezite", now: () => clock - 120_000 });
  await createRole(a, BY, roleToProto(parseRoleYaml(SEED_ROLE)), false);
  const s = deriveTokenSecrets(Buffer.from(generateToken(), "hex"));
  await addAgentIdentity(a, BY, "ci", ["ci-deployer"], create(TokenVerifierSchema, { tokenId: s.tokenId, verifyKey: ed25519RawPublic(s.verifyKey), macKey: s.macKey }));
  const { privateKey, publicKey } = await generateKeyPair("ES256");
  const jwks = JSON.stringify({ keys: [{ ...(await exportJWK(publicKey)), kid: "k1" }] });
  const doc = { kind: "join_token", metadata: { name: "ci-main" }, spec: { agent_identity: "ci", join_method: "oidc", oidc: { issuer: "https://ci.example", static_jwks: jwks, allow: [{ aud: "unit.mezite", sub: "run:*" }] } } };
  await createJoinToken(a, BY, JSON.stringify(doc), false);

  const t = Math.floor(clock / 1000);
  const jwt = await new SignJWT({ iss: "https://ci.example", aud: "unit.mezite", sub: "run:1", iat: t, exp: t + 300 }).setProtectedHeader({ alg: "ES256", kid: "k1" }).sign(privateKey);
  const request = () => create(JoinWithIdTokenRequestSchema, { joinToken: "ci-main", idToken: jwt, ...publicKeysOf(generateIssueKeys()), requestedTtlMs: 600_000n });
  await joinWithIdToken(a, request(), { remoteAddr: "10.0.0.1", cert: undefined });

  // A minute past exp plus the leeway: A refuses the token as expired; B, two minutes behind,
  // still takes it as valid and must find it used.
  clock = (t + 300 + LEEWAY_S + 60) * 1000;
  await assert.rejects(joinWithIdToken(a, request(), { remoteAddr: "10.0.0.1", cert: undefined }), (e: Error & { code?: string }) => e.code === "ERR_TOKEN_INVALID" && /expired/.test(e.message));
  await assert.rejects(joinWithIdToken(b, request(), { remoteAddr: "10.0.0.2", cert: undefined }), (e: Error & { code?: string }) => e.code === "ERR_TOKEN_USED");
  assert.equal(await backend.count("/used-id-tokens/"), 1);

  // Five minutes past the token's worth, the record goes: nothing keeps it forever.
  clock = (t + 300 + LEEWAY_S) * 1000 + 5 * 60_000 + 1;
  assert.equal(await backend.count("/used-id-tokens/"), 0);
});

/**
 * Join token resources and ID-token joins in-process, with a frozen clock: glob rules, and
 * instances that leave the store with their certificates (a CI run is one instance; a fleet of
 * runs must not pile up in listings).
 */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { exportJWK, generateKeyPair, SignJWT } from "jose";
import { roleToProto } from "../../src/api/roles.js";
import { create } from "@bufbuild/protobuf";
import { TokenVerifierSchema } from "../../src/api/gen/mezite/v1/admin_pb.js";
import { JoinWithIdTokenRequestSchema } from "../../src/api/gen/mezite/v1/join_pb.js";
import { addAgentIdentity, getAgentIdentity, listAgentIdentities } from "../../src/auth/admin/identities.js";
import { createRole } from "../../src/auth/admin/roles.js";
import type { AdminCaller } from "../../src/auth/context.js";
import { joinWithIdToken } from "../../src/auth/join.js";
import { createJoinToken, matchingRule } from "../../src/auth/join-methods.js";
import { MemoryBackend } from "../../src/backend/memory.js";
import { deriveTokenSecrets, generateToken } from "../../src/ca/jointoken.js";
import { ed25519RawPublic } from "../../src/ca/sshkey.js";
import { generateIssueKeys, publicKeysOf } from "../../src/identity/protocol.js";
import { parseRoleYaml } from "../../src/rbac/role.js";
import { SEED_ROLE } from "../harness/auth.js";
import { unitAuthContext } from "../harness/auth-context.js";

const dir = mkdtempSync(join(tmpdir(), "mezite-join-methods-unit-"));
after(() => rmSync(dir, { recursive: true, force: true }));
const BY: AdminCaller = { remoteAddr: "127.0.0.1", cert: undefined, audit: { actor: "test", remote_addr: "127.0.0.1" } };

test("rules: every field of a rule must match; * globs; values compare as strings", () => {
  const allow = [{ repository: "acme/*", ref: "refs/heads/main" }, { sub: "repo:acme/tools:*", ref_protected: "true" }];
  assert.deepEqual(matchingRule(allow, { repository: "acme/webapp", ref: "refs/heads/main" }), allow[0]);
  assert.equal(matchingRule(allow, { repository: "acme/webapp", ref: "refs/heads/dev" }), undefined);
  assert.equal(matchingRule(allow, { repository: "acmecorp/webapp", ref: "refs/heads/main" }), undefined, "acme/* does not match acmecorp/");
  assert.deepEqual(matchingRule(allow, { sub: "repo:acme/tools:ref:x", ref_protected: true }), allow[1]);
  assert.equal(matchingRule(allow, { sub: "repo:acme/tools:ref:x" }), undefined, "a missing claim never matches");
  assert.equal(matchingRule([{ repository: "a.c/(x)" }], { repository: "abc/(x)" }), undefined, "only * is special");
});

test("an ID-token instance leaves status and listings when its certificate expires; the audit keeps it", async () => {
  let clock = Date.UTC(2026, 11, 1, 12);
  const now = () => clock;
  const backend = new MemoryBackend({ now, sweepIntervalMs: 0 });
  const ctx = await unitAuthContext({ backend, dataDir: dir, clusterName: "unit.mezite", now });
  await createRole(ctx, BY, roleToProto(parseRoleYaml(SEED_ROLE)), false);
  const s = deriveTokenSecrets(Buffer.from(generateToken(), "hex"));
  await addAgentIdentity(ctx, BY, "ci", ["ci-deployer"], create(TokenVerifierSchema, { tokenId: s.tokenId, verifyKey: ed25519RawPublic(s.verifyKey), macKey: s.macKey }));
  const { privateKey, publicKey } = await generateKeyPair("ES256");
  const jwks = JSON.stringify({ keys: [{ ...(await exportJWK(publicKey)), kid: "k1" }] });
  const doc = { kind: "join_token", metadata: { name: "ci-main" }, spec: { agent_identity: "ci", join_method: "oidc", oidc: { issuer: "https://ci.example", static_jwks: jwks, allow: [{ sub: "run:*" }] } } };
  await createJoinToken(ctx, BY, JSON.stringify(doc), false);
  for (const run of [1, 2, 3]) {
    const t = Math.floor(clock / 1000);
    const jwt = await new SignJWT({ iss: "https://ci.example", aud: "unit.mezite", sub: `run:${run}`, iat: t, exp: t + 300 }).setProtectedHeader({ alg: "ES256", kid: "k1" }).sign(privateKey);
    const req = create(JoinWithIdTokenRequestSchema, { joinToken: "ci-main", idToken: jwt, ...publicKeysOf(generateIssueKeys()), requestedTtlMs: 600_000n });
    await joinWithIdToken(ctx, req, { remoteAddr: "10.0.0.1", cert: undefined });
  }
  const live = await getAgentIdentity(ctx, "ci");
  assert.deepEqual(live.instances.map((i) => i.claims["sub"]).sort(), ["run:1", "run:2", "run:3"]);
  clock += 600_000 + 1; // the certificates (10 minutes) have expired
  assert.deepEqual((await getAgentIdentity(ctx, "ci")).instances, []);
  const listed = [];
  for await (const page of listAgentIdentities(ctx)) listed.push(...page);
  assert.deepEqual(listed.map((i) => [i.name, i.instances.length]), [["ci", 0]]);
  assert.equal(await backend.count("/instances/"), 0, "expired instance records are invisible (and swept)");
  const joins = [];
  for await (const page of ctx.audit.list(0, "agent_identity.join", 0)) joins.push(...page);
  assert.equal(joins.filter((e) => e.success).length, 3, "the audit keeps every run");
});

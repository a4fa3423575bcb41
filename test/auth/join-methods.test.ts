/**
 * Join token resources and ID-token joins in-process, with a frozen clock: glob rules, and
 * instances that leave the store with their certificates (a CI run is one instance; a fleet of
 * runs must not pile up in listings). Rules whose anchors are not literal are refused at create
 * through the real admin API, and hostile claims cost the service no time (SPEC §14).
 */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { monitorEventLoopDelay } from "node:perf_hooks";
import { after, before, test } from "node:test";
import { Code } from "@connectrpc/connect";
import { exportJWK, generateKeyPair, SignJWT } from "jose";
import { roleToProto } from "../../src/api/roles.js";
import { create } from "@bufbuild/protobuf";
import { TokenVerifierSchema } from "../../src/api/gen/mezite/v1/admin_pb.js";
import { JoinService, JoinWithIdTokenRequestSchema } from "../../src/api/gen/mezite/v1/join_pb.js";
import { connect } from "../../src/api/client.js";
import { Audit } from "../../src/auth/audit.js";
import { startAuthService, type AuthService } from "../../src/auth/server.js";
import { silentLogger } from "../../src/lib/log.js";
import { addAgentIdentity, getAgentIdentity, listAgentIdentities } from "../../src/auth/admin/identities.js";
import { createRole } from "../../src/auth/admin/roles.js";
import type { AdminCaller } from "../../src/auth/context.js";
import { joinWithIdToken } from "../../src/auth/join.js";
import { createJoinToken, globMatches, matchingRule } from "../../src/auth/join-methods.js";
import { MemoryBackend } from "../../src/backend/memory.js";
import { deriveTokenSecrets, generateToken } from "../../src/ca/jointoken.js";
import { ed25519RawPublic } from "../../src/ca/sshkey.js";
import { generateIssueKeys, publicKeysOf } from "../../src/identity/protocol.js";
import { parseRoleYaml } from "../../src/rbac/role.js";
import { SEED_ROLE } from "../harness/auth.js";
import { unitAuthContext } from "../harness/auth-context.js";
import { addIdentity, adminApi, createRole as createRoleByApi, outcome, refused, type Refusal } from "./client.js";

const dir = mkdtempSync(join(tmpdir(), "mezite-join-methods-unit-"));
after(async () => {
  await svc?.stop();
  rmSync(dir, { recursive: true, force: true });
});
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
  const doc = { kind: "join_token", metadata: { name: "ci-main" }, spec: { agent_identity: "ci", join_method: "oidc", oidc: { issuer: "https://ci.example", static_jwks: jwks, allow: [{ sub: "run:*", aud: "unit.mezite" }] } } };
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

// ---- globs

/** What `*` globs mean, by the definition: dynamic programming over pattern and value. */
function globByDefinition(pattern: string, value: string): boolean {
  let row = Array.from({ length: value.length + 1 }, (_, j) => j === 0);
  for (const c of pattern) {
    const next = Array.from({ length: value.length + 1 }, () => false);
    for (let j = 0; j <= value.length; j++) {
      next[j] = c === "*" ? row[j]! || (j > 0 && next[j - 1]!) : j > 0 && row[j - 1]! && value[j - 1] === c;
    }
    row = next;
  }
  return row[value.length]!;
}

test("globs: * matches any run of characters and nothing else is special; the matcher agrees with the definition", () => {
  const cases: [string, string, boolean][] = [
    ["acme/*", "acme/webapp", true],
    ["acme/*", "acme/", true],
    ["acme/*", "acmecorp/webapp", false],
    ["deploy-*", "deploy", false],
    ["*-prod", "eu-prod", true],
    ["a*b*c", "abc", true],
    ["a*b*c", "acb", false],
    ["a*ab", "aab", true],
    ["ab*ba", "aba", false],
    ["**", "", true],
    ["a**b", "ab", true],
    ["x.y", "xzy", false],
    ["(x)[y]?+", "(x)[y]?+", true],
    ["refs/heads/main", "refs/heads/main", true],
    ["refs/heads/main", "refs/heads/main2", false],
  ];
  for (const [pattern, value, want] of cases) assert.equal(globMatches(pattern, value), want, `${pattern} against ${value}`);
  // Every small pattern over {a, b, *} against every small value: the same answers as the definition.
  const words = (alphabet: string, max: number) => {
    const out = [""];
    for (let i = 0; out[i]!.length < max; i++) for (const c of alphabet) out.push(out[i] + c);
    return out;
  };
  const values = words("ab", 6);
  let checked = 0;
  for (const pattern of words("ab*", 5)) {
    for (const value of values) {
      assert.equal(globMatches(pattern, value), globByDefinition(pattern, value), `${pattern} against ${value}`);
      checked++;
    }
  }
  assert.ok(checked > 30_000, `${checked} pairs`);
});

test("globs: a 1 KiB claim made to defeat backtracking is matched in linear time by every pattern", () => {
  // The regex matcher took ~170 ms for the first of these and ~30 s for the second.
  const patterns = ["*a*a*b", "*a*a*a*b", `${"*a".repeat(127)}b`, `*${"a".repeat(200)}b*`, `*b${"a".repeat(200)}*`, `${"a*".repeat(100)}ab`];
  const values = ["a".repeat(1024), `${"a".repeat(1023)}c`, "ab".repeat(512)];
  let worst = 0;
  for (const pattern of patterns) {
    for (const value of values) {
      const start = performance.now();
      for (let i = 0; i < 10; i++) globMatches(pattern, value);
      const ms = (performance.now() - start) / 10;
      worst = Math.max(worst, ms);
      assert.ok(ms < 5, `${pattern.slice(0, 20)}... against ${value.slice(0, 10)}... took ${ms.toFixed(1)} ms`);
    }
  }
  process.stdout.write(`# worst glob match against a 1 KiB claim: ${worst.toFixed(3)} ms\n`);
});

test("rules look up the token's own claims only, and a claim over 1 KiB refuses the token before any rule is tried", () => {
  assert.equal(matchingRule(JSON.parse('[{"__proto__": "*"}]'), {}), undefined, "Object.prototype is not a claim");
  assert.equal(matchingRule([{ constructor: "*" }, { toString: "*" }], {}), undefined);
  assert.deepEqual(matchingRule([{ constructor: "x" }], JSON.parse('{"constructor": "x"}')), { constructor: "x" }, "a claim of that name in the token is");
  const allow = [{ sub: "runner", workflow: "deploy-*" }];
  assert.deepEqual(matchingRule(allow, { sub: "runner", workflow: `deploy-${"x".repeat(1017)}` }), allow[0], "1024 bytes is still matched");
  assert.throws(() => matchingRule(allow, { sub: "runner", workflow: `deploy-${"x".repeat(1018)}` }), /a claim is longer than 1024 bytes/);
  assert.throws(() => matchingRule(allow, { sub: "runner", workflow: `deploy-${"é".repeat(600)}` }), /a claim is longer than 1024 bytes/, "bytes, not characters");
  assert.throws(() => matchingRule([{ sub: "nobody" }, { workflow: "*" }], { sub: "x".repeat(2000) }), /a claim is longer than 1024 bytes/, "before any rule, even one that would not look at it first");
});

// ---- through a real auth service

let svc: AuthService;
let api: { addr: string; identityPath: string };
before(async () => {
  const dataDir = join(dir, "service");
  svc = await startAuthService({ dataDir, listen: "127.0.0.1:0", publicAddrs: [], clusterName: "test.mezite", backend: "memory", singlePort: false }, silentLogger);
  svc.context.audit = new Audit(svc.context.backend, silentLogger, svc.context.now); // keep audit lines off the test output
  api = { addr: svc.addr, identityPath: join(dataDir, "admin.identity") };
  await createRoleByApi(api, SEED_ROLE);
  await addIdentity(api, "ci", ["ci-deployer"]);
});

function joinTokenDoc(method: string, section: Record<string, unknown>, name = "rules") {
  return JSON.stringify({ kind: "join_token", metadata: { name }, spec: { agent_identity: "ci", join_method: method, [method]: section } });
}

test("anchors are literal: rules that could match someone else's pipeline, and reserved rule keys, are refused at create with one line naming the field", async () => {
  const refusals: [string, Record<string, unknown>, RegExp][] = [
    ["github", { allow: [{ repository: "*/*" }] }, /^join_token spec\.github\.allow\[0\]\.repository: must be OWNER\/REPO with a literal owner \(acme\/\* is fine, \*\/webapp is not\)$/],
    ["github", { allow: [{ repository: "*/webapp" }] }, /allow\[0\]\.repository: must be OWNER\/REPO with a literal owner/],
    ["github", { allow: [{ repository: "acme*" }] }, /allow\[0\]\.repository: must be OWNER\/REPO with a literal owner/],
    ["github", { allow: [{ repository: "ac*me/webapp" }] }, /allow\[0\]\.repository: must be OWNER\/REPO/],
    ["github", { allow: [{ repository: "acme/webapp" }, { repository_owner: "acme-*" }] }, /^join_token spec\.github\.allow\[1\]\.repository_owner: must be literal \(no \*\): it names whose repositories may join$/],
    ["github", { allow: [{ repository_owner: "*" }] }, /allow\[0\]\.repository_owner: must be literal/],
    ["github", { allow: [{ sub: "repo:*" }] }, /^join_token spec\.github\.allow\[0\]\.sub: must start with a literal "repo:OWNER\/"$/],
    ["github", { allow: [{ sub: "repo:acme*/webapp:*" }] }, /allow\[0\]\.sub: must start with a literal "repo:OWNER\/"/],
    ["github", { allow: [{ sub: "*:acme/webapp:*" }] }, /allow\[0\]\.sub: must start with a literal "repo:OWNER\/"/],
    ["github", { allow: [{ repository_owner: "acme", sub: "*" }] }, /allow\[0\]\.sub: must start with a literal/],
    ["github", { allow: [{ workflow: "deploy" }] }, /allow\[0\]: is too broad: set at least one of repository, repository_owner, sub$/],
    ["github", { allow: [JSON.parse('{"__proto__": "acme", "repository": "acme/webapp"}')] }, /allow\[0\]\.__proto__: is a reserved name, not a claim/],
    ["gitlab", { allow: [{ project_path: "*/webapp" }] }, /^join_token spec\.gitlab\.allow\[0\]\.project_path: must be GROUP\/PROJECT with a literal group/],
    ["gitlab", { allow: [{ project_path: "acme*" }] }, /allow\[0\]\.project_path: must be GROUP\/PROJECT with a literal group/],
    ["gitlab", { allow: [{ namespace_path: "acme/*" }] }, /allow\[0\]\.namespace_path: must be literal \(no \*\)/],
    ["gitlab", { allow: [{ sub: "project_path:*" }] }, /allow\[0\]\.sub: must start with a literal "project_path:GROUP\/"$/],
    ["gitlab", { allow: [{ sub: "project_path:acme:*" }] }, /allow\[0\]\.sub: must start with a literal "project_path:GROUP\/"$/],
    ["oidc", { issuer: "https://ci.example", allow: [{ sub: "system:serviceaccount:*" }] }, /^join_token spec\.oidc\.allow\[0\]: matches too much: give at least one claim a literal value \(no \*\)$/],
    ["oidc", { issuer: "https://ci.example", allow: [{ sub: "*", aud: "*x*" }] }, /allow\[0\]: matches too much/],
    ["oidc", { issuer: "https://ci.example", allow: [JSON.parse('{"sub": "runner", "__proto__": "*"}')] }, /^join_token spec\.oidc\.allow\[0\]\.__proto__: is a reserved name, not a claim$/],
    ["oidc", { issuer: "https://ci.example", allow: [{ sub: "runner", constructor: "*" }] }, /allow\[0\]\.constructor: is a reserved name, not a claim$/],
    ["oidc", { issuer: "https://ci.example", allow: [{ prototype: "x", sub: "runner" }] }, /allow\[0\]\.prototype: is a reserved name, not a claim$/],
  ];
  for (const [method, section, message] of refusals) {
    const r = await refused(adminApi(api).createJoinToken({ documentJson: joinTokenDoc(method, section), force: false }), "ERR_USAGE", Code.InvalidArgument);
    assert.match(r.message, message, JSON.stringify(section));
    assert.doesNotMatch(r.message, /\n/, "one line");
  }
  assert.deepEqual((await adminApi(api).listJoinTokens({})).joinTokens, [], "none was stored");

  const accepted: [string, Record<string, unknown>][] = [
    ["github", { allow: [{ repository: "acme/*" }, { repository_owner: "acme", workflow: "deploy-*" }, { sub: "repo:acme/*" }, { sub: "repo:acme/webapp:ref:refs/heads/*", repository: "acme/web*" }] }],
    ["gitlab", { allow: [{ project_path: "acme/*" }, { namespace_path: "acme/infra" }, { sub: "project_path:acme/webapp:ref_type:branch:ref:*" }] }],
    ["oidc", { issuer: "https://ci.example", allow: [{ sub: "system:serviceaccount:deploy:runner", aud: "*" }] }],
  ];
  for (const [method, section] of accepted) {
    await adminApi(api).createJoinToken({ documentJson: joinTokenDoc(method, section, `ok-${method}`), force: false });
  }
  assert.equal((await adminApi(api).listJoinTokens({})).joinTokens.length, 3);
});

test("a glob rule against a 16 KiB ID token with pathological claims is refused in under 50 ms, and 10 such joins in parallel stall the service's event loop no more than 60 ms", async () => {
  const { privateKey, publicKey } = await generateKeyPair("ES256");
  const jwk = { ...(await exportJWK(publicKey)), kid: "k1", alg: "ES256" };
  // Every claim under 1 KiB (so each is matched), each named by a rule whose pattern the regex
  // matcher backtracked on for ~170 ms.
  const CLAIMS = 11;
  const allow = Array.from({ length: CLAIMS }, (_, i) => ({ [`c${i}`]: "*a*a*b", sub: "runner" }));
  await adminApi(api).createJoinToken({ documentJson: joinTokenDoc("oidc", { issuer: "https://ci.example", static_jwks: JSON.stringify({ keys: [jwk] }), allow }, "hostile"), force: false });
  const sign = (pad: number) => {
    const t = Math.floor(Date.now() / 1000);
    const claims: Record<string, unknown> = { iss: "https://ci.example", aud: "test.mezite", sub: "runner", iat: t, exp: t + 600, pad: "p".repeat(pad) };
    for (let i = 0; i < CLAIMS; i++) claims[`c${i}`] = "a".repeat(1000);
    return new SignJWT(claims).setProtectedHeader({ alg: "ES256", kid: "k1" }).sign(privateKey);
  };
  let jwt = await sign(0);
  jwt = await sign(Math.floor(((16 * 1024 - jwt.length) * 3) / 4) - 4);
  assert.ok(jwt.length <= 16 * 1024 && jwt.length > 16 * 1024 - 16, `the ID token is ${jwt.length} bytes`);

  const client = connect(JoinService, svc.addr, {});
  const keys = publicKeysOf(generateIssueKeys());
  const attempt = () => client.joinWithIdToken({ joinToken: "hostile", idToken: jwt, ...keys, requestedTtlMs: 600_000n });
  const expectRefused = (r: Refusal | "ok") => {
    assert.notEqual(r, "ok");
    assert.equal((r as Refusal).code, "ERR_TOKEN_INVALID", (r as Refusal).message);
    assert.match((r as Refusal).message, /matches no rule of join token "hostile"/);
  };
  expectRefused(await outcome(attempt())); // the connection, warmed up

  // The median of 5 joins one after another; on a loaded machine, the best of up to 5 rounds.
  const rounds: number[][] = [];
  const median = (times: number[]) => [...times].sort((a, b) => a - b)[2]!;
  for (let round = 0; round < 5; round++) {
    const times: number[] = [];
    for (let i = 0; i < 5; i++) {
      const start = performance.now();
      expectRefused(await outcome(attempt()));
      times.push(performance.now() - start);
    }
    rounds.push(times);
    if (median(times) < 50 || median(times) > 1_000) break;
  }
  const shown = rounds.map((times) => times.map((t) => t.toFixed(1)).join(", ")).join("; ");
  process.stdout.write(`# refusal of a ${jwt.length}-byte ID token with ${CLAIMS} pathological claims: ${shown} ms\n`);
  assert.ok(Math.min(...rounds.map(median)) < 50, `refused in ${shown} ms`);

  // The event loop's longest stall while 10 run at once. On a loaded machine other processes
  // (and a garbage collection) can hold this one's core for tens of ms in any round, so the best
  // of up to 20 rounds (~50 ms each) counts; the regex matcher stalled every round for seconds.
  // 60 ms, not less: the best of 20 rounds read 23.5 ms once with three benchmarks beside the suite.
  (await Promise.all(Array.from({ length: 10 }, () => outcome(attempt())))).forEach(expectRefused); // warm-up
  const stalls: number[] = [];
  for (let round = 0; round < 20; round++) {
    const delay = monitorEventLoopDelay({ resolution: 2 });
    delay.enable();
    const results = await Promise.all(Array.from({ length: 10 }, () => outcome(attempt())));
    delay.disable();
    results.forEach(expectRefused);
    stalls.push(delay.max / 1e6);
    if (stalls.at(-1)! <= 60 || stalls.at(-1)! > 1_000) break;
  }
  process.stdout.write(`# longest event-loop stall with 10 such joins in parallel: ${stalls.map((s) => s.toFixed(1)).join(", ")} ms\n`);
  assert.ok(Math.min(...stalls) <= 60, `the event loop stalled ${stalls.map((s) => s.toFixed(1)).join(", ")} ms`);
});

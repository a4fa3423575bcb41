/**
 * CI joins without a stored secret (SPEC §14), end to end with the real binaries: a join token
 * resource made with `mezctl create -f`, ID tokens from a local issuer (discovery and JWKS over
 * HTTPS with a CA this test made, or a static JWKS), GitHub's ID-token endpoint stood in for,
 * `mezd identity start --join-method=github --one-shot`, and ssh into a real sshd as deploy.
 */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { Code } from "@connectrpc/connect";
import { SignJWT, base64url } from "jose";
import { JoinService } from "../../src/api/gen/mezite/v1/join_pb.js";
import { connect } from "../../src/api/client.js";
import { generateIssueKeys, publicKeysOf } from "../../src/identity/protocol.js";
import { ROOT, mezctl, mezctlOk, type AuthProcess } from "../harness/auth.js";
import { makeKey, startGithubJoinBed, startIssuer, type Issuer } from "../harness/oidc.js";
import { addIdentity, adminApi, auditEvents, outcome, refused, statusOf, tally } from "../auth/client.js";
import { humanLines, oneShot, seedSsh, sshdMissing, startNode, type Node } from "./fixture.js";

let tmp: string;
let issuer: Issuer;
let auth: AuthProcess;
let pin: string;
let node: Node | undefined;
const CLUSTER = "test.mezite";

const MAIN_RUN = { repository: "acme/webapp", repository_owner: "acme", ref: "refs/heads/main", workflow: "deploy", actor: "octocat", sha: "a1b2c3", environment: "production" };

before(async () => {
  tmp = mkdtempSync(join(tmpdir(), "mezite-join-methods-"));
  issuer = await startIssuer(tmp);
  let created: string;
  ({ auth, pin, created } = await startGithubJoinBed(issuer, tmp, "      - repository: acme/webapp\n        ref: refs/heads/main\n      - repository_owner: acme\n        environment: production\n        workflow: \"deploy-*\"\n"));
  assert.match(created, new RegExp(`mezd identity start --auth-server=\\S+ --join-method=github --token=github-deploy-main --ca-pin=${pin} --destination-dir=\\S+ --one-shot`));
});

after(async () => {
  await node?.sshd.stop();
  await auth?.stop();
  await issuer?.close();
  rmSync(tmp, { recursive: true, force: true });
});

/** A pipeline run: the daemon as a GitHub job runs it, with the runtime's two variables. */
function pipelineRun(dest: string, extraArgs: string[] = [], env: Record<string, string> = {}) {
  return oneShot(auth.addr, dest, ["--join-method=github", "--token=github-deploy-main", `--ca-pin=${pin}`, "--one-shot-retry=1s", ...extraArgs], {
    NODE_EXTRA_CA_CERTS: issuer.caPath,
    ACTIONS_ID_TOKEN_REQUEST_URL: issuer.githubRequestUrl,
    ACTIONS_ID_TOKEN_REQUEST_TOKEN: issuer.githubRequestToken,
    ...env,
  });
}

/** JoinWithIdToken as the daemon calls it, with fresh keys. */
function joinWith(idToken: string, joinToken = "github-deploy-main") {
  return connect(JoinService, auth.addr, {}).joinWithIdToken({ joinToken, idToken, ...publicKeysOf(generateIssueKeys()), requestedTtlMs: 3_600_000n });
}

const instances = async () => (await statusOf(auth, "github-deploy")).instances;

describe("GitHub Actions joins", () => {
  test("two pipeline runs join with their own ID tokens, log in as deploy, and are two instances with their claims", async (t) => {
    const runs = [];
    for (const runId of ["1001", "1002"]) {
      issuer.githubClaims = { ...MAIN_RUN, run_id: runId, sub: "repo:acme/webapp:ref:refs/heads/main" };
      const dest = join(tmp, `run-${runId}`);
      const r = await pipelineRun(dest);
      assert.equal(r.code, 0, r.stderr);
      assert.doesNotMatch(r.stderr, /eyJ/, "no JWT in the daemon's output");
      runs.push(dest);
    }
    const status = JSON.parse(await mezctlOk(auth, "agent-identities", "status", "github-deploy", "--format=json"));
    const byRun = Object.fromEntries(status.instances.map((i: { claims: Record<string, string>; join_method: string }) => [i.claims["run_id"], i]));
    assert.deepEqual(Object.keys(byRun).sort(), ["1001", "1002"]);
    assert.equal(byRun["1001"].join_method, "github");
    assert.deepEqual(byRun["1002"].claims, { repository: "acme/webapp", workflow: "deploy", ref: "refs/heads/main", run_id: "1002", sha: "a1b2c3", actor: "octocat", environment: "production", sub: "repo:acme/webapp:ref:refs/heads/main" });
    const text = await mezctlOk(auth, "agent-identities", "status", "github-deploy");
    assert.match(text, /joined by github: repository=acme\/webapp workflow=deploy ref=refs\/heads\/main run_id=1001/);
    const joins = (await auditEvents(auth, { type: "agent_identity.join" })).filter((e) => e.success && e.identity === "github-deploy");
    assert.ok(joins.some((e) => /join_token=github-deploy-main method=github .*run_id=1002/.test(e.detail)), "the audit event holds the claims");

    if (sshdMissing(t)) return;
    node = await startNode(auth, join(tmp, "node"));
    for (const dest of runs) {
      const ssh = await seedSsh(dest, node.sshd.port, "deploy");
      assert.equal(ssh.code, 0, ssh.stderr);
      assert.equal(ssh.stdout.trim(), "deploy");
    }
  });

  test("an ID token joins once: the same token twice is refused as used; of 20 concurrent joins with one, exactly one succeeds", async () => {
    const token = await issuer.sign({ iss: issuer.githubIssuer, aud: CLUSTER, ...MAIN_RUN, run_id: "2001" });
    await joinWith(token);
    const again = await refused(joinWith(token), "ERR_TOKEN_USED", Code.PermissionDenied);
    assert.match(again.message, /already used to join/);
    const racing = await issuer.sign({ iss: issuer.githubIssuer, aud: CLUSTER, ...MAIN_RUN, run_id: "2002" });
    const results = await Promise.all(Array.from({ length: 20 }, () => outcome(joinWith(racing))));
    assert.deepEqual(tally(results), { ok: 1, ERR_TOKEN_USED: 19 });
    // A token without jti is recognised by what it signs; a re-encoded signature does not help.
    const noJti = await new SignJWT({ iss: issuer.githubIssuer, aud: CLUSTER, ...MAIN_RUN, run_id: "2003", iat: Math.floor(Date.now() / 1000), exp: Math.floor(Date.now() / 1000) + 300 })
      .setProtectedHeader({ alg: "ES256", kid: issuer.published[0]!.kid })
      .sign(issuer.published[0]!.privateKey);
    await joinWith(noJti);
    await refused(joinWith(noJti), "ERR_TOKEN_USED");
  });

  test("bad ID tokens are refused with a clear error and create nothing; those whose signature verified are audited one by one", async () => {
    const key = issuer.published[0]!;
    const now = Math.floor(Date.now() / 1000);
    const good = { iss: issuer.githubIssuer, aud: CLUSTER, ...MAIN_RUN };
    const stranger = await makeKey();
    const parts = (await issuer.sign(good)).split(".");
    const tampered = `${parts[0]}.${base64url.encode(JSON.stringify({ ...good, repository: "acme/webapp", run_id: "9", iat: now, exp: now + 300, jti: "t" }))}.${parts[2]}`;
    const unsigned = `${base64url.encode(JSON.stringify({ alg: "none", typ: "JWT" }))}.${base64url.encode(JSON.stringify({ ...good, iat: now, exp: now + 300 }))}.`;
    const hs256 = await new SignJWT({ ...good, iat: now, exp: now + 300 })
      .setProtectedHeader({ alg: "HS256", kid: key.kid })
      .sign(new TextEncoder().encode(JSON.stringify(key.jwk)));
    // [what, token, message, whether its signature verified (then it is audited on its own)]
    const cases: [string, string, RegExp, boolean][] = [
      ["wrong audience", await issuer.sign({ ...good, aud: "another.cluster" }), /audience \(aud\) is not this cluster's name, test\.mezite/, true],
      ["wrong issuer", await issuer.sign({ ...good, iss: `${issuer.origin}/someone-else` }), /issuer \(iss\) is not the join token's/, true],
      ["expired", await issuer.sign({ ...good, iat: now - 600, exp: now - 60 }), /has expired/, true],
      ["not yet valid", await issuer.sign({ ...good, nbf: now + 600 }), /not valid yet/, true],
      ["alg none", unsigned, /algorithm the service does not accept/, false],
      ["HS256 with the public key", hs256, /algorithm the service does not accept/, false],
      ["bad signature", tampered, /signature does not verify/, false],
      ["key id not in the JWKS", await issuer.sign(good, stranger), /key the issuer does not publish/, false],
      ["not a JWT", "not-a.jwt!", /not a JWT/, false],
      ["over 16 KiB", `${parts[0]}.${"A".repeat(16 * 1024)}.${parts[2]}`, /longer than 16384 bytes/, false],
      ["no rule matches", await issuer.sign({ ...good, repository: "acme/other", repository_owner: "acme", environment: "staging" }), /matches no rule of join token "github-deploy-main"$/, true],
    ];
    const before = (await instances()).length;
    const auditBefore = (await auditEvents(auth, { type: "agent_identity.join" })).length;
    for (const [what, jwt, message] of cases) {
      const r = await refused(joinWith(jwt), "ERR_TOKEN_INVALID").catch((e: Error) => assert.fail(`${what}: ${e.message}`));
      assert.match(r.message, message, what);
      assert.doesNotMatch(r.message, /acme\/other|repository_owner/, `${what}: the reply does not tell the rules`);
    }
    assert.equal((await instances()).length, before, "nothing was created");
    const refusals = (await auditEvents(auth, { type: "agent_identity.join" })).slice(auditBefore);
    assert.equal(refusals.length, cases.filter(([, , , verified]) => verified).length, "an event for each token whose signature verified, none for the others");
    assert.ok(refusals.every((e) => !e.success && e.error === "ERR_TOKEN_INVALID" && e.identity === "github-deploy"));
    assert.match(refusals.at(-1)!.detail, /repository=acme\/other .*environment=staging/, "the audit event holds the claims that matched no rule");

    // The daemon's side of a refusal: one line, exit 3 (not worth retrying).
    issuer.githubClaims = { ...MAIN_RUN, repository: "evil/fork", repository_owner: "evil", run_id: "3001" };
    const r = await pipelineRun(join(tmp, "refused"));
    assert.equal(r.code, 3, r.stderr);
    assert.deepEqual(humanLines(r.stderr), ['mezd: the ID token matches no rule of join token "github-deploy-main"']);
  });

  test("1,000 joins with ID tokens that fail before their signature verifies write no event each: a handful of summaries count them", async () => {
    const file = join(tmp, "flood.yaml");
    writeFileSync(file, `kind: join_token\nmetadata:\n  name: flood\nspec:\n  agent_identity: github-deploy\n  join_method: github\n  github:\n    enterprise_server_host: "${new URL(issuer.origin).host}"\n    allow:\n      - repository: acme/webapp\n`);
    await mezctlOk(auth, "create", "-f", file);
    const good = { iss: issuer.githubIssuer, aud: CLUSTER, ...MAIN_RUN };
    const parts = (await issuer.sign(good)).split(".");
    const now = Math.floor(Date.now() / 1000);
    const unverifiable = [
      "garbage",
      `${parts[0]}.${"A".repeat(17 * 1024)}.${parts[2]}`, // over 16 KiB
      `${base64url.encode(JSON.stringify({ alg: "none" }))}.${base64url.encode(JSON.stringify({ ...good, iat: now, exp: now + 300 }))}.`,
      `${parts[0]}.${base64url.encode(JSON.stringify({ ...good, repository: "acme/webapp", iat: now, exp: now + 300 }))}.${parts[2]}`, // tampered
      await issuer.sign(good, await makeKey()), // a key the issuer does not publish
    ];
    const client = connect(JoinService, auth.addr, {});
    const keys = publicKeysOf(generateIssueKeys());
    const auditBefore = (await auditEvents(auth)).length;
    const results: Awaited<ReturnType<typeof outcome>>[] = [];
    const start = Date.now();
    for (let i = 0; i < 1000; i += 25) {
      results.push(...(await Promise.all(Array.from({ length: 25 }, (_, j) => outcome(client.joinWithIdToken({ joinToken: "flood", idToken: unverifiable[(i + j) % unverifiable.length]!, ...keys, requestedTtlMs: 600_000n }))))));
    }
    const floodMs = Date.now() - start;
    assert.deepEqual(tally(results), { ERR_TOKEN_INVALID: 1000 });

    // The summaries come within a period (10 s) of the first refusal: wait for all 1,000 to be counted.
    const counted = (events: { detail: string }[]) =>
      events.reduce((n, e) => n + [...e.detail.matchAll(/join_token=flood ERR_TOKEN_INVALID \((\d+)\)/g)].reduce((m, x) => m + Number(x[1]), 0), 0);
    let summaries: Awaited<ReturnType<typeof auditEvents>> = [];
    for (const deadline = Date.now() + 60_000; Date.now() < deadline; await new Promise((r) => setTimeout(r, 250))) {
      summaries = (await auditEvents(auth, { type: "join.refused_unverified_id_tokens" })).filter((e) => /join_token=flood /.test(e.detail));
      if (counted(summaries) >= 1000) break;
    }
    assert.equal(counted(summaries), 1000, summaries.map((e) => e.detail).join("\n"));
    const added = (await auditEvents(auth)).slice(auditBefore);
    assert.deepEqual(added.filter((e) => e.type === "agent_identity.join"), [], "no event per refused join");
    assert.ok(summaries.length <= 5, `${summaries.length} summary events`);
    assert.ok(summaries.every((e) => !e.success && e.error === "ERR_TOKEN_INVALID" && e.remoteAddr === "127.0.0.1"));
    process.stdout.write(`# 1,000 unverifiable ID tokens in ${floodMs} ms: ${added.length} audit events (${summaries.length} summaries of them)\n`);
  });

  test("without --ca-pin the daemon refuses to start; with a wrong pin it sends nothing", async () => {
    const noPin = await oneShot(auth.addr, join(tmp, "no-pin"), ["--join-method=github", "--token=github-deploy-main"], { ACTIONS_ID_TOKEN_REQUEST_URL: issuer.githubRequestUrl, ACTIONS_ID_TOKEN_REQUEST_TOKEN: "x" });
    assert.equal(noPin.code, 2);
    assert.match(noPin.stderr, /--ca-pin is required with --join-method=github/);
    const asked = issuer.githubRequests;
    const auditBefore = (await auditEvents(auth)).length;
    const wrong = await pipelineRun(join(tmp, "wrong-pin"), [`--ca-pin=sha256:${"0".repeat(64)}`]);
    assert.equal(wrong.code, 3, wrong.stderr);
    assert.match(wrong.stderr, /not signed by the pinned CA/);
    assert.equal(issuer.githubRequests, asked, "no ID token was even fetched");
    assert.equal((await auditEvents(auth)).length, auditBefore, "the auth service heard nothing");
  });
});
// The GitHub Action (action.yml) joining and exporting its outputs: test/release/action.test.ts.

describe("OIDC issuers", () => {
  test("keys from discovery over HTTPS; a JWKS rotated at the issuer is picked up without a restart; static_jwks for issuers out of reach", async () => {
    await addIdentity(auth, "k8s-worker", ["ci-deployer"]);
    const oidcIssuer = `${issuer.origin}/k8s`;
    const stat = await makeKey("EdDSA");
    const file = join(tmp, "k8s.yaml");
    const doc = (name: string, section: string) => `kind: join_token
metadata:
  name: ${name}
spec:
  agent_identity: k8s-worker
  join_method: oidc
  oidc:
${section}
    allow:
      - sub: "system:serviceaccount:deploy:*"
        aud: ${CLUSTER}
`;
    writeFileSync(file, doc("k8s-deploy", `    issuer: ${oidcIssuer}`));
    await mezctlOk(auth, "create", "-f", file);
    writeFileSync(file, doc("offline", `    issuer: https://issuer.invalid\n    static_jwks: '${JSON.stringify({ keys: [stat.jwk] })}'`));
    await mezctlOk(auth, "create", "-f", file);
    const sa = { aud: CLUSTER, sub: "system:serviceaccount:deploy:runner" };
    await joinWith(await issuer.sign({ iss: oidcIssuer, ...sa }), "k8s-deploy");

    const rotated = await makeKey("RS256");
    issuer.published = [rotated];
    await new Promise((r) => setTimeout(r, 2_100)); // past the service's refetch cooldown
    await joinWith(await issuer.sign({ iss: oidcIssuer, ...sa }, rotated), "k8s-deploy");
    await joinWith(await issuer.sign({ iss: "https://issuer.invalid", ...sa }, stat), "offline");
    await refused(joinWith(await issuer.sign({ iss: oidcIssuer, ...sa, sub: "system:serviceaccount:kube-system:admin" }, rotated), "k8s-deploy"), "ERR_TOKEN_INVALID");

    // Workload tokens come from a file or a variable; the instance records issuer and subject.
    const tokenFile = join(tmp, "sa-token");
    writeFileSync(tokenFile, await issuer.sign({ iss: oidcIssuer, ...sa }, rotated));
    const r = await oneShot(auth.addr, join(tmp, "k8s"), ["--join-method=oidc", "--token=k8s-deploy", `--ca-pin=${pin}`, `--id-token-file=${tokenFile}`]);
    assert.equal(r.code, 0, r.stderr);
    const claims = (await statusOf(auth, "k8s-worker")).instances.map((i) => i.claims);
    assert.ok(claims.every((c) => c["sub"] === "system:serviceaccount:deploy:runner") && claims.length === 4);
  });

  test("an issuer whose iss ends in a slash (Auth0's form) joins: the join token written either way", async () => {
    await addIdentity(auth, "slashed-worker", ["ci-deployer"]);
    const iss = `${issuer.origin}/slashed/`;
    const file = join(tmp, "slashed.yaml");
    for (const [name, written] of [["slashed", iss], ["unslashed", iss.slice(0, -1)]]) {
      writeFileSync(file, `kind: join_token\nmetadata:\n  name: ${name}\nspec:\n  agent_identity: slashed-worker\n  join_method: oidc\n  oidc:\n    issuer: ${written}\n    allow:\n      - sub: worker\n`);
      await mezctlOk(auth, "create", "-f", file);
      await joinWith(await issuer.sign({ iss, aud: CLUSTER, sub: "worker" }), name);
    }
    await refused(joinWith(await issuer.sign({ iss: `${iss}x`, aud: CLUSTER, sub: "worker" }), "slashed"), "ERR_TOKEN_INVALID");
  });

  test("GitLab: the job's id_tokens variable, verified against the GitLab instance's keys", async () => {
    await addIdentity(auth, "gitlab-ci", ["ci-deployer"]);
    const host = new URL(issuer.origin).host;
    const file = join(tmp, "gitlab.yaml");
    writeFileSync(file, `kind: join_token\nmetadata:\n  name: gitlab-main\nspec:\n  agent_identity: gitlab-ci\n  join_method: gitlab\n  gitlab:\n    domain: "${host}"\n    allow:\n      - project_path: acme/webapp\n        ref_protected: true\n`);
    await mezctlOk(auth, "create", "-f", file);
    const claims = { iss: issuer.origin, aud: CLUSTER, sub: "project_path:acme/webapp:ref_type:branch:ref:main", project_path: "acme/webapp", ref: "main", ref_protected: "true", pipeline_id: "77", user_login: "dev" };
    const r = await oneShot(auth.addr, join(tmp, "gitlab"), ["--join-method=gitlab", "--token=gitlab-main", `--ca-pin=${pin}`, "--id-token-env=CI_MEZITE_TOKEN"], { CI_MEZITE_TOKEN: await issuer.sign(claims) });
    assert.equal(r.code, 0, r.stderr);
    const [inst] = (await statusOf(auth, "gitlab-ci")).instances;
    assert.deepEqual(inst?.claims, { project_path: "acme/webapp", pipeline_id: "77", ref: "main", user_login: "dev", sub: "project_path:acme/webapp:ref_type:branch:ref:main" });
    const unprotected = await oneShot(auth.addr, join(tmp, "gitlab-2"), ["--join-method=gitlab", "--token=gitlab-main", `--ca-pin=${pin}`], { MEZITE_ID_TOKEN: await issuer.sign({ ...claims, ref_protected: "false" }) });
    assert.equal(unprotected.code, 3, unprotected.stderr);
  });

  test("an issuer that cannot be reached is a retryable error (exit 1), not a refusal", async () => {
    await addIdentity(auth, "unreachable", ["ci-deployer"]);
    const file = join(tmp, "down.yaml");
    writeFileSync(file, `kind: join_token\nmetadata:\n  name: down\nspec:\n  agent_identity: unreachable\n  join_method: oidc\n  oidc:\n    issuer: https://127.0.0.1:9/down\n    allow:\n      - sub: worker\n`);
    await mezctlOk(auth, "create", "-f", file);
    const jwt = await issuer.sign({ iss: "https://127.0.0.1:9/down", aud: CLUSTER, sub: "worker" });
    const api = await refused(joinWith(jwt, "down"), "ERR_ISSUER_UNREACHABLE", Code.Unavailable);
    // The caller hears a generic sentence; the issuer's address and the network error are in the service's log.
    const ref = /^the auth service cannot reach the ID token's issuer; retry later \(reference ([0-9a-f]{8}) in its log\)$/.exec(api.message)?.[1];
    assert.ok(ref, api.message);
    for (const deadline = Date.now() + 10_000; !auth.output().includes(ref) && Date.now() < deadline; ) await new Promise((r) => setTimeout(r, 50));
    const logged = auth.output().split("\n").find((l) => l.includes(ref)) ?? "";
    assert.match(logged, /cannot fetch the keys of https:\/\/127\.0\.0\.1:9\/down: .*ECONNREFUSED/);
    const r = await oneShot(auth.addr, join(tmp, "down"), ["--join-method=oidc", "--token=down", `--ca-pin=${pin}`, "--one-shot-retry=1s"], { MEZITE_ID_TOKEN: jwt });
    assert.equal(r.code, 1, r.stderr);
  });
});

describe("issuers that fail", () => {
  test("discovery and JWKS fetches have a total deadline, and a failing issuer is not asked again for a few seconds", async () => {
    const doc = (name: string, path: string) => `kind: join_token\nmetadata:\n  name: ${name}\nspec:\n  agent_identity: unreachable\n  join_method: oidc\n  oidc:\n    issuer: ${issuer.origin}${path}\n    allow:\n      - sub: worker\n`;
    const file = join(tmp, "failing.yaml");
    for (const [name, path] of [["tarpit", "/tarpit"], ["failing", "/failing"], ["badjwks", "/badjwks"]] as const) {
      writeFileSync(file, doc(name, path));
      await mezctlOk(auth, "create", "-f", file);
    }
    const asked = (path: string) => issuer.requests.get(path) ?? 0;
    const tokenFor = (path: string) => issuer.sign({ iss: `${issuer.origin}${path}`, aud: CLUSTER, sub: "worker" });

    // A discovery that trickles a byte every 200 ms would hold a socket timeout off for good.
    let start = Date.now();
    await refused(joinWith(await tokenFor("/tarpit"), "tarpit"), "ERR_ISSUER_UNREACHABLE", Code.Unavailable);
    const tarpitMs = Date.now() - start;
    assert.ok(tarpitMs >= 4_500 && tarpitMs < 9_000, `refused after ${tarpitMs} ms (the deadline is 5 s)`);
    start = Date.now();
    await refused(joinWith(await tokenFor("/tarpit"), "tarpit"), "ERR_ISSUER_UNREACHABLE");
    assert.ok(Date.now() - start < 2_000, "refused at once while the failure is remembered");
    assert.equal(asked("/tarpit/.well-known/openid-configuration"), 1);

    // Discovery answering 500, and a JWKS answering 500: a burst of joins asks each once.
    for (const [name, path, failing] of [["failing", "/failing", "/failing/.well-known/openid-configuration"], ["badjwks", "/badjwks", "/badjwks/jwks"]] as const) {
      const jwt = await tokenFor(path);
      const results = await Promise.all(Array.from({ length: 10 }, () => outcome(joinWith(jwt, name))));
      results.push(await outcome(joinWith(jwt, name)));
      assert.deepEqual(tally(results), { ERR_ISSUER_UNREACHABLE: 11 }, name);
      assert.equal(asked(failing), 1, `${failing} asked once`);
    }
    // A few seconds later the issuer is asked again.
    start = Date.now();
    const jwt = await tokenFor("/failing");
    while (asked("/failing/.well-known/openid-configuration") === 1 && Date.now() - start < 15_000) {
      await refused(joinWith(jwt, "failing"), "ERR_ISSUER_UNREACHABLE");
      await new Promise((r) => setTimeout(r, 250));
    }
    const againMs = Date.now() - start;
    assert.equal(asked("/failing/.well-known/openid-configuration"), 2, "asked again");
    process.stdout.write(`# failing issuer: refused after ${tarpitMs} ms by a trickling discovery; asked again after ${againMs} ms\n`);
  });
});

describe("join_token resources", () => {
  test("rules that are empty or too broad are refused at create, naming the field; get and rm work", async () => {
    const file = join(tmp, "bad.yaml");
    const attempt = async (section: string, identity = "github-deploy") => {
      writeFileSync(file, `kind: join_token\nmetadata:\n  name: bad\nspec:\n  agent_identity: ${identity}\n  join_method: github\n  github:\n${section}`);
      return mezctl(auth, "create", "-f", file);
    };
    const cases: [string, RegExp][] = [
      ["    allow: []\n", /spec\.github\.allow: needs at least one rule/],
      ["    allow:\n      - {}\n", /spec\.github\.allow\[0\]: is empty/],
      ["    allow:\n      - ref: refs/heads/main\n", /spec\.github\.allow\[0\]: is too broad: set at least one of repository, repository_owner, sub$/m],
      ['    allow:\n      - repository_owner: "*"\n', /spec\.github\.allow\[0\]\.repository_owner: must be literal \(no \*\)/],
      ['    allow:\n      - repository: "*/*"\n', /spec\.github\.allow\[0\]\.repository: must be OWNER\/REPO with a literal owner/],
      ['    allow:\n      - sub: "repo:*"\n', /spec\.github\.allow\[0\]\.sub: must start with a literal "repo:OWNER\/"/],
      ["    allow:\n      - repository: acme/webapp\n        __proto__: x\n", /spec\.github\.allow\[0\]\.__proto__: is a reserved name, not a claim/],
      ["    allow:\n      - repository: acme/webapp\n        branch: main\n", /spec\.github\.allow\[0\]\.branch: unknown field/],
      ["    allow:\n      - repository: acme/webapp\n    colour: blue\n", /spec\.github\.colour: unknown field/],
    ];
    for (const [section, message] of cases) {
      const r = await attempt(section);
      assert.equal(r.code, 2, r.stderr);
      assert.match(r.stderr, message);
    }
    const missing = await attempt("    allow:\n      - repository: acme/webapp\n", "nobody");
    assert.match(missing.stderr, /agent identity "nobody" \(spec\.agent_identity\) not found/);
    const listed = await mezctlOk(auth, "get", "join_tokens");
    assert.match(listed, /github-deploy-main\s+github-deploy\s+github\s+https:\/\/127\.0\.0\.1:\d+\/_services\/token/);
    const one = await mezctlOk(auth, "get", "join_token/github-deploy-main");
    assert.match(one, /join_method: github/);
    assert.match(one, /repository: acme\/webapp/);
    assert.equal((await mezctl(auth, "rm", "join_token/down")).code, 0);
    // The examples the README points at are valid resources.
    await addIdentity(auth, "gitlab-deploy", ["ci-deployer"]);
    assert.match(await mezctlOk(auth, "create", "-f", join(ROOT, "examples/join-token-gitlab.yaml")), /join_token "gitlab-deploy-main" created \(gitlab/);
    assert.match(await mezctlOk(auth, "create", "--force", "-f", join(ROOT, "examples/join-token-github.yaml")), /join_token "github-deploy-main" updated \(github/);
    assert.ok(!(await adminApi(auth).listJoinTokens({})).joinTokens.some((t) => t.name === "down"));
  });
});

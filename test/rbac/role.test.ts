import { test } from "node:test";
import { readFileSync } from "node:fs";
import assert from "node:assert/strict";
import { parseRoleYaml, roleFromDocument, roleToDocument } from "../../src/rbac/role.js";
import { canLogin, labelsMatch, principalsFor, requirePrincipals, sessionTtlMs } from "../../src/rbac/access.js";
import { isMeziteError } from "../../src/lib/errors.js";

const SEED_ROLE = readFileSync(new URL("../../examples/ci-deployer.yaml", import.meta.url), "utf8");

test("the seed's ci-deployer role parses as written", () => {
  const r = parseRoleYaml(SEED_ROLE);
  assert.equal(r.role, "ci-deployer");
  assert.equal(r.description, "CI/CD deploy pipeline SSH access");
  assert.equal(r.maxSessionTtlMs, 3_600_000);
  assert.deepEqual(r.allow, { logins: ["deploy"], labels: { env: ["staging", "production"] } });
  assert.deepEqual(r.deny, { logins: ["root"], labels: {} });
  assert.deepEqual(roleFromDocument(roleToDocument(r)), r, "printing and re-reading a role changes nothing");
});

test("unknown fields are refused, naming the field", () => {
  const cases: [string, RegExp][] = [
    [SEED_ROLE.replace("  options:", "  optoins:"), /unknown field "spec\.optoins"/],
    [SEED_ROLE.replace("    logins:\n      - deploy", "    logins:\n      - deploy\n    nodes: [a]"), /unknown field "spec\.allow\.nodes"/],
    [SEED_ROLE + "extra: 1\n", /unknown field "extra"/],
    [SEED_ROLE.replace("max_session_ttl: 1h", "max_session_ttl: forever"), /max_session_ttl/],
    [SEED_ROLE.replace("kind: role", "kind: user"), /kind must be "role"/],
    [SEED_ROLE.replace("name: ci-deployer", "name: CI Deployer"), /metadata\.name/],
    ["kind: role\nmetadata: {name: a}\nspec: {allow: {logins: [\"bad login\"]}}", /not a valid login/],
    ["{{{", /not valid YAML/],
    ["kind: role\nkind: role\n", /not valid YAML/],
  ];
  for (const [text, re] of cases) {
    assert.throws(() => parseRoleYaml(text), (e) => isMeziteError(e, "ERR_BAD_ROLE") && re.test(e.message), text);
  }
});

test("a single string is accepted for labels and logins", () => {
  const r = parseRoleYaml("kind: role\nmetadata: {name: a}\nspec: {allow: {logins: deploy, node_labels: {env: staging}}}");
  assert.deepEqual(r.allow, { logins: ["deploy"], labels: { env: ["staging"] } });
});

const role = (name: string, allowLogins: string[], allowLabels: Record<string, string[]>, denyLogins: string[] = [], denyLabels: Record<string, string[]> = {}, ttl = 0) => ({
  role: name,
  allow: { logins: allowLogins, labels: allowLabels },
  deny: { logins: denyLogins, labels: denyLabels },
  maxSessionTtlMs: ttl,
});

test("principals are allowed logins minus denied logins over all roles", () => {
  const a = role("a", ["deploy", "root"], {}, ["root"]);
  const b = role("b", ["ops", "root"], {});
  assert.deepEqual(principalsFor([a, b]), ["deploy", "ops"]);
  assert.throws(() => requirePrincipals([role("c", ["root"], {}, ["root"])]), (e) => isMeziteError(e, "ERR_NO_LOGINS"));
});

test("the TTL is the minimum over roles' max_session_ttl", () => {
  assert.equal(sessionTtlMs([role("a", [], {}, [], {}, 3_600_000), role("b", [], {}, [], {}, 600_000)], 7_200_000), 600_000);
  assert.equal(sessionTtlMs([role("a", [], {}, [], {}, 0)], 7_200_000), 7_200_000);
});

test("node label rules: allow minus deny, '*' matches any value", () => {
  assert.equal(labelsMatch({ env: ["staging", "production"] }, { env: "staging" }), true);
  assert.equal(labelsMatch({ env: ["staging", "production"] }, { env: "dev" }), false);
  assert.equal(labelsMatch({ env: ["*"] }, { env: "dev" }), true);
  assert.equal(labelsMatch({ env: ["*"] }, {}), false);
  assert.equal(labelsMatch({ "*": ["*"] }, {}), true);
  assert.equal(labelsMatch({}, { env: "dev" }), false);
  assert.equal(labelsMatch({ env: ["dev"], team: ["a"] }, { env: "dev" }), false, "every key must match");

  const deployer = role("ci-deployer", ["deploy"], { env: ["staging", "production"] }, ["root"]);
  assert.equal(canLogin([deployer], "deploy", { env: "staging" }), true);
  assert.equal(canLogin([deployer], "deploy", { env: "dev" }), false);
  assert.equal(canLogin([deployer], "root", { env: "staging" }), false);
  const everywhere = role("all", ["deploy"], { "*": ["*"] });
  assert.equal(canLogin([everywhere], "deploy", { env: "dev" }), true);
  const noProd = role("no-prod", [], {}, [], { env: ["production"] });
  assert.equal(canLogin([everywhere, noProd], "deploy", { env: "production" }), false, "deny beats allow");
  assert.equal(canLogin([everywhere, noProd], "deploy", { env: "staging" }), true);
  const opsOnDev = role("ops", ["ops"], { env: ["dev"] });
  assert.equal(canLogin([deployer, opsOnDev], "ops", { env: "staging" }), false, "a login is granted only with the role's own labels");
});

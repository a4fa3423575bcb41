import { test } from "node:test";
import { readFileSync } from "node:fs";
import assert from "node:assert/strict";
import { parseRoleYaml, roleFromDocument, roleToDocument } from "../../src/rbac/role.js";
import { canLogin, labelsMatch, principalsFor, requirePrincipals, sessionTtlMs } from "../../src/rbac/access.js";
import { isMeziteError } from "../../src/lib/errors.js";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { RoleSchema } from "../../src/api/gen/mezite/v1/common_pb.js";
import { roleFromProto } from "../../src/api/roles.js";

/** Label rules are prototype-free maps: expectations are built the same way (deepEqual compares prototypes). */
const rule = (o: Record<string, string[]>) => Object.assign(Object.create(null) as Record<string, string[]>, o);

const SEED_ROLE = readFileSync(new URL("../../examples/ci-deployer.yaml", import.meta.url), "utf8");

test("the seed's ci-deployer role parses as written", () => {
  const r = parseRoleYaml(SEED_ROLE);
  assert.equal(r.role, "ci-deployer");
  assert.equal(r.description, "CI/CD deploy pipeline SSH access");
  assert.equal(r.maxSessionTtlMs, 3_600_000);
  assert.deepEqual(r.allow, { logins: ["deploy"], labels: rule({ env: ["staging", "production"] }) });
  assert.deepEqual(r.deny, { logins: ["root"], labels: rule({}) });
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
  assert.deepEqual(r.allow, { logins: ["deploy"], labels: rule({ env: ["staging"] }) });
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

test("label rules: the key '*' only with the value '*', reserved keys refused, by YAML, JSON and the wire", () => {
  const yamlRole = (side: string, labels: string) => `kind: role\nmetadata: {name: a}\nspec:\n  ${side}:\n    logins: [deploy]\n    node_labels:\n${labels}`;
  const cases: [string, RegExp][] = [];
  for (const side of ["allow", "deny"]) {
    cases.push(
      [yamlRole(side, "      '*': production\n"), new RegExp(`spec\\.${side}\\.node_labels: the key '\\*' \\(any node\\) takes only the value '\\*'`)],
      [yamlRole(side, "      '*': ['*', production]\n"), /the key '\*' \(any node\) takes only the value '\*'/],
      [yamlRole(side, "      __proto__: '*'\n"), /"__proto__" is reserved and cannot be a label key/],
      [yamlRole(side, "      constructor: '*'\n"), /"constructor" is reserved/],
      [yamlRole(side, "      prototype: [x]\n"), /"prototype" is reserved/],
    );
  }
  for (const [text, re] of cases) {
    assert.throws(() => parseRoleYaml(text), (e) => isMeziteError(e, "ERR_BAD_ROLE") && re.test(e.message) && !e.message.includes("\n"), text);
  }
  // JSON keeps "__proto__" as an own key: refused, not silently dropped.
  const json = JSON.parse('{"kind":"role","metadata":{"name":"a"},"spec":{"allow":{"logins":["deploy"],"node_labels":{"__proto__":["*"],"env":["dev"]}}}}');
  assert.throws(() => roleFromDocument(json), (e) => isMeziteError(e, "ERR_BAD_ROLE") && /"__proto__" is reserved/.test(e.message));
  // On the wire, a map entry "__proto__" (what any gRPC client can send) is refused by the service too.
  const wire = Buffer.from(toBinary(RoleSchema, create(RoleSchema, { name: "a", allow: { logins: ["deploy"], nodeLabels: { __protX__: { values: ["*"] }, env: { values: ["dev"] } } } })));
  wire.write("__proto__", wire.indexOf("__protX__"));
  assert.throws(() => roleFromProto(fromBinary(RoleSchema, wire)), (e) => isMeziteError(e, "ERR_BAD_ROLE") && /spec\.allow\.node_labels: "__proto__" is reserved/.test(e.message));
  // What is accepted is held without a prototype.
  const ok = parseRoleYaml(yamlRole("allow", "      '*': '*'\n"));
  assert.equal(Object.getPrototypeOf(ok.allow.labels), null);
  assert.equal(Object.getPrototypeOf(ok.deny.labels), null);
});

test("label rules match own labels only: constructor, toString and __proto__ reach no prototype", () => {
  // Rules as nodes and the service read them back: plain objects from JSON (a certificate extension, a stored role).
  const fromJson = (text: string) => JSON.parse(text) as Record<string, string[]>;
  for (const key of ["constructor", "toString", "hasOwnProperty", "__proto__"]) {
    const r = fromJson(`{${JSON.stringify(key)}: ["*"]}`);
    assert.equal(labelsMatch(r, { env: "dev" }), false, `allow ${key}: '*' matches no node without that label`);
    assert.equal(labelsMatch(r, {}), false);
    const everywhere = role("x", ["deploy"], r);
    assert.equal(canLogin([everywhere], "deploy", { env: "dev" }), false, key);
    // A node that really has that label (labels read from JSON too) matches.
    assert.equal(labelsMatch(r, JSON.parse(`{${JSON.stringify(key)}: "v"}`) as Record<string, string>), true, key);
  }
  assert.equal(labelsMatch(fromJson('{"env": ["dev"]}'), Object.create({ env: "dev" }) as Record<string, string>), false, "an inherited label is not the node's");
});

test("logins: allowed exactly as OpenSSH compares them; a deny in another case still denies", () => {
  assert.equal(canLogin([role("a", ["Deploy"], { "*": ["*"] })], "deploy", {}), false, "allow is case-sensitive");
  assert.deepEqual(principalsFor([role("a", ["Deploy", "deploy"], {})]), ["Deploy", "deploy"]);
  const allowRoot = role("admin", ["root", "deploy"], { "*": ["*"] });
  const denyRoot = role("no-root", [], {}, ["ROOT"]);
  assert.deepEqual(principalsFor([allowRoot, denyRoot]), ["deploy"]);
  assert.equal(canLogin([allowRoot, denyRoot], "root", { env: "dev" }), false);
  assert.equal(canLogin([allowRoot, denyRoot], "Root", { env: "dev" }), false);
  assert.equal(canLogin([allowRoot, denyRoot], "deploy", { env: "dev" }), true);
  assert.deepEqual(principalsFor([role("a", ["root"], {}, ["Root"])]), [], "within one role too");
});

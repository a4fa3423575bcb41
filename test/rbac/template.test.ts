/** Role templates (SPEC §19): how roles with {{claims.NAME}} are written, checked and resolved. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { isMeziteError } from "../../src/lib/errors.js";
import { canLogin, principalsFor } from "../../src/rbac/access.js";
import { parseRoleYaml, roleFromDocument, roleToDocument } from "../../src/rbac/role.js";
import { resolveRole, resolveRoles, templateClaims } from "../../src/rbac/template.js";

const DEPLOY_ENV = `kind: role
metadata: {name: deploy-env}
spec:
  allow:
    logins: ["deploy-{{claims.environment}}", "{{ claims.actor }}", ci]
    node_labels:
      env: "{{claims.environment}}"
      team: [web, "{{claims.team}}"]
  deny:
    logins: [root]
`;

test("templates in allow logins and label values are accepted, named by their claims, and survive printing", () => {
  const r = parseRoleYaml(DEPLOY_ENV);
  assert.deepEqual(r.allow.logins, ["deploy-{{claims.environment}}", "{{ claims.actor }}", "ci"]);
  assert.deepEqual(templateClaims(r).sort(), ["actor", "environment", "team"]);
  assert.deepEqual(roleFromDocument(roleToDocument(r)), r);
});

test("each instance gets its claims' values; a missing or invalid claim yields nothing, never a wildcard", () => {
  const r = parseRoleYaml(DEPLOY_ENV);
  const staging = resolveRole(r, { environment: "staging", actor: "octocat", team: "ops" });
  assert.deepEqual(staging.allow.logins, ["deploy-staging", "octocat", "ci"]);
  assert.deepEqual({ ...staging.allow.labels }, { env: ["staging"], team: ["web", "ops"] });
  assert.ok(canLogin([staging], "deploy-staging", { env: "staging", team: "web" }));
  assert.ok(!canLogin([staging], "deploy-staging", { env: "production", team: "web" }), "a staging run is refused on a production node");

  // No claims (a bootstrap-token join): only the literal login; the env key stays and matches no node.
  const none = resolveRole(r, undefined);
  assert.deepEqual(none.allow.logins, ["ci"]);
  assert.deepEqual({ ...none.allow.labels }, { env: [], team: ["web"] });
  for (const env of ["staging", "production", "*", ""]) assert.ok(!canLogin([none], "ci", { env, team: "web" }), `env=${env}`);

  // Values that would escape: a glob, a bad login, control characters, a template in a claim.
  const odd = resolveRole(r, { environment: "*", actor: "root\nx", team: "{{claims.environment}}" });
  assert.deepEqual(odd.allow.logins, ["ci"], "deploy-* and a multi-line login are not logins");
  assert.deepEqual({ ...odd.allow.labels }, { env: [], team: ["web"] }, "'*' and a template are not label values");
  const slash = resolveRole(r, { environment: "acme/web", actor: "-rf", team: "a".repeat(64) });
  assert.deepEqual(slash.allow.logins, ["ci"]);
  assert.deepEqual({ ...slash.allow.labels }, { env: ["acme/web"], team: ["web"] });
  // A prototype property is not a claim.
  assert.deepEqual(resolveRole(r, {}).allow.logins, ["ci"]);
  assert.deepEqual(resolveRole(r, JSON.parse('{"__proto__": {"environment": "x"}}')).allow.logins, ["ci"]);
});

test("resolved principals subtract deny rules, so a claim cannot name a denied login", () => {
  const r = parseRoleYaml(DEPLOY_ENV);
  const [resolved] = resolveRoles([r], { environment: "prod", actor: "Root" });
  assert.deepEqual(principalsFor([resolved!]), ["ci", "deploy-prod"]);
});

test("mezctl create refuses templates it cannot read, deny templates and templates in keys", () => {
  const allow = (logins: string, labels = "{env: staging}") => `kind: role\nmetadata: {name: t}\nspec: {allow: {logins: ${logins}, node_labels: ${labels}}}`;
  const cases: [string, RegExp][] = [
    [allow(`["{{claim.x}}"]`), /not a valid template: write \{\{claims\.NAME\}\}/],
    [allow(`["{{claims.}}"]`), /not a valid template/],
    [allow(`["deploy-{{claims.env"]`), /not a valid template/],
    [allow(`["deploy-claims.env}}"]`), /not a valid template/],
    [allow(`["{{{claims.env}}}"]`), /not a valid template/],
    [allow(`["{{claims.a-b}}"]`), /not a valid template/],
    [allow(`["{{internal.logins}}"]`), /not a valid template/],
    [allow(`["bad login {{claims.x}}"]`), /cannot make a valid login/],
    [allow("[deploy]", `{env: "{{claims.environment}}*"}`), /cannot make a valid label value/],
    [allow("[deploy]", `{env: "{{claims.environment"}`), /not a valid template/],
    [allow("[deploy]", `{"{{claims.key}}": x}`), /templates go in label values, not keys/],
    [`kind: role\nmetadata: {name: t}\nspec: {allow: {logins: [deploy]}, deny: {logins: ["{{claims.actor}}"]}}`, /deny rules take no templates/],
    [`kind: role\nmetadata: {name: t}\nspec: {allow: {logins: [deploy]}, deny: {node_labels: {env: "{{claims.environment}}"}}}`, /deny rules take no templates/],
  ];
  for (const [text, re] of cases) {
    assert.throws(() => parseRoleYaml(text), (e) => isMeziteError(e, "ERR_BAD_ROLE") && re.test(e.message), text);
  }
});

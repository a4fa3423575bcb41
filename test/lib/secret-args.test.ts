/** Secrets given as arguments leave what `ps` shows: pure logic of src/lib/secret-args.ts. */
import assert from "node:assert/strict";
import { test } from "node:test";
import { createRequire } from "node:module";
import { hideSecretArgs, splitBackendPassword } from "../../src/lib/secret-args.js";

const require = createRequire(import.meta.url);

test("a postgres URL's password splits off, from the user info or the query, URL-decoded", () => {
  assert.deepEqual(splitBackendPassword("postgres://mezite:s%40cret@db:5432/mezite"), { url: "postgres://mezite@db:5432/mezite", password: "s@cret" });
  assert.deepEqual(splitBackendPassword("postgresql://db/mezite?user=mezite&password=pw&sslmode=require"), { url: "postgresql://db/mezite?user=mezite&sslmode=require", password: "pw" });
  assert.deepEqual(splitBackendPassword("postgres://db/mezite?password=pw"), { url: "postgres://db/mezite", password: "pw" });
  assert.equal(splitBackendPassword("postgres://mezite@db/mezite"), undefined);
  assert.equal(splitBackendPassword("sqlite"), undefined);
});

test("a --backend password moves to PGPASSWORD, leaves argv and the title, and is warned about without the secret", () => {
  for (const given of [["--backend=postgres://mezite:hunter2@db/mezite"], ["--backend", "postgres://mezite:hunter2@db/mezite"]]) {
    const argv = ["node", "mezd", "auth", "start", "--debug", ...given, "--workers=2"];
    const env: NodeJS.ProcessEnv = {};
    let title = "";
    const warnings = hideSecretArgs(argv, env, (t) => (title = t));
    assert.equal(env["PGPASSWORD"], "hunter2");
    assert.ok(!argv.join(" ").includes("hunter2"), argv.join(" "));
    assert.ok(argv.join(" ").includes("postgres://mezite@db/mezite"), "the URL stays, without its password");
    assert.ok(!title.includes("hunter2") && title.startsWith("mezd auth start --debug --backend") && title.endsWith("--workers=2"), title);
    assert.equal(warnings.length, 1);
    assert.match(warnings[0]!, /password in --backend .*--config file, \$PGPASSWORD or ~\/\.pgpass/);
    assert.ok(!warnings[0]!.includes("hunter2"));
    // node-postgres takes the password from the variable when the URL has none.
    const ConnectionParameters = require("pg/lib/connection-parameters.js") as new (c: string) => { password: string };
    const saved = process.env["PGPASSWORD"];
    process.env["PGPASSWORD"] = env["PGPASSWORD"];
    try {
      assert.equal(new ConnectionParameters(argv.find((a) => a.startsWith("postgres") || a.startsWith("--backend="))!.replace(/^--backend=/, "")).password, "hunter2");
    } finally {
      if (saved === undefined) delete process.env["PGPASSWORD"];
      else process.env["PGPASSWORD"] = saved;
    }
  }
});

test("--token values show as *** in the title, given as --token=V or --token V; other arguments are untouched", () => {
  for (const given of [["--token=abc123secret"], ["--token", "abc123secret"]]) {
    const argv = ["node", "mezd", "node", "join", "--debug", ...given, "--hostname=web"];
    let title: string | undefined;
    assert.deepEqual(hideSecretArgs(argv, {}, (t) => (title = t)), []);
    assert.ok(title !== undefined && !title.includes("abc123secret") && title.includes("***") && title.endsWith("--hostname=web"), title);
  }
  let title: string | undefined;
  hideSecretArgs(["node", "mezd", "auth", "start", "--backend=sqlite", "--debug"], {}, (t) => (title = t));
  assert.equal(title, undefined, "nothing to hide: the title stays");
});

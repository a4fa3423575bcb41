/** What an operator's typos and --help get from the real binaries (issue 24: the first hour). */
import assert from "node:assert/strict";
import { rmSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { MEZCTL, MEZD, ROOT, mezctl, run, startAuth, tokenFrom } from "../harness/auth.js";

const MSH = join(ROOT, "bin/msh");

test("a mistyped --opt=value gets the same 'did you mean' as --opt value, in mezctl, mezd and msh", async () => {
  const cases: [string, string[], string][] = [
    [MEZCTL, ["audit", "ls", "--limt=5"], "--limit"],
    [MEZCTL, ["tokens", "add", "--tpye=node"], "--type"],
    [MEZD, ["identity", "start", "--destinaton-dir=/tmp/x"], "--destination-dir"],
    [MSH, ["status", "--identty-dir=/tmp/x"], "--identity-dir"],
  ];
  for (const [bin, args, flag] of cases) {
    for (const form of [args, [...args.slice(0, -1), ...args.at(-1)!.split("=")]]) {
      const r = await run(bin, form);
      assert.equal(r.code, 2, `${form.join(" ")}: ${r.stderr}`);
      assert.match(r.stderr, new RegExp(`^error: unknown option '[^']+' \\(did you mean ${flag}\\?\\)\n$`), `${form.join(" ")}: ${r.stderr}`);
    }
  }
});

test("a missing required flag is one line naming it; subcommand --help lists the global options", async () => {
  const missing = await run(MEZCTL, ["agent-identities", "add", "--name=x"]);
  assert.equal(missing.code, 2);
  assert.equal(missing.stderr, "mezctl: --roles is required: its roles, comma-separated\n");
  const help = await run(MEZCTL, ["agent-identities", "ls", "--help"]);
  assert.equal(help.code, 0);
  for (const g of ["--format", "--identity", "--auth-server"]) assert.match(help.stdout, new RegExp(`Global Options:[\\s\\S]*${g}`), g);
});

test("tokens add makes a node token without --type", async () => {
  const auth = await startAuth();
  try {
    const r = await mezctl(auth, "tokens", "add", "--labels=env=dev");
    assert.equal(r.code, 0, r.stderr);
    assert.match(tokenFrom(r.stdout), /^[0-9a-f]{64}$/);
    const wrong = await mezctl(auth, "tokens", "add", "--type=agent");
    assert.equal(wrong.code, 2);
    assert.match(wrong.stderr, /--type must be node/);
  } finally {
    await auth.stop();
    rmSync(auth.dataDir, { recursive: true, force: true });
  }
});

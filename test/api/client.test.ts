import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

/** Runs a child script of this file against a fresh self-signed P-256 certificate (KEY, CERT). */
function runChild(script: string) {
  const dir = mkdtempSync(join(tmpdir(), "mezite-race-"));
  try {
    const key = join(dir, "key.pem");
    const cert = join(dir, "cert.pem");
    const gen = spawnSync("openssl", ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", cert, "-subj", "/CN=127.0.0.1", "-days", "1"], { encoding: "utf8" });
    assert.equal(gen.status, 0, gen.stderr);
    const child = spawnSync(process.execPath, ["--import", "tsx", join(import.meta.dirname, script)], {
      encoding: "utf8",
      env: { ...process.env, KEY: readFileSync(key, "utf8"), CERT: readFileSync(cert, "utf8") },
      timeout: 20_000,
      killSignal: "SIGKILL",
    });
    assert.equal(child.signal, null, `the call hung past its deadline and the process was killed: ${child.stdout}${child.stderr}`);
    assert.equal(child.status, 0, child.stderr);
    return child.stdout.trim().split(" ");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

// A CI flake: `mezd node join` hung silently for 60 s despite its 15 s deadline. connect-node
// spins in microtasks, starving every timer, when a session is already gone as its 'connect'
// event is handled; connect() must turn that into a failed call, within the call's deadline.
test("a session that dies as it connects fails the call instead of hanging the process", () => {
  const [outcome, ms] = runChild("session-race.ts");
  assert.equal(outcome, "Unavailable");
  assert.ok(Number(ms) < 3_000, `failed after ${ms} ms`);
});

// A CI flake: a test process ended with connect-node's "received GOAWAY without any open streams"
// as an uncaught error when the auth service it had called stopped. The same would end a daemon.
test("a GOAWAY on an idle connection, with the next call made as it arrives, does not end the process", () => {
  const [ok, outcome] = runChild("goaway-race.ts");
  assert.equal(ok, "ok");
  assert.equal(outcome, "Unimplemented", "the next call reached the server on a new connection");
});

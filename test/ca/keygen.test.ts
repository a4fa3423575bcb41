/**
 * Key generation never hangs the process (issue: `mezd node join` stuck for good about 1 run in
 * 25). Node 20's generateKeyPairSync gives keys that share a mutex with their generation job;
 * exporting one while a garbage collection destroys such a job deadlocks the main thread. The
 * loop below makes and exports keys as a join does, with garbage to collect; with
 * generateKeyPairSync it hung within a few thousand P-256 keys in most runs here.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { test } from "node:test";
import { ROOT } from "../harness/auth.js";

const KEYS = 20_000;

test(`${KEYS} P-256 and Ed25519 keys made and exported in a child process, which never hangs`, () => {
  const script = `
    import { generateP256, publicKeyToDer } from "./src/ca/x509.ts";
    import { generateEd25519, ed25519RawPublic } from "./src/ca/sshkey.ts";
    let junk = [];
    for (let i = 0; i < ${KEYS}; i++) {
      const p = generateP256();
      if (publicKeyToDer(p.privateKey).length !== 91 || !publicKeyToDer(p.publicKey).equals(publicKeyToDer(p.privateKey))) throw new Error("P-256 pair");
      if (ed25519RawPublic(generateEd25519()).length !== 32) throw new Error("Ed25519");
      junk.push(new Array(64).fill(i));
      if (junk.length > 500) junk = [];
    }
    console.log("made", ${KEYS});
  `;
  // 2 minutes: about 5 s on an idle machine; a deadlock never ends, so any margin tells them apart.
  const r = spawnSync(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script], { cwd: ROOT, encoding: "utf8", timeout: 120_000, killSignal: "SIGKILL" });
  assert.equal(r.signal, null, `the key loop hung (killed after 2 minutes): ${r.stdout}`);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, new RegExp(`made ${KEYS}`));
});

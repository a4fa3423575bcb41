/**
 * Which program the release's one executable runs (src/cli/standalone.ts): the name it was
 * started under (argv[0]), else its own path's name (a hard link's, as /proc/self/exe keeps it).
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { programName } from "../../src/cli/standalone.js";

test("the executable runs the program named by argv[0], as typed or as a path", () => {
  assert.equal(programName("msh", "/usr/local/bin/mezd"), "msh");
  assert.equal(programName("/usr/local/bin/mezctl", "/usr/local/bin/mezctl"), "mezctl");
  assert.equal(programName("./mezd", "/opt/x/mezd"), "mezd");
});

test("an argv[0] that names none (a wrapper's, a renamed copy's) falls back to the executable's own name", () => {
  assert.equal(programName("sshd: principals", "/usr/local/bin/mezd"), "mezd");
  assert.equal(programName("mezite", "/opt/mezite/msh"), "msh");
});

test("neither naming one of the three gives none: the executable says so instead of guessing", () => {
  assert.equal(programName("mezite", "/opt/mezite/mezite"), undefined);
  assert.equal(programName("mezd-0.1.0", "/tmp/mezd-0.1.0"), undefined);
  assert.equal(programName("msh.exe", "/tmp/MSH"), undefined);
});

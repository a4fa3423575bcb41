/**
 * Text output: the progress line of long listings (on a terminal after a second, never in a
 * pipe), and what nodes and clients sent shown escaped, never as terminal control.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { ListAccessibleNodesResponseSchema } from "../../src/api/gen/mezite/v1/agent_pb.js";
import { progressLine, table } from "../../src/cli/output.js";
import { escapeText } from "../../src/lib/escape.js";
import { lsText } from "../../src/msh/ls.js";

function fakeStream(isTTY: boolean) {
  const written: string[] = [];
  return { written, stream: { isTTY, write: (s: string) => written.push(s) > 0 } as unknown as NodeJS.WriteStream };
}

test("a terminal sees the count redrawn in place, then the line cleared", () => {
  const { written, stream } = fakeStream(true);
  const progress = progressLine("agent identities", stream, 0);
  progress(500);
  progress(12_000);
  progress.done();
  assert.deepEqual(written, ["\rFetching agent identities: 500…", "\rFetching agent identities: 12,000…", "\r\x1b[K"]);
});

test("a pipe, or a listing done within the first second, gets nothing", () => {
  const pipe = fakeStream(false);
  const p = progressLine("agent identities", pipe.stream, 0);
  p(500);
  p.done();
  assert.deepEqual(pipe.written, []);
  const quick = fakeStream(true);
  const q = progressLine("agent identities", quick.stream, 60_000);
  q(500);
  q.done();
  assert.deepEqual(quick.written, []);
});

test("escapeText: control characters, invisible format characters and backslashes become visible escapes", () => {
  assert.equal(escapeText("web-01 10.0.0.9:22 env=prod ünïcödé ✓"), "web-01 10.0.0.9:22 env=prod ünïcödé ✓", "ordinary text is unchanged");
  assert.equal(escapeText("a\x1b[2Jb\nc\rd\te\x00f\x7fg\x9bh"), "a\\x1b[2Jb\\x0ac\\x0dd\\x09e\\x00f\\x7fg\\x9bh");
  assert.equal(escapeText("x\u202ey\u2028z\u200bw\ufeff"), "x\\u{202e}y\\u{2028}z\\u{200b}w\\u{feff}");
  assert.equal(escapeText("C:\\x1b"), "C:\\\\x1b", "text that spells an escape cannot pass for one");
});

test("tables escape every cell: a forged row or a terminal escape in a value stays in its cell", () => {
  const out = table(["NAME", "ADDRESS"], [["web-01", "10.0.0.9:22\x1b[2J\nprod-db  10.6.6.6:22"], ["web-02", "10.0.0.10:22"]]);
  assert.deepEqual(out.split("\n").map((l) => l.split(/\s+/)[0]), ["NAME", "------", "web-01", "web-02", ""]);
  assert.doesNotMatch(out, /\x1b/);
  assert.match(out, /10\.0\.0\.9:22\\x1b\[2J\\x0aprod-db/);
});

test("msh ls text escapes labels and addresses a node sent", () => {
  const r = create(ListAccessibleNodesResponseSchema, {
    identity: "ci",
    nodes: [{ name: "web-01", logins: ["deploy"], labels: { env: "prod\x1b]0;x\x07" }, address: "10.0.0.9:22\r\nfake  deploy", lastHeartbeat: 0n }],
  });
  const out = lsText(r, 0);
  assert.equal(out.trimEnd().split("\n").length, 3, out);
  assert.doesNotMatch(out, /[\x00-\x09\x0b-\x1f]/);
  assert.match(out, /env=prod\\x1b\]0;x\\x07 +10\.0\.0\.9:22\\x0d\\x0afake  deploy/);
});

/**
 * Text output: listings streamed page by page (text, JSON and YAML), and what nodes and clients
 * sent shown escaped, never as terminal control.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { ListAccessibleNodesResponseSchema } from "../../src/api/gen/mezite/v1/agent_pb.js";
import { stringify as toYaml } from "yaml";
import { ListingWriter, table, type Format } from "../../src/cli/output.js";
import { escapeText } from "../../src/lib/escape.js";
import { lsText } from "../../src/msh/ls.js";

/** A ListingWriter fed `pages`, and everything it wrote, write by write. */
function listing(format: Format, pages: { name: string; n: number }[][]) {
  const writes: string[] = [];
  const w = new ListingWriter(format, ["NAME", "N"], (x: { name: string; n: number }) => [x.name, String(x.n)], (x) => ({ name: x.name, n: x.n, nested: { list: [x.n] } }), (s) => writes.push(s));
  for (const p of pages) w.page(p);
  w.end();
  return { writes, out: writes.join("") };
}

const ROWS = [[{ name: "a", n: 1 }, { name: "bb", n: 2 }], [], [{ name: "ccc-longer-than-the-first-page", n: 3 }]];
const DOCS = ROWS.flat().map((x) => ({ name: x.name, n: x.n, nested: { list: [x.n] } }));

test("a streamed listing prints each page as it arrives, and the same bytes as the whole document would", () => {
  const json = listing("json", ROWS);
  assert.equal(json.out, JSON.stringify(DOCS, null, 2) + "\n");
  assert.ok(json.writes[0]!.startsWith("[\n") && json.writes[0]!.includes('"bb"') && !json.writes[0]!.includes("ccc"), "the first page is written on its own");
  assert.deepEqual(JSON.parse(json.out), DOCS);
  assert.equal(listing("json", []).out, "[]\n");
  assert.equal(listing("json", [[{ name: "a", n: 1 }]]).out, JSON.stringify([DOCS[0]], null, 2) + "\n");
  assert.equal(listing("yaml", ROWS).out, toYaml(DOCS));
  assert.equal(listing("yaml", []).out, toYaml([]));
});

test("a streamed table: the first page sets the columns, a wider cell later widens them from its row on", () => {
  const { writes, out } = listing("text", [...ROWS, [{ name: "d", n: 4 }]]);
  assert.equal(writes[0], "NAME  N\n----  -\na     1\nbb    2\n");
  assert.equal(out.split("\n").slice(4).join("\n"), "ccc-longer-than-the-first-page  3\nd                               4\n");
  assert.equal(listing("text", []).out, "NAME  N\n", "no rows: the header alone, as before");
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

/** The progress line of long listings: on a terminal after a second, never in a pipe. */
import assert from "node:assert/strict";
import { test } from "node:test";
import { progressLine } from "../../src/cli/output.js";

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

import { test } from "node:test";
import assert from "node:assert/strict";
import { formatDuration, parseDuration } from "../../src/lib/duration.js";
import { isMeziteError } from "../../src/lib/errors.js";

test("Go durations parse and format", () => {
  const cases: [string, number][] = [["90s", 90_000], ["20m", 1_200_000], ["1h", 3_600_000], ["1h30m", 5_400_000], ["1.5h", 5_400_000], ["250ms", 250], ["0", 0]];
  for (const [text, ms] of cases) assert.equal(parseDuration(text), ms, text);
  assert.equal(formatDuration(5_400_000), "1h30m");
  assert.equal(formatDuration(90_000), "1m30s");
  for (const bad of ["", "1", "h", "1d", "1h 30m", "-1h", "1h30", "abc"]) {
    assert.throws(() => parseDuration(bad), (e) => isMeziteError(e, "ERR_BAD_DURATION"), bad);
  }
});

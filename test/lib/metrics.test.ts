/** The Prometheus text the diagnostics endpoints serve, checked line by line. */
import assert from "node:assert/strict";
import { test } from "node:test";
import { Registry } from "../../src/lib/metrics.js";

test("a histogram renders cumulative buckets, +Inf, sum and count per label set", () => {
  const r = new Registry();
  const h = r.histogram("x_seconds", "how long", [0.01, 0.1, 1]);
  for (const v of [0.005, 0.01, 0.05, 0.5, 3]) h.observe(v, { method: "Renew" });
  h.observe(0.2, { method: "Join" });
  assert.equal(
    r.render(),
    [
      "# HELP x_seconds how long",
      "# TYPE x_seconds histogram",
      'x_seconds_bucket{method="Renew",le="0.01"} 2',
      'x_seconds_bucket{method="Renew",le="0.1"} 3',
      'x_seconds_bucket{method="Renew",le="1"} 4',
      'x_seconds_bucket{method="Renew",le="+Inf"} 5',
      'x_seconds_sum{method="Renew"} 3.565',
      'x_seconds_count{method="Renew"} 5',
      'x_seconds_bucket{method="Join",le="0.01"} 0',
      'x_seconds_bucket{method="Join",le="0.1"} 0',
      'x_seconds_bucket{method="Join",le="1"} 1',
      'x_seconds_bucket{method="Join",le="+Inf"} 1',
      'x_seconds_sum{method="Join"} 0.2',
      'x_seconds_count{method="Join"} 1',
      "",
    ].join("\n"),
  );
});

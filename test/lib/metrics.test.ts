/** The Prometheus text the diagnostics endpoints serve, checked line by line. */
import assert from "node:assert/strict";
import { test } from "node:test";
import { Registry, renderMetrics } from "../../src/lib/metrics.js";

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

test("registries' states render summed, series by series: what a cluster's primary serves", () => {
  const worker = () => {
    const r = new Registry();
    return { r, calls: r.counter("calls_total", "calls"), time: r.histogram("t_seconds", "time", [0.1, 1]) };
  };
  const [a, b] = [worker(), worker()];
  // A state every worker reads alike (the highest counts), and each worker's own share (they add).
  for (const [w, phase, conns] of [[a, 1, 4], [b, 0, 6]] as const) {
    w.r.gauge("phase", "phase", () => phase);
    w.r.gauge("conns", "conns", () => conns, { perWorker: true });
  }
  a.calls.inc({ method: "Renew" }, 2);
  b.calls.inc({ method: "Renew" }, 3);
  b.calls.inc({ method: "Join" });
  a.time.observe(0.05);
  b.time.observe(0.5);
  b.time.observe(5);
  assert.equal(
    renderMetrics([a.r.state(), b.r.state()]),
    [
      "# HELP calls_total calls",
      "# TYPE calls_total counter",
      'calls_total{method="Renew"} 5',
      'calls_total{method="Join"} 1',
      "# HELP t_seconds time",
      "# TYPE t_seconds histogram",
      't_seconds_bucket{le="0.1"} 1',
      't_seconds_bucket{le="1"} 2',
      't_seconds_bucket{le="+Inf"} 3',
      "t_seconds_sum 5.55",
      "t_seconds_count 3",
      "# HELP phase phase",
      "# TYPE phase gauge",
      "phase 1",
      "# HELP conns conns",
      "# TYPE conns gauge",
      "conns 10",
      "",
    ].join("\n"),
  );
  assert.deepEqual(a.r.state()[0]!.series, [{ labels: { method: "Renew" }, values: [2] }], "rendering merged copies, it does not add into a worker's state");
});

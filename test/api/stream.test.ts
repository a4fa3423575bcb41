import { test } from "node:test";
import assert from "node:assert/strict";
import { SHORTEST_NAT_IDLE_MS, WATCH_KEEPALIVE } from "../../src/api/stream.js";

// Every PING of a held change stream wakes the auth service; with ~11,000 agents, PINGs once a
// minute cost the service more than the agents' renewals' 10 % (npm run bench, fleet). They are
// there for NAT and L4 load balancer state, so as rare as that allows, and no rarer.
test("change streams PING as rarely as NAT idle timeouts allow, with a minute to spare", () => {
  const { pingIntervalMs, pingTimeoutMs } = WATCH_KEEPALIVE;
  assert.ok(pingIntervalMs <= SHORTEST_NAT_IDLE_MS - 60_000, `a PING every ${pingIntervalMs} ms lets a ${SHORTEST_NAT_IDLE_MS} ms NAT idle timeout drop the stream`);
  assert.ok(pingIntervalMs >= 180_000, `a PING every ${pingIntervalMs} ms wakes the service more often than NAT timeouts need`);
  assert.ok(pingTimeoutMs >= 10_000 && pingTimeoutMs < pingIntervalMs, "a loaded service gets time to answer; one PING at a time");
});

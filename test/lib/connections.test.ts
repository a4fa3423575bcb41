/** What a connection's source counts as for --max-connections-per-source (src/lib/connections.ts). */
import assert from "node:assert/strict";
import { test } from "node:test";
import { sourceOf } from "../../src/lib/connections.js";

test("IPv4 counts by address, IPv4-mapped IPv6 as its IPv4 address, IPv6 by its /64", () => {
  assert.equal(sourceOf("203.0.113.7"), "203.0.113.7");
  assert.equal(sourceOf("::ffff:203.0.113.7"), "203.0.113.7");
  assert.equal(sourceOf("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::/64");
  assert.equal(sourceOf("2001:0db8:0001:0002:ffff:ffff:ffff:ffff"), "2001:db8:1:2::/64", "a host's many addresses are one source");
  assert.notEqual(sourceOf("2001:db8:1:3::1"), sourceOf("2001:db8:1:2::1"));
  assert.equal(sourceOf("::1"), "0:0:0:0::/64");
  assert.equal(sourceOf("fe80::1%eth0"), "fe80:0:0:0::/64");
  assert.equal(sourceOf(undefined), "");
});

/** IPv6 addresses read into their groups (src/lib/address.ts), as sourceOf and source_address read them. */
import assert from "node:assert/strict";
import { test } from "node:test";
import { ipv6Groups } from "../../src/lib/address.js";

test("ipv6Groups: every written form of an address gives its eight groups", () => {
  const full = [0x2001, 0xdb8, 1, 2, 0, 0, 0, 1];
  assert.deepEqual(ipv6Groups("2001:db8:1:2::1"), full);
  assert.deepEqual(ipv6Groups("2001:0db8:0001:0002:0000:0000:0000:0001"), full);
  assert.deepEqual(ipv6Groups("2001:DB8:1:2:0:0:0:1"), full);
  assert.deepEqual(ipv6Groups("::"), [0, 0, 0, 0, 0, 0, 0, 0]);
  assert.deepEqual(ipv6Groups("::1"), [0, 0, 0, 0, 0, 0, 0, 1]);
  assert.deepEqual(ipv6Groups("fe80::"), [0xfe80, 0, 0, 0, 0, 0, 0, 0]);
  assert.deepEqual(ipv6Groups("fe80::1%eth0"), [0xfe80, 0, 0, 0, 0, 0, 0, 1], "a zone is no part of the address");
  assert.deepEqual(ipv6Groups("::ffff:10.0.1.2"), [0, 0, 0, 0, 0, 0xffff, 0x0a00, 0x0102], "an IPv4 tail is two groups");
  assert.deepEqual(ipv6Groups("64:ff9b::198.51.100.7"), [0x64, 0xff9b, 0, 0, 0, 0, 0xc633, 0x6407]);
  assert.deepEqual(ipv6Groups("1:2:3:4:5:6:255.255.255.255"), [1, 2, 3, 4, 5, 6, 0xffff, 0xffff]);
});

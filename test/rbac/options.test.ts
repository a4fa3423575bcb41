/** Role options that become certificate critical options and extensions (SPEC §19): parsing and combining. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { RoleSchema } from "../../src/api/gen/mezite/v1/common_pb.js";
import { roleFromProto, roleToProto } from "../../src/api/roles.js";
import { isMeziteError } from "../../src/lib/errors.js";
import { certificateOptions, parseCidr, type RoleOptions } from "../../src/rbac/options.js";
import { parseRoleYaml, roleFromDocument, roleToDocument } from "../../src/rbac/role.js";

const withOptions = (options: string) => `kind: role\nmetadata: {name: o}\nspec:\n  options: ${options}\n  allow: {logins: [deploy], node_labels: {'*': '*'}}\n`;
const r = (role: string, options: RoleOptions) => ({ role, options });

test("options parse, print and travel over the API unchanged", () => {
  const role = parseRoleYaml(withOptions(`{max_session_ttl: 30m, force_command: "uptime -p", source_address: [10.0.0.0/8, "192.168.1.7", "2001:db8::/32"], permit_port_forwarding: true, permit_pty: false}`));
  assert.deepEqual(role.options, { forceCommand: "uptime -p", sourceAddress: ["10.0.0.0/8", "192.168.1.7", "2001:db8::/32"], permitPortForwarding: true, permitPty: false });
  assert.deepEqual(roleFromDocument(roleToDocument(role)), role);
  const wire = fromBinary(RoleSchema, toBinary(RoleSchema, roleToProto(role)));
  assert.deepEqual(roleFromProto(wire), role);
  // Unset stays unset on the wire (a role that does not say is no vote).
  const plain = roleFromProto(fromBinary(RoleSchema, toBinary(RoleSchema, roleToProto(parseRoleYaml(withOptions("{}"))))));
  assert.deepEqual(plain.options, {});
  assert.deepEqual(roleFromProto(create(RoleSchema, { name: "p", allow: { logins: ["deploy"] }, permitAgentForwarding: false })).options, { permitAgentForwarding: false });
});

test("bad options are refused at create, naming the option", () => {
  const cases: [string, RegExp][] = [
    [`{force_command: ""}`, /force_command must be a non-empty command/],
    [`{force_command: 5}`, /force_command must be a non-empty command/],
    [`{force_command: "a\\nb"}`, /force_command must be one line/],
    [`{source_address: [10.0.0.1/8]}`, /"10\.0\.0\.1\/8" has host bits set/],
    [`{source_address: [10.0.0.0/33]}`, /no valid prefix length \(0 to 32\)/],
    [`{source_address: [example.com]}`, /not an address or CIDR block/],
    [`{source_address: ["10.0.0.0/8/8"]}`, /not an address or CIDR block/],
    [`{source_address: ["fe80::1%eth0"]}`, /not an address or CIDR block/],
    [`{source_address: ["2001:db8::1/32"]}`, /host bits set/],
    [`{source_address: []}`, /source_address must be a CIDR block or a list/],
    [`{permit_pty: "yes"}`, /permit_pty must be true or false/],
    [`{permit_user_rc: true}`, /unknown field "spec\.options\.permit_user_rc"/],
  ];
  for (const [options, re] of cases) {
    assert.throws(() => parseRoleYaml(withOptions(options)), (e) => isMeziteError(e, "ERR_BAD_ROLE") && re.test(e.message), options);
  }
  assert.equal(parseCidr("::ffff:10.0.0.0/104").prefix, 104);
  assert.equal(parseCidr("0.0.0.0/0").prefix, 0);
});

test("defaults for agent identities: pty only; no critical options", () => {
  assert.deepEqual(certificateOptions([r("a", {})]), { criticalOptions: {}, extensions: { "permit-pty": "" } });
  assert.deepEqual(certificateOptions([{ role: "stored-before-options" }]), { criticalOptions: {}, extensions: { "permit-pty": "" } });
});

test("the most restrictive wins; a role that does not set an option does not vote", () => {
  const forwarding = r("tunnel", { permitPortForwarding: true, permitAgentForwarding: true, permitX11Forwarding: true });
  assert.deepEqual(Object.keys(certificateOptions([forwarding, r("base", {})]).extensions).sort(), ["permit-X11-forwarding", "permit-agent-forwarding", "permit-port-forwarding", "permit-pty"]);
  const noPty = r("batch", { permitPty: false, permitPortForwarding: false });
  assert.deepEqual(Object.keys(certificateOptions([forwarding, noPty]).extensions).sort(), ["permit-X11-forwarding", "permit-agent-forwarding"]);

  const cmd = r("report", { forceCommand: "/usr/local/bin/report" });
  assert.deepEqual(certificateOptions([cmd, r("base", {}), r("same", { forceCommand: "/usr/local/bin/report" })]).criticalOptions, { "force-command": "/usr/local/bin/report" });
  assert.throws(
    () => certificateOptions([cmd, r("other", { forceCommand: "id" })]),
    (e) => isMeziteError(e, "ERR_ROLE_CONFLICT") && /roles \[report, other\] force different commands: no certificate is issued/.test(e.message),
  );
});

test("source addresses: the intersection over the roles that set them; none in common refuses the issue", () => {
  const opts = (...lists: string[][]) => certificateOptions(lists.map((l, i) => r(`r${i}`, { sourceAddress: l }))).criticalOptions["source-address"];
  assert.equal(opts(["10.0.0.0/8", "192.168.0.0/16"]), "10.0.0.0/8,192.168.0.0/16");
  assert.equal(opts(["10.0.0.0/8"], ["10.1.0.0/16", "172.16.0.0/12"]), "10.1.0.0/16");
  assert.equal(opts(["10.1.0.0/16", "10.2.3.4"], ["10.0.0.0/8"]), "10.1.0.0/16,10.2.3.4");
  assert.equal(opts(["10.0.0.0/8", "2001:db8::/32"], ["2001:db8:1::/48", "10.0.0.0/8"]), "10.0.0.0/8,2001:db8:1::/48");
  assert.equal(opts(["0.0.0.0/0"], ["127.0.0.1"]), "127.0.0.1");
  assert.equal(opts(["10.0.0.0/8"], ["10.0.0.0/8", "10.5.0.0/16"]), "10.0.0.0/8", "a block inside another adds nothing");
  assert.throws(
    () => opts(["10.0.0.0/8"], ["192.168.0.0/16"]),
    (e) => isMeziteError(e, "ERR_ROLE_CONFLICT") && /roles \[r0, r1\] have no source address in common/.test(e.message),
  );
  assert.throws(() => opts(["10.0.0.0/8"], ["2001:db8::/32"]), (e) => isMeziteError(e, "ERR_ROLE_CONFLICT"));
});

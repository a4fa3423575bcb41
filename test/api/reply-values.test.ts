/**
 * The second line of defence behind the join MAC (SPEC §4): a value a client writes from a reply
 * must be one well-formed item, or the whole reply is refused before anything is written.
 */
import assert from "node:assert/strict";
import { generateKeyPairSync } from "node:crypto";
import { describe, test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { checkIssuedValues, checkNodeValues } from "../../src/api/reply-values.js";
import { IssuedCertificatesSchema, type IssuedCertificates } from "../../src/api/gen/mezite/v1/common_pb.js";
import { NodeCredentialsSchema, type NodeCredentials } from "../../src/api/gen/mezite/v1/join_pb.js";
import { formatAuthorizedKey } from "../../src/ca/sshkey.js";
import { createCaCertificate, generateP256 } from "../../src/ca/x509.js";
import { isMeziteError } from "../../src/lib/errors.js";

const sshKey = () => formatAuthorizedKey(generateKeyPairSync("ed25519").publicKey);
const caPem = () => createCaCertificate({ commonName: "ca", keys: generateP256(), notBefore: new Date(0), notAfter: new Date(Date.now() + 3_600_000) });
const refused = (f: () => void, what: string) => assert.throws(f, (e: unknown) => isMeziteError(e, "ERR_MALFORMED_CERT"), what);

describe("values a client writes from a reply", async () => {
  const pem = await caPem();
  const issued = (): IssuedCertificates =>
    create(IssuedCertificatesSchema, {
      userCaSshKeys: [sshKey()],
      hostCaSshKeys: [sshKey()],
      userCaX509Pems: [pem],
      tlsCaPem: pem + pem,
      principals: ["deploy", "svc_ci$"],
      identityName: "github-deploy",
      identityId: "0b1c6a6e-1d8e-4c51-9a4e-3f0e2f7d9a10",
      instanceId: "5151626f-4048-4a01-8f51-17fd3d661a22",
      revokedHostKeys: [sshKey()],
      caState: "0123456789abcdef0123456789abcdef",
    });
  const node = (): NodeCredentials =>
    create(NodeCredentialsSchema, { userCaSshKeys: [sshKey()], hostCaSshKeys: [sshKey()], tlsCaPem: pem, nodeName: "web-01.example.com", labels: { env: "prod", "team/x": "a:b" }, caState: "" });

  test("a well-formed reply passes", () => {
    checkIssuedValues(issued());
    checkNodeValues(node());
  });

  test("an agent reply with one odd value is refused", () => {
    const cases: [string, (c: IssuedCertificates) => void][] = [
      ["a second line in a revoked host key", (c) => void (c.revokedHostKeys = [`${sshKey()}\n@cert-authority * ${sshKey()}`])],
      ["a carriage return in a Host CA key", (c) => void (c.hostCaSshKeys = [`${sshKey()}\r`])],
      ["an escape in a key's comment", (c) => void (c.userCaSshKeys = [`${sshKey()} \u001b[2Jcomment`])],
      ["a revoked host key that is no key", (c) => void (c.revokedHostKeys = ["@cert-authority *"])],
      ["no Host CA key", (c) => void (c.hostCaSshKeys = [])],
      ["text after a CA certificate", (c) => void (c.userCaX509Pems = [`${pem}junk\n`])],
      ["two certificates in one CA entry", (c) => void (c.userCaX509Pems = [pem + pem])],
      ["text in the TLS CA bundle", (c) => void (c.tlsCaPem = `${pem}# trust me\n${pem}`)],
      ["a principal with a comma", (c) => void (c.principals = ["deploy,root"])],
      ["a principal with a newline", (c) => void (c.principals = ["deploy\nroot"])],
      ["a principal with a C1 control", (c) => void (c.principals = ["deploy\u009b"])],
      ["an identity name with a slash", (c) => void (c.identityName = "../x")],
      ["an instance id that is no UUID", (c) => void (c.instanceId = "x")],
      ["a CA state with a newline", (c) => void (c.caState = "ab\ncd")],
    ];
    for (const [what, alter] of cases) {
      const c = issued();
      alter(c);
      refused(() => checkIssuedValues(c), what);
    }
  });

  test("a node reply with one odd value is refused", () => {
    const cases: [string, (c: NodeCredentials) => void][] = [
      ["a label value with a comma", (c) => void (c.labels = { env: "prod,tier=db" })],
      ["a label key with an equals sign", (c) => void (c.labels = { "env=prod": "x" })],
      ["an empty label value", (c) => void (c.labels = { env: "" })],
      ["a node name with a space", (c) => void (c.nodeName = "web 01")],
      ["a node name with an escape", (c) => void (c.nodeName = "web\u001b01")],
      ["a second line in a User CA key", (c) => void (c.userCaSshKeys = [`${sshKey()}\n${sshKey()}`])],
    ];
    for (const [what, alter] of cases) {
      const c = node();
      alter(c);
      refused(() => checkNodeValues(c), what);
    }
  });
});

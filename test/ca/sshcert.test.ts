import assert from "node:assert/strict";
import { generateKeyPairSync, sign } from "node:crypto";
import type { KeyObject } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { formatSshCertificate, parseSshCertificate, signSshCertificate, verifySshCertificate } from "../../src/ca/sshcert.js";
import type { SshCertFields, SshCertificate } from "../../src/ca/sshcert.js";
import { ed25519RawPublic, encodeOpenSSHPrivateKey, formatAuthorizedKey, parseAuthorizedKey, sshFingerprint, sshPublicKeyBlob } from "../../src/ca/sshkey.js";
import { SshWriter } from "../../src/ca/sshwire.js";
import { isMeziteError } from "../../src/lib/errors.js";
import type { ErrorCode } from "../../src/lib/errors.js";
import { sshKeygen as keygen } from "../harness/require.js";

const ca = generateKeyPairSync("ed25519");
const otherCa = generateKeyPairSync("ed25519");
const subject = generateKeyPairSync("ed25519");
const T0 = 1_700_000_000;

let dir: string;
before(() => (dir = mkdtempSync(join(tmpdir(), "mezite-sshcert-"))));
after(() => rmSync(dir, { recursive: true, force: true }));

const hex = (k: KeyObject) => ed25519RawPublic(k).toString("hex");

function fields(over: Partial<SshCertFields> = {}): SshCertFields {
  return {
    type: "user",
    publicKey: subject.publicKey,
    serial: 42n,
    keyId: "agent-identity/github-deploy",
    principals: ["deploy"],
    validAfter: T0,
    validBefore: T0 + 3600,
    extensions: { "permit-pty": "" },
    ...over,
  };
}

function throwsCode(fn: () => unknown, code: ErrorCode, why?: string): void {
  assert.throws(fn, (e: unknown) => isMeziteError(e, code), why);
}

/** What `ssh-keygen -L` (OpenSSH 9.x) must print for these fields, built independently of our parser. */
function expectedListing(path: string, f: SshCertFields, caKey: KeyObject): string {
  const iso = (t: number) => new Date(t * 1000).toISOString().slice(0, 19);
  const validity =
    f.validAfter === 0 && f.validBefore === Infinity ? "forever"
    : f.validAfter === 0 ? `before ${iso(f.validBefore)}`
    : f.validBefore === Infinity ? `after ${iso(f.validAfter)}`
    : `from ${iso(f.validAfter)} to ${iso(f.validBefore)}`;
  const indent = "                ";
  const list = (items: string[]) => (items.length === 0 ? "(none)" : `\n${items.map((i) => indent + i).join("\n")}`);
  const sorted = (o: Record<string, string> = {}) => Object.entries(o).sort(([a], [b]) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
  const stringHex = (v: string) => new SshWriter().string(v).toBuffer().toString("hex");
  const unknown = (name: string, v: string) => (v === "" ? `${name} UNKNOWN FLAG OPTION` : `${name} UNKNOWN OPTION: ${stringHex(v)} (len ${Buffer.byteLength(v) + 4})`);
  const critical = sorted(f.criticalOptions).map(([n, v]) => (["force-command", "source-address"].includes(n) ? `${n} ${v}` : unknown(n, v)));
  const extensions = sorted(f.extensions).map(([n, v]) => (/^permit-(X11-forwarding|agent-forwarding|port-forwarding|pty|user-rc)$/.test(n) && v === "" ? n : unknown(n, v)));
  return [
    `${path}:`,
    `        Type: ssh-ed25519-cert-v01@openssh.com ${f.type} certificate`,
    `        Public key: ED25519-CERT ${sshFingerprint(f.publicKey)}`,
    `        Signing CA: ED25519 ${sshFingerprint(caKey)} (using ssh-ed25519)`,
    `        Key ID: "${f.keyId}"`,
    `        Serial: ${f.serial}`,
    `        Valid: ${validity}`,
    `        Principals: ${list(f.principals)}`,
    `        Critical Options: ${list(critical)}`,
    `        Extensions: ${list(extensions)}`,
    "",
  ].join("\n");
}

describe("signing, checked by ssh-keygen -L", () => {
  const kinds: [string, SshCertFields][] = [
    ["user cert", fields()],
    ["host cert", fields({ type: "host", serial: 7n, keyId: "node/web-01", principals: ["web-01", "web-01.example.com", "127.0.0.1"], extensions: {} })],
    ["critical options, given unsorted", fields({ criticalOptions: { "source-address": "127.0.0.1/32,10.0.0.0/8", "force-command": "/usr/bin/true --flag" } })],
    [
      "custom extensions, given unsorted",
      fields({
        serial: (1n << 64n) - 1n,
        principals: ["deploy", "ops", "x y"],
        extensions: { "permit-pty": "", "mezite-roles@mezite": "ci-deployer,monitor", "mezite-identity@mezite": "0b5f3e", "permit-port-forwarding": "", "zz-flag@mezite": "" },
      }),
    ],
    ["unknown critical option with data", fields({ criticalOptions: { "verify-later@mezite": "v" }, extensions: {} })],
    ["valid forever", fields({ serial: 0n, validAfter: 0, validBefore: Infinity })],
    ["valid before only", fields({ validAfter: 0 })],
    ["valid after only", fields({ validBefore: Infinity })],
  ];
  for (const [name, f] of kinds) {
    test(name, (t) => {
      const path = join(dir, `${name.replace(/\W+/g, "-")}-cert.pub`);
      writeFileSync(path, `${formatSshCertificate(signSshCertificate(f, ca.privateKey), "comment")}\n`);
      const r = keygen(t, ["-L", "-f", path]);
      if (r === undefined) return;
      assert.equal(r.code, 0, r.out);
      assert.equal(r.out, expectedListing(path, f, ca.publicKey));
    });
  }

  test("our parser reads back exactly what was signed, options in sorted order", () => {
    for (const [, f] of kinds) {
      const blob = signSshCertificate(f, ca.privateKey);
      const c = parseSshCertificate(formatSshCertificate(blob, "c"));
      assert.equal(c.type, f.type);
      assert.equal(hex(c.publicKey), hex(f.publicKey));
      assert.equal(hex(c.signatureKey), hex(ca.publicKey));
      assert.deepEqual([c.serial, c.keyId, c.principals, c.validAfter, c.validBefore], [f.serial, f.keyId, f.principals, f.validAfter, f.validBefore]);
      const sortedKeys = (o: Record<string, string> = {}) => Object.keys(o).sort();
      assert.deepEqual(Object.keys(c.criticalOptions), sortedKeys(f.criticalOptions));
      assert.deepEqual(Object.keys(c.extensions), sortedKeys(f.extensions));
      assert.deepEqual({ ...c.criticalOptions }, { ...f.criticalOptions });
      assert.deepEqual({ ...c.extensions }, { ...f.extensions });
      assert.equal(c.nonce.length, 32);
      assert.deepEqual(c.blob, blob);
      verifySshCertificate(c, ca.publicKey, f.validAfter + 1);
    }
  });

  test("nonces are random, so equal fields make different certs", () => {
    assert.notDeepEqual(signSshCertificate(fields(), ca.privateKey), signSshCertificate(fields(), ca.privateKey));
  });

  test("accepts a cert line, bare base64 and the raw blob (also a Uint8Array view)", () => {
    const blob = signSshCertificate(fields(), ca.privateKey);
    const padded = new Uint8Array(Buffer.concat([Buffer.from("junk"), blob])).subarray(4);
    for (const input of [formatSshCertificate(blob), formatSshCertificate(blob, "a comment"), blob.toString("base64"), blob, padded]) {
      assert.deepEqual(parseSshCertificate(input).blob, blob);
    }
  });

  test("an option named __proto__ stays an ordinary entry", () => {
    const ext = JSON.parse('{"__proto__": "x", "permit-pty": ""}') as Record<string, string>;
    const c = parseSshCertificate(signSshCertificate(fields({ extensions: ext }), ca.privateKey));
    assert.deepEqual(Object.keys(c.extensions), ["__proto__", "permit-pty"]);
    assert.equal(Object.getPrototypeOf(c.extensions), Object.prototype);
  });

  test("refuses fields OpenSSH could not use", () => {
    const bad: [string, Partial<SshCertFields>][] = [
      ["no principals (would mean any)", { principals: [] }],
      ["empty principal", { principals: [""] }],
      ["NUL in principal", { principals: ["a\0b"] }],
      ["NUL in key id", { keyId: "a\0" }],
      ["negative serial", { serial: -1n }],
      ["serial over 64 bits", { serial: 1n << 64n }],
      ["fractional time", { validAfter: 1.5 }],
      ["negative time", { validAfter: -1 }],
      ["empty window", { validBefore: T0 }],
      ["empty option name", { extensions: { "": "" } }],
      ["unknown type", { type: "toString" as "user" }],
    ];
    for (const [why, over] of bad) throwsCode(() => signSshCertificate(fields(over), ca.privateKey), "ERR_USAGE", why);
    throwsCode(() => signSshCertificate(fields(), ca.publicKey), "ERR_USAGE", "public key as CA");
    throwsCode(() => signSshCertificate(fields(), generateKeyPairSync("ec", { namedCurve: "P-256" }).privateKey), "ERR_USAGE", "ECDSA CA");
  });
});

describe("certificates made by ssh-keygen", () => {
  test("parse and verify against the CA key file we wrote", (t) => {
    const caPath = join(dir, "kg-ca");
    const userPath = join(dir, "kg-user");
    writeFileSync(caPath, encodeOpenSSHPrivateKey(ca.privateKey, "ca"), { mode: 0o600 });
    if (keygen(t, ["-q", "-t", "ed25519", "-N", "", "-f", userPath]) === undefined) return;
    const r = keygen(t, [
      "-q", "-s", caPath, "-I", "made by ssh-keygen", "-n", "alice,bob", "-z", "77",
      "-V", "20231114221320:20231114231320", "-O", "force-command=ls -l", "-O", "extension:mezite-roles@mezite=ci", `${userPath}.pub`,
    ]);
    assert.equal(r?.code, 0, r?.out);
    const c = parseSshCertificate(readFileSync(`${userPath}-cert.pub`, "utf8"));
    assert.equal(c.type, "user");
    assert.equal(c.serial, 77n);
    assert.equal(c.keyId, "made by ssh-keygen");
    assert.deepEqual(c.principals, ["alice", "bob"]);
    assert.deepEqual([c.validAfter, c.validBefore], [T0, T0 + 3600]);
    assert.deepEqual({ ...c.criticalOptions }, { "force-command": "ls -l" });
    assert.equal(c.extensions["mezite-roles@mezite"], "ci");
    assert.equal(c.extensions["permit-pty"], "");
    assert.equal(hex(c.publicKey), hex(parseAuthorizedKey(readFileSync(`${userPath}.pub`, "utf8"))));
    verifySshCertificate(c, ca.publicKey, T0);
    throwsCode(() => verifySshCertificate(c, otherCa.publicKey, T0), "ERR_WRONG_CA");
  });
});

describe("verification", () => {
  const blob = signSshCertificate(fields(), ca.privateKey);
  const cert = parseSshCertificate(blob);
  const signedLength = blob.length - (4 + 4 + "ssh-ed25519".length + 4 + 64);

  test("valid cert, inside its window, verifies", () => {
    verifySshCertificate(cert, ca.publicKey, T0);
    verifySshCertificate(cert, ca.publicKey, T0 + 3599);
  });

  test("validity window: valid after <= now < valid before", () => {
    throwsCode(() => verifySshCertificate(cert, ca.publicKey, T0 - 1), "ERR_CERT_NOT_YET_VALID");
    throwsCode(() => verifySshCertificate(cert, ca.publicKey, T0 + 3600), "ERR_CERT_EXPIRED");
    throwsCode(() => verifySshCertificate(cert, ca.publicKey, T0 + 86400 * 365), "ERR_CERT_EXPIRED");
    throwsCode(() => verifySshCertificate(cert, ca.publicKey, Number.NaN), "ERR_USAGE");
    const forever = parseSshCertificate(signSshCertificate(fields({ validAfter: 0, validBefore: Infinity }), ca.privateKey));
    verifySshCertificate(forever, ca.publicKey, 4_000_000_000);
  });

  test("a cert from another CA is ERR_WRONG_CA, even when expired", () => {
    const other = parseSshCertificate(signSshCertificate(fields(), otherCa.privateKey));
    throwsCode(() => verifySshCertificate(other, ca.publicKey, T0), "ERR_WRONG_CA");
    throwsCode(() => verifySshCertificate(other, ca.publicKey, T0 + 99999), "ERR_WRONG_CA");
    verifySshCertificate(other, otherCa.publicKey, T0);
  });

  test("one flipped signature byte is ERR_BAD_SIGNATURE", () => {
    for (let i = signedLength + 23; i < blob.length; i++) {
      const m = Buffer.from(blob);
      m[i] = (m[i] as number) ^ 0x01;
      throwsCode(() => verifySshCertificate(parseSshCertificate(m), ca.publicKey, T0), "ERR_BAD_SIGNATURE", `signature byte ${i}`);
    }
  });

  test("one flipped body byte never verifies", () => {
    const nonceByte = 4 + 32 + 4 + 5;
    for (let i = 0; i < signedLength; i++) {
      const m = Buffer.from(blob);
      m[i] = (m[i] as number) ^ 0x01;
      let parsed: SshCertificate;
      try {
        parsed = parseSshCertificate(m);
      } catch (e) {
        assert.ok(isMeziteError(e, "ERR_MALFORMED_CERT"), `byte ${i}: ${String(e)}`);
        continue;
      }
      assert.throws(
        () => verifySshCertificate(parsed, ca.publicKey, T0),
        (e: unknown) => isMeziteError(e, "ERR_BAD_SIGNATURE") || isMeziteError(e, "ERR_WRONG_CA"),
        `byte ${i}`,
      );
      if (i === nonceByte) throwsCode(() => verifySshCertificate(parsed, ca.publicKey, T0), "ERR_BAD_SIGNATURE", "nonce byte");
    }
  });

  test("fields edited after parsing do not verify", () => {
    throwsCode(() => verifySshCertificate({ ...cert, principals: ["root"] }, ca.publicKey, T0), "ERR_BAD_SIGNATURE");
    throwsCode(() => verifySshCertificate({ ...cert, validBefore: T0 + 7200 }, ca.publicKey, T0 + 5000), "ERR_BAD_SIGNATURE");
    throwsCode(() => verifySshCertificate({ ...cert, extensions: { "permit-pty": "", "permit-agent-forwarding": "" } }, ca.publicKey, T0), "ERR_BAD_SIGNATURE");
  });
});

describe("malformed input", () => {
  interface Parts {
    certType?: string; pk?: Buffer; type?: number; keyId?: Buffer; principals?: Buffer; validBefore?: bigint;
    critical?: Buffer; extensions?: Buffer; sigKey?: Buffer; sigType?: string; sig?: Buffer; trailing?: Buffer;
  }
  /** A cert built field by field and signed by the CA, so each case has one defect only. */
  function rawCert(p: Parts = {}): Buffer {
    const body = new SshWriter()
      .string(p.certType ?? "ssh-ed25519-cert-v01@openssh.com")
      .string(Buffer.alloc(32, 7))
      .string(p.pk ?? ed25519RawPublic(subject.publicKey))
      .uint64(42n)
      .uint32(p.type ?? 1)
      .string(p.keyId ?? Buffer.from("id"))
      .string(p.principals ?? new SshWriter().string("deploy").toBuffer())
      .uint64(BigInt(T0))
      .uint64(p.validBefore ?? BigInt(T0 + 3600))
      .string(p.critical ?? Buffer.alloc(0))
      .string(p.extensions ?? new SshWriter().string("permit-pty").string("").toBuffer())
      .string("")
      .string(p.sigKey ?? sshPublicKeyBlob(ca.publicKey))
      .toBuffer();
    const sig = new SshWriter().string(p.sigType ?? "ssh-ed25519").string(p.sig ?? sign(null, body, ca.privateKey)).toBuffer();
    return Buffer.concat([body, new SshWriter().string(sig).toBuffer(), p.trailing ?? Buffer.alloc(0)]);
  }
  const opt = (...kv: [string, Buffer][]) => {
    const w = new SshWriter();
    for (const [k, v] of kv) w.string(k).string(v);
    return w.toBuffer();
  };

  test("the hand-built baseline parses and verifies, so each case below isolates one defect", () => {
    verifySshCertificate(parseSshCertificate(rawCert()), ca.publicKey, T0);
    assert.equal(parseSshCertificate(rawCert({ validBefore: (1n << 64n) - 1n })).validBefore, Infinity);
  });

  test("each defect is ERR_MALFORMED_CERT", () => {
    const good = rawCert();
    const keyLine = formatAuthorizedKey(subject.publicKey);
    const cases: [string | Uint8Array, string][] = [
      ["", "empty string"],
      [Buffer.alloc(0), "empty blob"],
      ["not base64 at all!", "garbage"],
      ["ssh-ed25519-cert-v01@openssh.com !!!!", "garbage base64 in a line"],
      [`ssh-rsa-cert-v01@openssh.com ${good.toString("base64")}`, "line with another type"],
      [keyLine, "a plain key line"],
      [keyLine.split(" ")[1] as string, "a plain key blob in base64"],
      [good.toString("base64").slice(0, -6), "truncated base64"],
      [rawCert({ certType: "ssh-rsa-cert-v01@openssh.com" }), "rsa cert type"],
      [rawCert({ pk: Buffer.alloc(31) }), "31-byte subject key"],
      [rawCert({ type: 3 }), "cert type 3"],
      [rawCert({ keyId: Buffer.from([0xff, 0xfe]) }), "key id not UTF-8"],
      [rawCert({ keyId: Buffer.from("a\0b") }), "key id with NUL"],
      [rawCert({ principals: Buffer.from("00000010", "hex") }), "principal list truncated"],
      [rawCert({ critical: opt(["force-command", Buffer.from("ls")]) }), "option data not an SSH string"],
      [rawCert({ critical: opt(["force-command", Buffer.concat([new SshWriter().string("ls").toBuffer(), Buffer.of(0)])]) }), "option data with trailing byte"],
      [rawCert({ extensions: opt(["permit-pty", Buffer.alloc(0)], ["permit-pty", Buffer.alloc(0)]) }), "duplicate extension"],
      [rawCert({ sigKey: new SshWriter().string("ssh-rsa").string(Buffer.alloc(32)).toBuffer() }), "rsa CA key"],
      [rawCert({ sigKey: Buffer.concat([sshPublicKeyBlob(ca.publicKey), Buffer.of(0)]) }), "CA key with trailing byte"],
      [rawCert({ sigType: "rsa-sha2-512" }), "signature type"],
      [rawCert({ sig: Buffer.alloc(63) }), "63-byte signature"],
      [rawCert({ trailing: Buffer.of(0) }), "trailing byte"],
      [Buffer.concat([Buffer.from("ffffffff", "hex"), good.subarray(4)]), "huge length prefix"],
      [Buffer.concat([good.subarray(0, 36), Buffer.from("fffffff0", "hex"), good.subarray(40)]), "huge nonce length"],
    ];
    for (const [input, why] of cases) throwsCode(() => parseSshCertificate(input), "ERR_MALFORMED_CERT", why);
  });

  test("every truncation is ERR_MALFORMED_CERT", () => {
    const good = rawCert();
    for (let n = 0; n < good.length; n++) throwsCode(() => parseSshCertificate(good.subarray(0, n)), "ERR_MALFORMED_CERT", `length ${n}`);
  });

  test("fuzz: seeded flips, truncations and length smashes throw only MeziteError", () => {
    const good = signSshCertificate(fields({ criticalOptions: { "force-command": "x" }, extensions: { "permit-pty": "", "mezite-roles@mezite": "r" } }), ca.privateKey);
    let seed = 20240601;
    const rand = (n: number) => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) >>> 8) % n;
    let parsedCount = 0;
    for (let i = 0; i < 3000; i++) {
      let m = Buffer.from(good);
      switch (rand(4)) {
        case 0:
          for (let k = 1 + rand(3); k > 0; k--) m[rand(m.length)] = rand(256);
          break;
        case 1:
          m = m.subarray(0, rand(m.length));
          break;
        case 2:
          m.writeUInt32BE([0xffffffff, 0x7fffffff, 0x10000, rand(400)][rand(4)] as number, rand(m.length - 4));
          break;
        default:
          m = Buffer.concat([m.subarray(0, rand(m.length)), Buffer.from([rand(256), rand(256)]), m.subarray(rand(m.length))]);
      }
      const input = rand(2) === 0 ? m : formatSshCertificate(m);
      let c: SshCertificate;
      try {
        c = parseSshCertificate(input);
      } catch (e) {
        assert.ok(isMeziteError(e, "ERR_MALFORMED_CERT"), `iteration ${i}: ${String(e)}`);
        continue;
      }
      parsedCount++;
      try {
        verifySshCertificate(c, ca.publicKey, T0);
      } catch (e) {
        assert.ok(isMeziteError(e, "ERR_BAD_SIGNATURE") || isMeziteError(e, "ERR_WRONG_CA"), `iteration ${i}: ${String(e)}`);
        continue;
      }
      assert.deepEqual(m, good, `iteration ${i}: a changed certificate verified`);
    }
    assert.ok(parsedCount > 100, `the fuzz should also reach verification (${parsedCount} parsed)`);
  });
});

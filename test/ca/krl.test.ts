import assert from "node:assert/strict";
import { generateKeyPairSync, randomBytes } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import type { TestContext } from "node:test";
import { encodeKrl, sortSerials } from "../../src/ca/krl.js";
import type { KrlSection } from "../../src/ca/krl.js";
import { formatSshCertificate, signSshCertificate } from "../../src/ca/sshcert.js";
import { sshFingerprint, sshPublicKeyBlob } from "../../src/ca/sshkey.js";
import { SshWriter } from "../../src/ca/sshwire.js";
import { isMeziteError } from "../../src/lib/errors.js";
import { sshKeygen as keygen } from "../harness/require.js";

const ca = generateKeyPairSync("ed25519");
const otherCa = generateKeyPairSync("ed25519");
const subject = generateKeyPairSync("ed25519");
const NOW = 1_700_000_000;

let dir: string;
before(() => (dir = mkdtempSync(join(tmpdir(), "mezite-krl-"))));
after(() => rmSync(dir, { recursive: true, force: true }));

let n = 0;
function writeKrl(sections: KrlSection[], comment?: string): string {
  const path = join(dir, `krl-${n++}`);
  writeFileSync(path, encodeKrl({ version: 3n, generatedAt: NOW, ...(comment !== undefined ? { comment } : {}), sections }));
  return path;
}

function writeCert(name: string, serial: bigint, keyId: string, signer = ca.privateKey): string {
  const path = join(dir, `${name}-cert.pub`);
  const blob = signSshCertificate(
    { type: "user", publicKey: subject.publicKey, serial, keyId, principals: ["deploy"], validAfter: NOW, validBefore: NOW + 3600 },
    signer,
  );
  writeFileSync(path, `${formatSshCertificate(blob)}\n`);
  return path;
}

/** `ssh-keygen -Q`: true = REVOKED (exit 1), false = ok (exit 0); anything else fails the test. */
function revoked(t: TestContext, krl: string, cert: string): boolean | undefined {
  const r = keygen(t, ["-Q", "-f", krl, cert]);
  if (r === undefined) return undefined;
  if (r.code === 1 && r.out.includes("REVOKED")) return true;
  if (r.code === 0 && r.out.trim().endsWith(": ok")) return false;
  assert.fail(`unexpected ssh-keygen -Q result ${r.code}: ${r.out}`);
}

describe("KRL checked by ssh-keygen", () => {
  test("the listing shows the header and exactly the revocations encoded", (t) => {
    const krl = writeKrl(
      [
        { caKey: ca.publicKey, serials: [7n, 1n, 2n, 3n, 42n, 3n], keyIds: ["agent-identity/b", "agent-identity/a"] },
        { caKey: null, keyIds: ["agent-identity/locked"] },
        { caKey: otherCa.publicKey, serials: [(1n << 64n) - 1n] },
      ],
      "mezite user CA",
    );
    const r = keygen(t, ["-Q", "-l", "-f", krl]);
    if (r === undefined) return;
    assert.equal(r.code, 0, r.out);
    const lines = r.out.split("\n").filter((l) => l !== "");
    assert.deepEqual(lines, [
      "# KRL version 3",
      "# Generated at 20231114T221320",
      "# Comment: mezite user CA",
      `# CA key ssh-ed25519 ${sshFingerprint(ca.publicKey)}`,
      "serial: 1-3",
      "serial: 7",
      "serial: 42",
      "id: agent-identity/a",
      "id: agent-identity/b",
      "# Wildcard CA",
      "id: agent-identity/locked",
      `# CA key ssh-ed25519 ${sshFingerprint(otherCa.publicKey)}`,
      "serial: 18446744073709551615",
    ]);
  });

  test("revokes by serial, only for its CA", (t) => {
    const krl = writeKrl([{ caKey: ca.publicKey, serials: [5n] }]);
    assert.equal(revoked(t, krl, writeCert("s5", 5n, "agent-identity/a")), true);
    assert.equal(revoked(t, krl, writeCert("s6", 6n, "agent-identity/a")), false);
    assert.equal(revoked(t, krl, writeCert("other-s5", 5n, "agent-identity/a", otherCa.privateKey)), false);
  });

  test("revokes serial ranges at their edges", (t) => {
    const krl = writeKrl([{ caKey: ca.publicKey, serials: Array.from({ length: 11 }, (_, i) => 10n + BigInt(i)) }]);
    for (const [serial, want] of [[9n, false], [10n, true], [15n, true], [20n, true], [21n, false]] as const) {
      assert.equal(revoked(t, krl, writeCert(`r${serial}`, serial, "x")), want, `serial ${serial}`);
    }
  });

  test("revokes by key id, per CA or for every CA (null caKey)", (t) => {
    const perCa = writeKrl([{ caKey: ca.publicKey, keyIds: ["agent-identity/b"] }]);
    assert.equal(revoked(t, perCa, writeCert("kb", 6n, "agent-identity/b")), true);
    assert.equal(revoked(t, perCa, writeCert("ka", 6n, "agent-identity/a")), false);
    assert.equal(revoked(t, perCa, writeCert("other-kb", 6n, "agent-identity/b", otherCa.privateKey)), false);
    const wildcard = writeKrl([{ caKey: null, keyIds: ["agent-identity/b"], serials: [99n] }]);
    assert.equal(revoked(t, wildcard, writeCert("other-kb2", 6n, "agent-identity/b", otherCa.privateKey)), true);
    assert.equal(revoked(t, wildcard, writeCert("other-s99", 99n, "agent-identity/z", otherCa.privateKey)), true);
    assert.equal(revoked(t, wildcard, writeCert("ka2", 6n, "agent-identity/a")), false);
  });

  test("a KRL with no sections is valid and revokes nothing", (t) => {
    const krl = writeKrl([{ caKey: ca.publicKey, serials: [], keyIds: [] }]);
    assert.equal(revoked(t, krl, writeCert("e", 1n, "x")), false);
  });
});

describe("encoding", () => {
  const enc = (sections: KrlSection[]) => encodeKrl({ version: 1n, generatedAt: NOW, sections });

  test("header layout", () => {
    const b = encodeKrl({ version: 0x0102n, generatedAt: NOW, comment: "c", sections: [] });
    assert.equal(b.subarray(0, 8).toString("latin1"), "SSHKRL\n\0");
    assert.equal(b.readUInt32BE(8), 1);
    assert.equal(b.readBigUInt64BE(12), 0x0102n);
    assert.equal(b.readBigUInt64BE(20), BigInt(NOW));
    assert.equal(b.readBigUInt64BE(28), 0n);
    assert.deepEqual(b.subarray(36), Buffer.from("00000000" + "00000001" + "63", "hex"));
  });

  test("serials are sorted and deduplicated; runs become ranges", () => {
    assert.deepEqual(enc([{ caKey: ca.publicKey, serials: [5n, 3n, 5n, 4n, 9n] }]), enc([{ caKey: ca.publicKey, serials: [3n, 4n, 5n, 9n] }]));
    assert.deepEqual(enc([{ caKey: null, keyIds: ["b", "a", "b"] }]), enc([{ caKey: null, keyIds: ["a", "b"] }]));
    const many = enc([{ caKey: ca.publicKey, serials: Array.from({ length: 1000 }, (_, i) => BigInt(i + 1)) }]);
    assert.ok(many.length < 150, `1000 consecutive serials take ${many.length} bytes`);
  });

  test("refuses what would make OpenSSH reject the whole KRL", () => {
    const usage = (e: unknown) => isMeziteError(e, "ERR_USAGE");
    assert.throws(() => enc([{ caKey: ca.publicKey, serials: [0n] }]), usage, "serial 0");
    assert.throws(() => enc([{ caKey: ca.publicKey, serials: [1n << 64n] }]), usage, "serial over 64 bits");
    assert.throws(() => enc([{ caKey: null, keyIds: ["a\0b"] }]), usage, "NUL in key id");
    assert.throws(() => encodeKrl({ version: -1n, generatedAt: NOW, sections: [] }), usage, "negative version");
    assert.throws(() => encodeKrl({ version: 1n, generatedAt: 1.5, sections: [] }), usage, "fractional time");
    assert.throws(() => encodeKrl({ version: 1n, generatedAt: NOW, comment: "\0", sections: [] }), usage, "NUL in comment");
  });
});

describe("large lists", () => {
  /** The encoding as it was first written: bigints sorted in an array, runs found one by one. */
  function reference(serials: bigint[]): Buffer {
    const sorted = [...new Set(serials)].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
    const runs: [bigint, bigint][] = [];
    for (const s of sorted) {
      const last = runs[runs.length - 1];
      if (last !== undefined && last[1] + 1n === s) last[1] = s;
      else runs.push([s, s]);
    }
    const w = new SshWriter().string(sshPublicKeyBlob(ca.publicKey)).string("");
    const list = new SshWriter();
    let listed = 0;
    for (const [lo, hi] of runs) {
      if (hi - lo + 1n >= 3n) w.byte(0x21).string(new SshWriter().uint64(lo).uint64(hi).toBuffer());
      else for (let s = lo; s <= hi; s++, listed++) list.uint64(s);
    }
    if (listed > 0) w.byte(0x20).string(list.toBuffer());
    const section = w.toBuffer();
    const krl = encodeKrl({ version: 1n, generatedAt: NOW, sections: [] });
    return Buffer.concat([krl, Buffer.of(1), new SshWriter().string(section).toBuffer()]);
  }

  /** Random serials, with runs (some across a 32-bit boundary), pairs and duplicates among them. */
  function mixed(n: number): bigint[] {
    const out: bigint[] = [];
    const rand = () => randomBytes(8).readBigUInt64BE() | 1n;
    while (out.length < n) {
      const kind = out.length % 7;
      if (kind === 0) out.push(rand());
      else if (kind === 1) out.push(...[0n, 1n, 2n, 3n].map((d) => 0xfffffffen + d + (BigInt(out.length) << 33n)));
      else if (kind === 2) out.push(5n + BigInt(out.length) * 10n, 6n + BigInt(out.length) * 10n);
      else if (kind === 3) out.push(out[out.length - 1]!);
      else out.push(rand());
    }
    return out;
  }

  test("the typed-array encoder writes what the first one did, runs across 32-bit boundaries and duplicates included", () => {
    for (const n of [1, 2, 3, 10, 1000, 20_000]) {
      const serials = mixed(n);
      assert.deepEqual(encodeKrl({ version: 1n, generatedAt: NOW, sections: [{ caKey: ca.publicKey, serials }] }), reference(serials), `${n} serials`);
    }
  });

  test("sortSerials sorts in steps, pausing between them, to what encodeKrl sorts itself", async () => {
    const serials = mixed(50_000);
    let pauses = 0;
    const sorted = await sortSerials(BigUint64Array.from(serials), async () => void pauses++);
    assert.ok(pauses >= 50_000 / 8192, `${pauses} pauses`);
    assert.deepEqual([...sorted.values], [...serials].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0)));
    assert.deepEqual(encodeKrl({ version: 1n, generatedAt: NOW, sections: [{ caKey: ca.publicKey, serials: sorted }] }), reference(serials));
    await assert.rejects(sortSerials(BigUint64Array.of(3n, 0n), async () => {}), (e) => isMeziteError(e, "ERR_USAGE"), "serial 0");
  });

  test("a cert whose serial is among 100,000 is revoked, one that is not is not", (t) => {
    const serials = Array.from({ length: 100_000 }, () => randomBytes(8).readBigUInt64BE() | 1n);
    const krl = writeKrl([{ caKey: ca.publicKey, serials }]);
    assert.equal(revoked(t, krl, writeCert("big-in", serials[54_321]!, "agent-identity/a")), true);
    const listed = new Set(serials);
    let absent = 2n;
    while (listed.has(absent)) absent++;
    assert.equal(revoked(t, krl, writeCert("big-out", absent, "agent-identity/a")), false);
  });
});

import assert from "node:assert/strict";
import { createPublicKey, generateKeyPairSync, sign, verify } from "node:crypto";
import type { KeyObject } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import {
  ed25519PublicFromRaw,
  ed25519RawPublic,
  encodeOpenSSHPrivateKey,
  formatAuthorizedKey,
  parseAuthorizedKey,
  parseOpenSSHPrivateKey,
  sshFingerprint,
  sshPublicKeyBlob,
} from "../../src/ca/sshkey.js";
import { SshWriter } from "../../src/ca/sshwire.js";
import { isMeziteError } from "../../src/lib/errors.js";
import { sshKeygen as keygen } from "../harness/require.js";

let dir: string;
before(() => (dir = mkdtempSync(join(tmpdir(), "mezite-sshkey-"))));
after(() => rmSync(dir, { recursive: true, force: true }));

const hexPub = (k: KeyObject) => ed25519RawPublic(k).toString("hex");

function malformedKey(fn: () => unknown, why: string): void {
  assert.throws(fn, (e: unknown) => isMeziteError(e, "ERR_MALFORMED_KEY"), why);
}

describe("public keys", () => {
  test("raw round trip and blob layout", () => {
    const { publicKey, privateKey } = generateKeyPairSync("ed25519");
    const raw = ed25519RawPublic(publicKey);
    assert.equal(raw.length, 32);
    assert.deepEqual(ed25519RawPublic(privateKey), raw); // private key gives its public half
    assert.equal(hexPub(ed25519PublicFromRaw(raw)), raw.toString("hex"));
    const blob = sshPublicKeyBlob(publicKey);
    assert.deepEqual(blob, Buffer.concat([Buffer.from("0000000b", "hex"), Buffer.from("ssh-ed25519"), Buffer.from("00000020", "hex"), raw]));
  });

  test("authorized_keys line round trip", () => {
    const { publicKey } = generateKeyPairSync("ed25519");
    const line = formatAuthorizedKey(publicKey, "ci@host");
    assert.match(line, /^ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI[A-Za-z0-9+/]+=* ci@host$/);
    assert.equal(formatAuthorizedKey(publicKey), line.split(" ").slice(0, 2).join(" "));
    assert.equal(hexPub(parseAuthorizedKey(line)), hexPub(publicKey));
    assert.equal(hexPub(parseAuthorizedKey(`  ${line} with spaces in comment \n`)), hexPub(publicKey));
    assert.throws(() => formatAuthorizedKey(publicKey, "two\nlines"), (e: unknown) => isMeziteError(e, "ERR_USAGE"));
  });

  test("rejects non-Ed25519 key objects", () => {
    const { publicKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
    malformedKey(() => ed25519RawPublic(publicKey), "ECDSA key");
    malformedKey(() => encodeOpenSSHPrivateKey(generateKeyPairSync("ed25519").publicKey), "public key as private");
    malformedKey(() => ed25519PublicFromRaw(Buffer.alloc(31)), "31 bytes");
    malformedKey(() => ed25519PublicFromRaw(Buffer.alloc(33)), "33 bytes");
  });

  test("malformed authorized_keys lines", () => {
    const good = formatAuthorizedKey(generateKeyPairSync("ed25519").publicKey);
    const b64 = good.split(" ")[1] as string;
    const blob = Buffer.from(b64, "base64");
    const cases: [string, string][] = [
      ["", "empty"],
      ["ssh-ed25519", "no key"],
      [`ssh-rsa ${b64}`, "wrong type word"],
      [`ssh-ed25519 ${b64.slice(0, -8)}`, "truncated base64"],
      ["ssh-ed25519 !!!!", "garbage base64"],
      ["ssh-ed25519 A", "one base64 char"],
      [`ssh-ed25519 ${Buffer.concat([blob, Buffer.of(0)]).toString("base64")}`, "trailing byte"],
      [`ssh-ed25519 ${blob.subarray(0, blob.length - 1).toString("base64")}`, "truncated blob"],
      [`ssh-ed25519 ${new SshWriter().string("ssh-rsa").string(Buffer.alloc(32)).toBuffer().toString("base64")}`, "blob says rsa"],
      [`ssh-ed25519 ${Buffer.from("ffffffff", "hex").toString("base64")}`, "huge length"],
      [`ssh-ed25519 ${new SshWriter().string("ssh-ed25519").string(Buffer.alloc(31)).toBuffer().toString("base64")}`, "31-byte key"],
      [`${good}\nssh-ed25519 ${b64}`, "two lines"],
      [`cert-authority ${good}`, "options prefix"],
    ];
    for (const [line, why] of cases) malformedKey(() => parseAuthorizedKey(line), why);
  });

  test("fingerprint matches ssh-keygen -l", (t) => {
    const { publicKey } = generateKeyPairSync("ed25519");
    const path = join(dir, "fp.pub");
    writeFileSync(path, `${formatAuthorizedKey(publicKey, "fp")}\n`);
    const r = keygen(t, ["-l", "-E", "sha256", "-f", path]);
    if (r === undefined) return;
    assert.equal(r.code, 0, r.out);
    assert.equal(r.out.split(" ")[1], sshFingerprint(publicKey));
  });
});

describe("openssh-key-v1 private keys", () => {
  test("round trip keeps the key and uses random check ints", () => {
    const { privateKey, publicKey } = generateKeyPairSync("ed25519");
    const pem = encodeOpenSSHPrivateKey(privateKey, "me@host");
    assert.match(pem, /^-----BEGIN OPENSSH PRIVATE KEY-----\n([A-Za-z0-9+/=]{1,70}\n)+-----END OPENSSH PRIVATE KEY-----\n$/);
    const back = parseOpenSSHPrivateKey(pem);
    assert.equal(hexPub(back), hexPub(publicKey));
    const msg = Buffer.from("hello");
    assert.ok(verify(null, msg, publicKey, sign(null, msg, back)), "parsed key signs for the original public key");
    assert.notEqual(encodeOpenSSHPrivateKey(privateKey), encodeOpenSSHPrivateKey(privateKey));
  });

  test("ssh-keygen -y reads the keys we write", (t) => {
    for (const comment of ["", "deploy@ci", "x"]) {
      const { privateKey, publicKey } = generateKeyPairSync("ed25519");
      const path = join(dir, `ours-${comment.length}`);
      writeFileSync(path, encodeOpenSSHPrivateKey(privateKey, comment), { mode: 0o600 });
      const r = keygen(t, ["-y", "-f", path]);
      if (r === undefined) return;
      assert.equal(r.code, 0, r.out);
      assert.equal(r.out.trim(), formatAuthorizedKey(publicKey, comment));
    }
  });

  test("parses keys made by ssh-keygen -t ed25519 -N ''", (t) => {
    for (const comment of ["", "made-by-ssh-keygen", "odd length comment!"]) {
      const path = join(dir, `theirs-${comment.length}`);
      const r = keygen(t, ["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", path]);
      if (r === undefined) return;
      assert.equal(r.code, 0, r.out);
      const priv = parseOpenSSHPrivateKey(readFileSync(path, "utf8"));
      assert.equal(formatAuthorizedKey(createPublicKey(priv), comment), readFileSync(`${path}.pub`, "utf8").trim());
      // and ssh-keygen reads our re-encoding of its key
      writeFileSync(`${path}.again`, encodeOpenSSHPrivateKey(priv, comment), { mode: 0o600 });
      assert.equal(keygen(t, ["-y", "-f", `${path}.again`])?.out.trim(), readFileSync(`${path}.pub`, "utf8").trim());
    }
  });

  test("refuses encrypted and non-Ed25519 ssh-keygen keys", (t) => {
    const enc = join(dir, "encrypted");
    if (keygen(t, ["-q", "-t", "ed25519", "-N", "secret-pass", "-f", enc]) === undefined) return;
    assert.throws(() => parseOpenSSHPrivateKey(readFileSync(enc, "utf8")), (e: unknown) => isMeziteError(e, "ERR_MALFORMED_KEY") && /encrypted/.test(e.message));
    const ec = join(dir, "ecdsa");
    keygen(t, ["-q", "-t", "ecdsa", "-N", "", "-f", ec]);
    malformedKey(() => parseOpenSSHPrivateKey(readFileSync(ec, "utf8")), "ecdsa private key");
    malformedKey(() => parseAuthorizedKey(readFileSync(`${ec}.pub`, "utf8")), "ecdsa public key");
  });

  describe("malformed files", () => {
    const a = generateKeyPairSync("ed25519");
    const b = generateKeyPairSync("ed25519");
    const seedOf = (k: KeyObject) => k.export({ format: "der", type: "pkcs8" }).subarray(16);
    const pubA = ed25519RawPublic(a.publicKey);

    interface Parts {
      magic?: Buffer; cipher?: string; kdf?: string; count?: number; pubBlob?: Buffer; check2?: number;
      keyType?: string; innerPub?: Buffer; secret?: Buffer; pad?: Buffer; trailing?: Buffer;
    }
    function pem(p: Parts = {}): string {
      const secretPart = new SshWriter()
        .uint32(7)
        .uint32(p.check2 ?? 7)
        .string(p.keyType ?? "ssh-ed25519")
        .string(p.innerPub ?? pubA)
        .string(p.secret ?? Buffer.concat([seedOf(a.privateKey), pubA]))
        .string("c")
        .toBuffer();
      const pad = p.pad ?? Buffer.from([1, 2, 3, 4, 5, 6, 7].slice(0, (8 - (secretPart.length % 8)) % 8));
      const body = new SshWriter()
        .raw(p.magic ?? Buffer.from("openssh-key-v1\0", "latin1"))
        .string(p.cipher ?? "none")
        .string(p.kdf ?? "none")
        .string("")
        .uint32(p.count ?? 1)
        .string(p.pubBlob ?? sshPublicKeyBlob(a.publicKey))
        .string(Buffer.concat([secretPart, pad]))
        .raw(p.trailing ?? Buffer.alloc(0))
        .toBuffer();
      return `-----BEGIN OPENSSH PRIVATE KEY-----\n${body.toString("base64")}\n-----END OPENSSH PRIVATE KEY-----\n`;
    }

    test("the hand-built baseline parses, so each case below isolates one defect", () => {
      assert.equal(hexPub(parseOpenSSHPrivateKey(pem())), hexPub(a.publicKey));
    });

    test("each defect is ERR_MALFORMED_KEY", () => {
      const cases: [string, string][] = [
        ["", "empty"],
        ["hello", "not PEM"],
        ["-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n", "no END line"],
        ["-----BEGIN OPENSSH PRIVATE KEY-----\n!!!!\n-----END OPENSSH PRIVATE KEY-----\n", "garbage base64"],
        ["-----BEGIN OPENSSH PRIVATE KEY-----\n\n-----END OPENSSH PRIVATE KEY-----\n", "empty body"],
        [pem({ magic: Buffer.from("openssh-key-v2\0", "latin1") }), "bad magic"],
        [pem({ cipher: "aes256-ctr" }), "cipher"],
        [pem({ kdf: "bcrypt" }), "kdf"],
        [pem({ count: 2 }), "two keys"],
        [pem({ count: 0 }), "zero keys"],
        [pem({ check2: 8 }), "check ints differ"],
        [pem({ keyType: "ssh-rsa" }), "inner type"],
        [pem({ pubBlob: sshPublicKeyBlob(b.publicKey) }), "header public key of another key"],
        [pem({ innerPub: ed25519RawPublic(b.publicKey) }), "inner public key of another key"],
        [pem({ secret: Buffer.concat([seedOf(b.privateKey), pubA]) }), "seed of another key"],
        [pem({ secret: Buffer.concat([seedOf(a.privateKey), pubA]).subarray(0, 63) }), "63-byte secret"],
        [pem({ pad: Buffer.from([1, 2, 4, 3, 5, 6, 7]) }), "bad padding bytes"],
        [pem({ pad: Buffer.from([1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7]) }), "padding too long"],
        [pem({ trailing: Buffer.of(0) }), "trailing byte"],
        [pem({ pubBlob: Buffer.from("ffffffff", "hex") }), "huge length in public key blob"],
      ];
      for (const [text, why] of cases) malformedKey(() => parseOpenSSHPrivateKey(text), why);
    });

    test("every truncation is ERR_MALFORMED_KEY", () => {
      const body = Buffer.from(pem().split("\n")[1] as string, "base64");
      for (let n = 0; n < body.length; n++) {
        const text = `-----BEGIN OPENSSH PRIVATE KEY-----\n${body.subarray(0, n).toString("base64")}\n-----END OPENSSH PRIVATE KEY-----\n`;
        malformedKey(() => parseOpenSSHPrivateKey(text), `truncated to ${n}`);
      }
    });

    test("fuzz: random byte flips throw only MeziteError", () => {
      const body = Buffer.from(pem().split("\n")[1] as string, "base64");
      let seed = 0x5eed;
      const rand = (n: number) => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) >>> 8) % n;
      for (let i = 0; i < 2000; i++) {
        const m = Buffer.from(body);
        for (let k = 1 + rand(3); k > 0; k--) m[rand(m.length)] = rand(256);
        const text = `-----BEGIN OPENSSH PRIVATE KEY-----\n${m.toString("base64")}\n-----END OPENSSH PRIVATE KEY-----\n`;
        try {
          parseOpenSSHPrivateKey(text);
        } catch (e) {
          assert.ok(isMeziteError(e, "ERR_MALFORMED_KEY"), `iteration ${i}: ${String(e)}`);
        }
      }
    });
  });
});

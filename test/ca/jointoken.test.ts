import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { describe, test } from "node:test";
import { isMeziteError } from "../../src/lib/errors.js";
import {
  TOKEN_LABELS,
  deriveTokenSecrets,
  generateToken,
  mac,
  parseToken,
  signProof,
  transcript,
  verifyMac,
  verifyProof,
} from "../../src/ca/jointoken.js";
import { OPENSSL_PATH, missingComponent } from "../harness/require.js";

const ONES = Buffer.alloc(32, 1);

// Computed with OpenSSL 3.0, not with this code:
//   openssl kdf -keylen 16 -kdfopt digest:SHA256 -kdfopt hexkey:0101…01 -kdfopt info:"mezite/v1 token-id" HKDF
//   (likewise keylen 32 for the MAC key and the Ed25519 seed; the public key from
//   `openssl pkey -inform DER -pubout -outform DER` over the RFC 8410 PKCS#8 of that seed)
const VECTOR = {
  tokenId: "077f132cc67c1693e45cea7fcfb798d9",
  macKey: "c681e714c179d3e2dde620ab3c205cf9f11e7662a35404cf1765f944b977b716", // test vector of the all-0x01 token, no secret
  verifyKeySpki: "302a300506032b6570032100c3987b11e05198f1375c95199e13b6fecd29951d67c72979a95bb7adc75ae884",
};

function assertTokenInvalid(f: () => unknown, secret?: string): void {
  assert.throws(f, (e: unknown) => {
    assert.ok(isMeziteError(e, "ERR_TOKEN_INVALID"), `expected ERR_TOKEN_INVALID, got ${String(e)}`);
    if (secret) assert.ok(!e.message.includes(secret.trim()), "error message echoes the input");
    return true;
  });
}

describe("join tokens", () => {
  test("generateToken gives 64 lowercase hex characters, different each time", () => {
    const a = generateToken();
    assert.match(a, /^[0-9a-f]{64}$/);
    assert.notEqual(a, generateToken());
    assert.deepEqual(parseToken(a), Buffer.from(a, "hex"));
  });

  test("parseToken trims whitespace and refuses anything but 64 hex characters", () => {
    const t = generateToken();
    assert.deepEqual(parseToken(`  ${t}\n`), Buffer.from(t, "hex"));
    assert.deepEqual(parseToken(t.toUpperCase()), Buffer.from(t, "hex"));
    for (const bad of [t.slice(1), `${t}0`, `${t.slice(0, 63)}g`, `${t.slice(0, 32)} ${t.slice(32)}`, "", `0x${t.slice(2)}`]) {
      assertTokenInvalid(() => parseToken(bad), bad);
    }
    assertTokenInvalid(() => parseToken(undefined as unknown as string));
  });

  test("deriveTokenSecrets refuses a token that is not 32 bytes", () => {
    assertTokenInvalid(() => deriveTokenSecrets(Buffer.alloc(31, 1)));
    assertTokenInvalid(() => deriveTokenSecrets(Buffer.alloc(33, 1)));
  });

  test("vector: the all-0x01 token derives the values OpenSSL computed", () => {
    const s = deriveTokenSecrets(ONES);
    assert.equal(s.tokenId, VECTOR.tokenId);
    assert.equal(s.macKey.toString("hex"), VECTOR.macKey);
    assert.equal(s.verifyKey.export({ format: "der", type: "spki" }).toString("hex"), VECTOR.verifyKeySpki);
  });

  test("vector: recomputed with the openssl binary", (t) => {
    const openssl = OPENSSL_PATH;
    if (!openssl) return missingComponent(t, "openssl", "apt-get install openssl");
    const kdf = (info: string, len: number): string => {
      const opts = ["-kdfopt", "digest:SHA256", "-kdfopt", `hexkey:${ONES.toString("hex")}`, "-kdfopt", `info:${info}`];
      const out = execFileSync(openssl, ["kdf", "-keylen", String(len), ...opts, "HKDF"], { encoding: "utf8" });
      return out.trim().replaceAll(":", "").toLowerCase();
    };
    const s = deriveTokenSecrets(ONES);
    assert.equal(kdf(TOKEN_LABELS.tokenId, 16), s.tokenId);
    assert.equal(kdf(TOKEN_LABELS.macKey, 32), s.macKey.toString("hex"));
    // The seed never leaves the key object except through PKCS#8: its last 32 bytes.
    const seed = s.signingKey.export({ format: "der", type: "pkcs8" }).subarray(-32).toString("hex");
    assert.equal(kdf(TOKEN_LABELS.signingKey, 32), seed);
  });

  test("derivation is deterministic and the labels separate the outputs", () => {
    const token = parseToken(generateToken());
    const a = deriveTokenSecrets(token);
    const b = deriveTokenSecrets(Buffer.from(token));
    assert.equal(a.tokenId, b.tokenId);
    assert.deepEqual(a.macKey, b.macKey);
    assert.deepEqual(a.verifyKey.export({ format: "jwk" }), b.verifyKey.export({ format: "jwk" }));
    const seed = a.signingKey.export({ format: "der", type: "pkcs8" }).subarray(-32);
    const outputs = [a.tokenId, a.macKey.toString("hex"), seed.toString("hex")];
    assert.equal(new Set(outputs.map((o) => o.slice(0, 32))).size, 3, "two labels produced the same bytes");
    assert.notEqual(deriveTokenSecrets(ONES).tokenId, a.tokenId);
    assert.equal(a.signingKey.asymmetricKeyType, "ed25519");
  });

  test("a proof verifies, and a flipped bit in data, signature or key fails it", () => {
    const s = deriveTokenSecrets(parseToken(generateToken()));
    const data = transcript("mezite/v1 join-request", [s.tokenId, Buffer.from("nonce"), 7n]);
    const sig = signProof(s.signingKey, data);
    assert.equal(verifyProof(s.verifyKey, data, sig), true);
    for (const bit of [0, 100, data.length * 8 - 1]) {
      const d = Buffer.from(data);
      d[bit >> 3]! ^= 1 << (bit & 7);
      assert.equal(verifyProof(s.verifyKey, d, sig), false, `data bit ${bit}`);
    }
    for (const bit of [0, 255, 511]) {
      const bad = Buffer.from(sig);
      bad[bit >> 3]! ^= 1 << (bit & 7);
      assert.equal(verifyProof(s.verifyKey, data, bad), false, `signature bit ${bit}`);
    }
    assert.equal(verifyProof(deriveTokenSecrets(ONES).verifyKey, data, sig), false);
    assert.equal(verifyProof(s.verifyKey, data, sig.subarray(1)), false);
    assert.equal(verifyProof(s.signingKey, data, sig), false, "a private key is not a verify key");
  });

  test("a MAC verifies, and a flipped bit in data, tag or key fails it", () => {
    const s = deriveTokenSecrets(parseToken(generateToken()));
    const data = transcript("mezite/v1 join-reply", ["cert", Buffer.alloc(40, 9)]);
    const tag = mac(s.macKey, data);
    assert.equal(tag.length, 32);
    assert.equal(verifyMac(s.macKey, data, tag), true);
    const d = Buffer.from(data);
    d[d.length - 1]! ^= 0x80;
    assert.equal(verifyMac(s.macKey, d, tag), false);
    for (const bit of [0, 131, 255]) {
      const t2 = Buffer.from(tag);
      t2[bit >> 3]! ^= 1 << (bit & 7);
      assert.equal(verifyMac(s.macKey, data, t2), false, `tag bit ${bit}`);
    }
    const k2 = Buffer.from(s.macKey);
    k2[5]! ^= 4;
    assert.equal(verifyMac(k2, data, tag), false);
    assert.equal(verifyMac(s.macKey, data, tag.subarray(0, 16)), false);
  });

  test("transcripts are unambiguous", () => {
    const distinct = [
      transcript("a", ["bc"]),
      transcript("a", ["b", "c"]),
      transcript("ab", ["c"]),
      transcript("a", [Buffer.from("bc")]),
      transcript("a", ["bc", ""]),
      transcript("a", []),
      transcript("a", [1]),
      transcript("a", ["1"]),
      transcript("a", [10]),
      transcript("a", [-1n]),
      transcript("a", [["bc"]]),
      transcript("a", [["b", "c"]]),
      transcript("a", [["b,c"]]),
      transcript("a", [["b"], ["c"]]),
      transcript("a", [["b", "c"], []]),
      transcript("a", [[]]),
      transcript("a", [["k", "v=1", "w", "2"]]),
      transcript("a", [["k", "v=1,w=2"]]),
    ];
    assert.equal(new Set(distinct.map((b) => b.toString("hex"))).size, distinct.length);
    // A field's content cannot forge the boundary and header of the next field.
    const forged = `b${transcript("", ["c"]).subarray(transcript("", []).length).toString("latin1")}`;
    assert.notDeepEqual(transcript("a", [forged]), transcript("a", ["b", "c"]));
    assert.notDeepEqual(transcript("a", ["b\u0000\u0000\u0000\u0001s"]), transcript("a", ["b", "s"]));
    assert.deepEqual(transcript("a", [5]), transcript("a", [5n]), "a number and a bigint of one value agree");
    assert.deepEqual(transcript("a", ["x", 1n]), transcript("a", ["x", 1n]));
    assert.throws(() => transcript("a", [[1 as unknown as string]]), (e: unknown) => isMeziteError(e, "ERR_INTERNAL"));
    assert.throws(() => transcript("a", [1.5]), (e: unknown) => isMeziteError(e, "ERR_INTERNAL"));
    assert.throws(() => transcript("a", [Number.NaN]), (e: unknown) => isMeziteError(e, "ERR_INTERNAL"));
  });
});

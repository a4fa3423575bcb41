import "reflect-metadata";
import * as pv from "@peculiar/x509";
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { generateKeyPairSync, webcrypto, type KeyObject } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test, type TestContext } from "node:test";
import * as tls from "node:tls";
import { isMeziteError, type ErrorCode } from "../../src/lib/errors.js";
import {
  OID,
  caPin,
  createCaCertificate,
  generateP256,
  issueClientCertificate,
  issueServerCertificate,
  parseCertificateDer,
  parseCertificatePem,
  pemDecode,
  pemEncode,
  pemToPrivateKey,
  privateKeyToPem,
  p256PointFromDer,
  publicKeyToDer,
  verifyCertificateSignature,
  type KeyPair,
} from "../../src/ca/x509.js";
import { OPENSSL_PATH, missingComponent } from "../harness/require.js";

pv.cryptoProvider.set(webcrypto as unknown as Parameters<typeof pv.cryptoProvider.set>[0]);

const NOW = new Date("2026-03-01T12:00:00.000Z");
const HOUR = 3_600_000;
const VALID = { notBefore: new Date(NOW.getTime() - 60_000), notAfter: new Date(NOW.getTime() + HOUR) };
const SPIFFE = "spiffe://example.test/agent-identity/github-deploy";

interface Ca {
  keys: KeyPair;
  pem: string;
}

type Validity = typeof VALID;

async function makeCa(commonName: string, organization?: string, validity: Validity = VALID): Promise<Ca> {
  const keys = generateP256();
  const o = organization === undefined ? {} : { organization };
  const notAfter = new Date(validity.notAfter.getTime() + 100 * 24 * HOUR);
  return { keys, pem: await createCaCertificate({ commonName, ...o, keys, notBefore: validity.notBefore, notAfter }) };
}

type ClientExtra = Partial<Validity> & { generation?: bigint; serial?: bigint };

function clientCert(ca: Ca, publicKey: KeyObject, extra: ClientExtra = {}): Promise<string> {
  return issueClientCertificate({
    caCertPem: ca.pem,
    caKey: ca.keys.privateKey,
    publicKey,
    ...VALID,
    ...extra,
    commonName: "github-deploy",
    spiffeId: SPIFFE,
    kind: "renewal",
    identityId: "7d0c5f0e-1b8a-4c1e-9f57-0f6f1c1d2e3f",
    instanceId: "inst-42",
  });
}

function serverCert(ca: Ca, publicKey: KeyObject, validity: Validity = VALID): Promise<string> {
  return issueServerCertificate({
    caCertPem: ca.pem,
    caKey: ca.keys.privateKey,
    publicKey,
    ...validity,
    commonName: "mezite auth",
    dnsNames: ["auth.example.test", "localhost"],
    ipAddresses: ["127.0.0.1", "::1", "::ffff:10.1.2.3"],
  });
}

function assertCode(code: ErrorCode, f: () => unknown, what: string): void {
  try {
    f();
  } catch (e) {
    assert.ok(isMeziteError(e, code), `${what}: expected MeziteError ${code}, got ${String(e)}`);
    return;
  }
  assert.fail(`${what}: expected MeziteError ${code}, nothing was thrown`);
}

describe("x509", () => {
  let dir: string;
  let ca: Ca;
  let otherCa: Ca;
  let clientKeys: KeyPair;
  let serverKeys: KeyPair;
  let clientPem: string;
  let serverPem: string;
  let foreignClientPem: string;
  const file = (name: string, content: string): string => {
    const p = join(dir, name);
    writeFileSync(p, content);
    return p;
  };

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), "mezite-x509-"));
    ca = await makeCa("Mezite User CA", "example.test, cluster");
    otherCa = await makeCa("Mezite User CA", "example.test, cluster"); // same name, other key
    clientKeys = generateP256();
    serverKeys = generateP256();
    clientPem = await clientCert(ca, clientKeys.publicKey, { generation: 3n });
    serverPem = await serverCert(ca, serverKeys.publicKey);
    foreignClientPem = await clientCert(otherCa, clientKeys.publicKey, { generation: 3n });
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  describe("checked by openssl", () => {
    /** The openssl binary, or undefined after reporting it missing. */
    const openssl = (t: TestContext): string | undefined => {
      if (!OPENSSL_PATH) missingComponent(t, "openssl", "apt-get install openssl");
      return OPENSSL_PATH;
    };
    const run = (bin: string, args: string[]): { ok: boolean; out: string } => {
      const r = spawnSync(bin, args, { encoding: "utf8" });
      return { ok: r.status === 0, out: `${r.stdout}${r.stderr}` };
    };
    // The certificates are valid around NOW; openssl judges them at NOW, not at the wall clock.
    const verifyAt = (at: Date, bin: string, caPem: string, leafPem: string, ...opts: string[]): { ok: boolean; out: string } => {
      const files = ["-CAfile", file("ca.pem", caPem), file("leaf.pem", leafPem)];
      return run(bin, ["verify", "-attime", String(Math.floor(at.getTime() / 1000)), "-x509_strict", ...opts, ...files]);
    };
    const verify = verifyAt.bind(null, NOW);

    test("openssl verify accepts client and server leafs", (t) => {
      const bin = openssl(t);
      if (!bin) return;
      for (const leaf of [clientPem, serverPem]) {
        const r = verify(bin, ca.pem, leaf);
        assert.ok(r.ok, r.out);
        assert.match(r.out, /leaf\.pem: OK/);
      }
    });

    test("openssl verify -purpose: client leafs are sslclient only, server leafs sslserver only", (t) => {
      const bin = openssl(t);
      if (!bin) return;
      assert.equal(verify(bin, ca.pem, clientPem, "-purpose", "sslclient").ok, true);
      assert.equal(verify(bin, ca.pem, clientPem, "-purpose", "sslserver").ok, false);
      assert.equal(verify(bin, ca.pem, serverPem, "-purpose", "sslserver").ok, true);
      assert.equal(verify(bin, ca.pem, serverPem, "-purpose", "sslclient").ok, false);
    });

    test("openssl verify refuses a leaf signed by another CA with the same name, and an expired leaf", (t) => {
      const bin = openssl(t);
      if (!bin) return;
      const foreign = verify(bin, ca.pem, foreignClientPem);
      assert.equal(foreign.ok, false, foreign.out);
      const later = verifyAt(new Date(NOW.getTime() + 2 * HOUR), bin, ca.pem, clientPem);
      assert.equal(later.ok, false);
      assert.match(later.out, /expired/);
    });

    test("openssl x509 -text shows the SANs, EKUs, key usages and CA constraints", (t) => {
      const bin = openssl(t);
      if (!bin) return;
      const text = (pem: string): string => run(bin, ["x509", "-noout", "-text", "-in", file("cert.pem", pem)]).out;
      const c = text(clientPem);
      assert.match(c, new RegExp(`URI:${SPIFFE}\n`));
      assert.match(c, /X509v3 Extended Key Usage: \n\s+TLS Web Client Authentication\n/);
      assert.match(c, /X509v3 Key Usage: critical\n\s+Digital Signature\n/);
      assert.match(c, /X509v3 Basic Constraints: critical\n\s+CA:FALSE/);
      assert.match(c, /Subject: CN = github-deploy\n/);
      assert.match(c, /Issuer: O = "example.test, cluster", CN = Mezite User CA\n/);
      assert.match(c, /X509v3 Authority Key Identifier/);
      assert.match(c, /1\.3\.9999\.1829\.3:/);
      const s = text(serverPem);
      const ips = "IP Address:127.0.0.1, IP Address:0:0:0:0:0:0:0:1, IP Address:0:0:0:0:0:FFFF:A01:203";
      assert.ok(s.includes(`DNS:auth.example.test, DNS:localhost, ${ips}\n`), s);
      assert.match(s, /X509v3 Extended Key Usage: \n\s+TLS Web Server Authentication\n/);
      const a = text(ca.pem);
      assert.match(a, /X509v3 Basic Constraints: critical\n\s+CA:TRUE, pathlen:0/);
      assert.match(a, /X509v3 Key Usage: critical\n\s+Certificate Sign, CRL Sign\n/);
      assert.match(a, /X509v3 Subject Key Identifier/);
    });

    test("caPin equals openssl x509 -pubkey | openssl pkey -pubin -outform DER | sha256sum", (t) => {
      const bin = openssl(t);
      if (!bin) return;
      const pipeline = '"$0" x509 -pubkey -noout -in "$1" | "$0" pkey -pubin -outform DER | sha256sum';
      const hex = execFileSync("sh", ["-c", pipeline, bin, file("ca.pem", ca.pem)], { encoding: "utf8" }).split(" ")[0];
      assert.match(hex ?? "", /^[0-9a-f]{64}$/);
      assert.equal(caPin(ca.pem), `sha256:${hex}`);
      assert.notEqual(caPin(otherCa.pem), caPin(ca.pem));
    });

    test("dates after 2049 are GeneralizedTime and read back", async (t) => {
      const far = new Date("2051-06-01T00:00:00Z");
      const pem = await issueClientCertificate({
        caCertPem: ca.pem,
        caKey: ca.keys.privateKey,
        publicKey: clientKeys.publicKey,
        notBefore: NOW,
        notAfter: far,
        commonName: "x",
        kind: "output",
      });
      assert.deepEqual(parseCertificatePem(pem).notAfter, far);
      const bin = openssl(t);
      if (!bin) return;
      assert.match(run(bin, ["x509", "-noout", "-enddate", "-in", file("cert.pem", pem)]).out, /notAfter=Jun  1 00:00:00 2051 GMT/);
    });
  });

  describe("mTLS with Node's tls (TLS 1.3)", () => {
    // OpenSSL checks validity against the wall clock here, so these certificates are issued for it.
    const live = { notBefore: new Date(Date.now() - 60_000), notAfter: new Date(Date.now() + HOUR) };
    let tlsCa: Ca;
    let tlsServerPem: string;
    let tlsClientPem: string;
    let tlsForeignPem: string;
    before(async () => {
      tlsCa = await makeCa("Mezite TLS test CA", undefined, live);
      const foreign = await makeCa("Mezite TLS test CA", undefined, live);
      tlsServerPem = await serverCert(tlsCa, serverKeys.publicKey, live);
      tlsClientPem = await clientCert(tlsCa, clientKeys.publicKey, { generation: 3n, ...live });
      tlsForeignPem = await clientCert(foreign, clientKeys.publicKey, { generation: 3n, ...live });
    });

    interface Outcome {
      received: string;
      /** What the server's connection handler saw: the peer's kind:identity:generation, or why it was not authorized. */
      serverSaw: string[];
      serverErrors: string[];
    }

    /** One connection; rejectUnauthorized false lets the server report why it would refuse. */
    async function handshake(client: { key: KeyObject; cert: string }, rejectUnauthorized = true): Promise<Outcome> {
      const outcome: Outcome = { received: "", serverSaw: [], serverErrors: [] };
      const server = tls.createServer(
        {
          key: privateKeyToPem(serverKeys.privateKey),
          cert: tlsServerPem,
          ca: [tlsCa.pem],
          requestCert: true,
          rejectUnauthorized,
          minVersion: "TLSv1.3",
        },
        (socket) => {
          if (!socket.authorized) {
            outcome.serverSaw.push(`unauthorized:${String(socket.authorizationError)}`);
            socket.destroy();
            return;
          }
          const peer = parseCertificateDer(socket.getPeerCertificate().raw);
          outcome.serverSaw.push(`${peer.kind}:${peer.identityId}:${peer.generation}`);
          socket.end("welcome");
        },
      );
      server.on("tlsClientError", (e) => outcome.serverErrors.push(e.message));
      await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
      const { port } = server.address() as AddressInfo;
      try {
        await new Promise<void>((resolve, reject) => {
          // The server is checked too: its certificate must carry the IP SAN 127.0.0.1.
          const key = privateKeyToPem(client.key);
          const socket = tls.connect({ host: "127.0.0.1", port, ca: [tlsCa.pem], key, cert: client.cert, minVersion: "TLSv1.3" });
          socket.setEncoding("utf8");
          socket.on("secureConnect", () => {
            if (socket.getProtocol() !== "TLSv1.3") reject(new Error(`negotiated ${socket.getProtocol()}`));
          });
          socket.on("data", (d: string) => (outcome.received += d));
          // In TLS 1.3 the client finishes its handshake before the server judges its certificate,
          // so a refusal reaches the client as a closed (or reset) connection, not a handshake error.
          socket.on("error", () => undefined);
          socket.on("close", () => resolve());
        });
        return outcome;
      } finally {
        await new Promise((resolve) => server.close(resolve));
      }
    }

    test("a client leaf from the CA completes the handshake; the server reads its extensions", async () => {
      const o = await handshake({ key: clientKeys.privateKey, cert: tlsClientPem });
      assert.equal(o.received, "welcome");
      assert.deepEqual(o.serverSaw, ["renewal:7d0c5f0e-1b8a-4c1e-9f57-0f6f1c1d2e3f:3"]);
      assert.deepEqual(o.serverErrors, []);
    });

    test("a client leaf from another CA is refused", async () => {
      const o = await handshake({ key: clientKeys.privateKey, cert: tlsForeignPem });
      assert.equal(o.received, "");
      assert.deepEqual(o.serverSaw, []);
      assert.equal(o.serverErrors.length, 1);
      const why = await handshake({ key: clientKeys.privateKey, cert: tlsForeignPem }, false);
      assert.deepEqual(why.serverSaw, ["unauthorized:UNABLE_TO_VERIFY_LEAF_SIGNATURE"]);
    });

    test("a server leaf cannot serve as a client certificate", async () => {
      const o = await handshake({ key: serverKeys.privateKey, cert: tlsServerPem });
      assert.equal(o.received, "");
      assert.deepEqual(o.serverSaw, []);
      const why = await handshake({ key: serverKeys.privateKey, cert: tlsServerPem }, false);
      assert.deepEqual(why.serverSaw, ["unauthorized:INVALID_PURPOSE"]);
    });
  });

  describe("round trips", () => {
    test("parseCertificatePem recovers subject, serial, dates, SPIFFE id, kind, ids and generation", async () => {
      const serial = 0x80f1e2d3c4b5a697n; // high bit set: DER adds a leading zero byte
      const generation = (1n << 70n) + 5n;
      const pem = await clientCert(ca, clientKeys.publicKey, { generation, serial });
      const p = parseCertificatePem(pem);
      assert.equal(p.subjectCommonName, "github-deploy");
      assert.equal(p.serial, "80f1e2d3c4b5a697");
      assert.deepEqual(p.notBefore, VALID.notBefore);
      assert.deepEqual(p.notAfter, VALID.notAfter);
      assert.equal(p.spiffeId, SPIFFE);
      assert.equal(p.kind, "renewal");
      assert.equal(p.identityId, "7d0c5f0e-1b8a-4c1e-9f57-0f6f1c1d2e3f");
      assert.equal(p.instanceId, "inst-42");
      assert.equal(p.generation, generation);
      assert.equal(p.issuer, "O=example.test\\, cluster, CN=Mezite User CA");
      assert.deepEqual(publicKeyToDer(p.publicKey), publicKeyToDer(clientKeys.publicKey));
      const { publicKey: _, ...fromDer } = parseCertificateDer(pemDecode(pem, "CERTIFICATE"));
      const { publicKey: __, ...fromPem } = p;
      assert.deepEqual(fromDer, fromPem);

      const small = parseCertificatePem(await clientCert(ca, clientKeys.publicKey, { serial: 1n, generation: 0n }));
      assert.equal(small.serial, "01");
      assert.equal(small.generation, 0n);

      const s = parseCertificatePem(serverPem);
      assert.equal(s.kind, "server");
      assert.equal(s.spiffeId, undefined);
      assert.equal(s.generation, undefined);
      assert.equal(s.identityId, undefined);
      const c = parseCertificatePem(ca.pem);
      assert.equal(c.kind, undefined);
      assert.equal(c.subjectCommonName, "Mezite User CA");
    });

    test("@peculiar/x509, an independent parser, reads the same certificate", async () => {
      const cert = new pv.X509Certificate(clientPem);
      assert.equal(cert.subject, "CN=github-deploy");
      assert.equal(cert.serialNumber, parseCertificatePem(clientPem).serial);
      assert.ok(await cert.verify({ publicKey: new pv.X509Certificate(ca.pem).publicKey, signatureOnly: true }));
      const san = cert.getExtension(pv.SubjectAlternativeNameExtension);
      assert.deepEqual(san?.names.toJSON(), [{ type: "url", value: SPIFFE }]);
      const kind = cert.getExtension(OID.certKind);
      assert.equal(kind?.critical, false);
      assert.equal(Buffer.from(kind?.value ?? new ArrayBuffer(0)).toString("hex"), `0c07${Buffer.from("renewal").toString("hex")}`);
      const ski = cert.getExtension(pv.SubjectKeyIdentifierExtension);
      const pvKey = await pv.PublicKey.create(publicKeyToDer(clientKeys.publicKey));
      const expected = Buffer.from(await pvKey.getKeyIdentifier()).toString("hex");
      assert.equal(ski?.keyId, expected);
      const server = new pv.X509Certificate(serverPem).getExtension(pv.SubjectAlternativeNameExtension);
      assert.deepEqual(
        server?.names.items.map((n) => `${n.type}:${n.value}`),
        ["dns:auth.example.test", "dns:localhost", "ip:127.0.0.1", "ip:::1", "ip:::ffff:a01:203"],
      );
    });

    test("verifyCertificateSignature: true for its CA, false for another CA or a changed certificate", async () => {
      assert.equal(await verifyCertificateSignature(clientPem, ca.pem), true);
      assert.equal(await verifyCertificateSignature(serverPem, ca.pem), true);
      assert.equal(await verifyCertificateSignature(ca.pem, ca.pem), true);
      assert.equal(await verifyCertificateSignature(clientPem, otherCa.pem), false);
      assert.equal(await verifyCertificateSignature(foreignClientPem, ca.pem), false);
      const der = pemDecode(clientPem, "CERTIFICATE");
      const at = der.indexOf(Buffer.from("github-deploy"));
      der[at]! ^= 0x01; // "fithub-deploy": still well-formed, no longer what the CA signed
      assert.equal(await verifyCertificateSignature(pemEncode(der, "CERTIFICATE"), ca.pem), false);
    });

    test("keys: PKCS#8 PEM and SPKI DER round trip", () => {
      const k = generateP256();
      const pem = privateKeyToPem(k.privateKey);
      assert.match(pem, /^-----BEGIN PRIVATE KEY-----\n/);
      const back = pemToPrivateKey(pem);
      assert.deepEqual(back.export({ format: "jwk" }), k.privateKey.export({ format: "jwk" }));
      const ed = generateKeyPairSync("ed25519").privateKey;
      assert.equal(pemToPrivateKey(privateKeyToPem(ed)).asymmetricKeyType, "ed25519");
      const spki = publicKeyToDer(k.publicKey);
      assert.deepEqual(spki, k.publicKey.export({ format: "der", type: "spki" }));
      assert.deepEqual(publicKeyToDer(k.privateKey), spki);
      const jwk = k.publicKey.export({ format: "jwk" });
      const point = Buffer.concat([Buffer.from([4]), Buffer.from(jwk.x!, "base64url"), Buffer.from(jwk.y!, "base64url")]);
      assert.deepEqual(p256PointFromDer(spki), point);
      assert.deepEqual(p256PointFromDer(new Uint8Array(spki)), point);
    });
  });

  describe("refusals", () => {
    test("malformed PEM, DER and garbage give MeziteError with a stable code", () => {
      const good = pemDecode(clientPem, "CERTIFICATE");
      const body = clientPem.split("\n").slice(1, -2).join("\n");
      const pemCases: [string, unknown][] = [
        ["empty", ""],
        ["garbage", "hello world"],
        ["not a string", 42],
        ["undefined", undefined],
        ["wrong label", clientPem.replaceAll("CERTIFICATE", "PUBLIC KEY")],
        ["two certificates", clientPem + ca.pem],
        ["text before", `subject=CN = x\n${clientPem}`],
        ["bad base64", clientPem.replace(body.slice(10, 14), "*!*!")],
        ["no END line", clientPem.replace(/-----END CERTIFICATE-----\n$/, "")],
        ["empty body", "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n"],
      ];
      for (const [what, input] of pemCases) {
        assertCode("ERR_MALFORMED_PEM", () => parseCertificatePem(input as string), `parseCertificatePem ${what}`);
        assertCode("ERR_MALFORMED_PEM", () => caPin(input as string), `caPin ${what}`);
      }
      const derCases: [string, Uint8Array][] = [
        ["empty", new Uint8Array(0)],
        ["random bytes", Buffer.from("this is not DER at all")],
        ["truncated", good.subarray(0, good.length - 1)],
        ["trailing byte", Buffer.concat([good, Buffer.from([0])])],
        ["a key, not a certificate", publicKeyToDer(clientKeys.publicKey)],
      ];
      for (const [what, input] of derCases) {
        assertCode("ERR_MALFORMED_CERT", () => parseCertificateDer(input), `parseCertificateDer ${what}`);
        if (input.length > 0) {
          assertCode("ERR_MALFORMED_CERT", () => parseCertificatePem(pemEncode(input, "CERTIFICATE")), `parseCertificatePem ${what}`);
        }
      }
      assertCode("ERR_MALFORMED_CERT", () => parseCertificateDer("abc" as unknown as Uint8Array), "a string as DER");
    });

    test("every truncation and every single-byte corruption of a certificate is a MeziteError or a parse", () => {
      const good = pemDecode(clientPem, "CERTIFICATE");
      for (let len = 0; len < good.length; len++) {
        assertCode("ERR_MALFORMED_CERT", () => parseCertificateDer(good.subarray(0, len)), `truncated to ${len}`);
      }
      let parsed = 0;
      for (let i = 0; i < good.length; i++) {
        for (const mask of [0x01, 0x80, 0xff]) {
          const bad = Buffer.from(good);
          bad[i]! ^= mask;
          try {
            parseCertificateDer(bad);
            parsed++;
          } catch (e) {
            assert.ok(isMeziteError(e, "ERR_MALFORMED_CERT"), `byte ${i} ^ ${mask}: ${String(e)}`);
          }
        }
      }
      assert.ok(parsed > 0, "some corruptions (e.g. in the signature) still parse");
    });

    test("a Mezite extension value that is not DER is refused", () => {
      const good = pemDecode(clientPem, "CERTIFICATE");
      const kind = Buffer.from(`0c07${Buffer.from("renewal").toString("hex")}`, "hex");
      const at = good.indexOf(kind);
      assert.ok(at > 0);
      // Same size, so every enclosing length stays right: UTF8String "output" with a long-form length.
      const splice = (replacement: Buffer): Buffer => Buffer.concat([good.subarray(0, at), replacement, good.subarray(at + kind.length)]);
      const bad = splice(Buffer.concat([Buffer.from("0c8106", "hex"), Buffer.from("output")]));
      assertCode("ERR_MALFORMED_CERT", () => parseCertificateDer(bad), "non-minimal length");
      const unknown = splice(Buffer.concat([kind.subarray(0, 2), Buffer.from("rewenal")]));
      assertCode("ERR_MALFORMED_CERT", () => parseCertificateDer(unknown), "unknown kind");
    });

    test("malformed keys give ERR_MALFORMED_PEM or ERR_MALFORMED_KEY", () => {
      const rsa = generateKeyPairSync("rsa", { modulusLength: 1024 });
      const p384 = generateKeyPairSync("ec", { namedCurve: "P-384" });
      const ed = generateKeyPairSync("ed25519");
      assertCode("ERR_MALFORMED_PEM", () => pemToPrivateKey("nope"), "garbage");
      const edPem = privateKeyToPem(ed.privateKey);
      assertCode("ERR_MALFORMED_PEM", () => pemToPrivateKey(edPem.replaceAll("PRIVATE KEY", "EC PRIVATE KEY")), "wrong label");
      assertCode("ERR_MALFORMED_PEM", () => pemToPrivateKey(clientPem), "a certificate");
      const notPkcs8 = pemEncode(Buffer.from("not a key"), "PRIVATE KEY");
      assertCode("ERR_MALFORMED_KEY", () => pemToPrivateKey(notPkcs8), "bytes that are not PKCS#8");
      assertCode("ERR_MALFORMED_KEY", () => pemToPrivateKey(privateKeyToPem(rsa.privateKey)), "RSA");
      assertCode("ERR_MALFORMED_KEY", () => privateKeyToPem(ed.publicKey), "a public key");
      const spki = publicKeyToDer(clientKeys.publicKey);
      assertCode("ERR_MALFORMED_KEY", () => p256PointFromDer(new Uint8Array(0)), "empty");
      assertCode("ERR_MALFORMED_KEY", () => p256PointFromDer(Buffer.from("garbage")), "garbage");
      assertCode("ERR_MALFORMED_KEY", () => p256PointFromDer(spki.subarray(0, 40)), "truncated");
      assertCode("ERR_MALFORMED_KEY", () => p256PointFromDer(Buffer.concat([spki, Buffer.from([0])])), "trailing byte");
      assertCode("ERR_MALFORMED_KEY", () => p256PointFromDer(ed.publicKey.export({ format: "der", type: "spki" })), "Ed25519");
      assertCode("ERR_MALFORMED_KEY", () => p256PointFromDer(p384.publicKey.export({ format: "der", type: "spki" })), "P-384");
      assertCode("ERR_MALFORMED_KEY", () => p256PointFromDer(rsa.publicKey.export({ format: "der", type: "spki" })), "RSA");
      const compressed = clientKeys.publicKey.export({ format: "der", type: "spki", ...({ compressed: true } as object) });
      if (compressed.length < spki.length) assertCode("ERR_MALFORMED_KEY", () => p256PointFromDer(compressed), "compressed point");
      const offCurve = Buffer.from(spki);
      offCurve[offCurve.length - 1]! ^= 1; // same x, a y that is not on P-256
      assertCode("ERR_MALFORMED_KEY", () => p256PointFromDer(offCurve), "a point off the curve");
      assertCode("ERR_MALFORMED_KEY", () => publicKeyToDer(ed.publicKey), "Ed25519 to DER");
    });

    test("issuing refuses wrong keys, a mismatched CA key, bad validity and empty or bad server names", async () => {
      const base = {
        caCertPem: ca.pem,
        caKey: ca.keys.privateKey,
        publicKey: clientKeys.publicKey,
        ...VALID,
        commonName: "x",
        kind: "output" as const,
      };
      const rejects = async (code: ErrorCode, p: Promise<unknown>, what: string): Promise<void> => {
        await assert.rejects(p, (e: unknown) => isMeziteError(e, code), what);
      };
      await rejects("ERR_WRONG_CA", issueClientCertificate({ ...base, caKey: otherCa.keys.privateKey }), "CA key of another CA");
      const edKey = generateKeyPairSync("ed25519").publicKey;
      await rejects("ERR_MALFORMED_KEY", issueClientCertificate({ ...base, publicKey: edKey }), "Ed25519 leaf key");
      await rejects("ERR_MALFORMED_KEY", issueClientCertificate({ ...base, publicKey: clientKeys.privateKey }), "private key as leaf key");
      await rejects("ERR_MALFORMED_KEY", issueClientCertificate({ ...base, caKey: ca.keys.publicKey }), "public key as CA key");
      await rejects("ERR_MALFORMED_PEM", issueClientCertificate({ ...base, caCertPem: "junk" }), "junk CA certificate");
      const inverted = { notBefore: VALID.notAfter, notAfter: VALID.notBefore };
      await rejects("ERR_INTERNAL", issueClientCertificate({ ...base, ...inverted }), "inverted validity");
      await rejects("ERR_INTERNAL", issueClientCertificate({ ...base, notAfter: new Date(Number.NaN) }), "invalid date");
      await rejects("ERR_INTERNAL", issueClientCertificate({ ...base, serial: 0n }), "zero serial");
      await rejects("ERR_INTERNAL", issueClientCertificate({ ...base, generation: -1n }), "negative generation");
      await rejects("ERR_CONFIG", issueClientCertificate({ ...base, spiffeId: "spiffe://é" }), "non-ASCII SPIFFE id");
      const srv = { ...base, commonName: "auth" };
      await rejects("ERR_CONFIG", issueServerCertificate({ ...srv, dnsNames: [], ipAddresses: [] }), "no names");
      await rejects("ERR_CONFIG", issueServerCertificate({ ...srv, dnsNames: [], ipAddresses: ["300.1.1.1"] }), "bad IP");
      await rejects("ERR_CONFIG", issueServerCertificate({ ...srv, dnsNames: ["a b"], ipAddresses: [] }), "space in DNS name");
      const unpaired = { publicKey: clientKeys.publicKey, privateKey: ca.keys.privateKey };
      await rejects("ERR_MALFORMED_KEY", createCaCertificate({ commonName: "x", keys: unpaired, ...VALID }), "unpaired CA keys");
    });
  });
});

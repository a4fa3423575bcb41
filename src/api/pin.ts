/**
 * --ca-pin: before the first contact with an auth service, check that its TLS certificate was
 * issued by the CA whose public key hashes to the pin (sha256 over the DER SubjectPublicKeyInfo).
 * Join is safe without it (the reply is MAC'd with the token); the pin stops a wrong server early.
 */
import { createHash, X509Certificate } from "node:crypto";
import type { DetailedPeerCertificate } from "node:tls";
import { signedBy } from "../ca/x509.js";
import { MeziteError } from "../lib/errors.js";
import { dialAuth, normalizeAddr } from "./client.js";

/**
 * --ca-pin's value: one pin, or several separated by commas. During a Host CA rotation the old and
 * the new key's pins can both be given (mezctl ca status lists them), so a CI workflow need not be
 * changed at the very step the auth service's certificate moves to the new key.
 */
export function parseCaPins(text: string): string[] {
  const pins = text.split(",").map((p) => p.trim());
  if (pins.length > 4 || pins.some((p) => !/^sha256:[0-9a-f]{64}$/.test(p))) {
    throw new MeziteError("ERR_USAGE", "--ca-pin must be sha256: followed by 64 lowercase hex characters, or up to 4 of them separated by commas");
  }
  return pins;
}

/** Returns the pinned CA's certificate (PEM), for connections that must be verified against it. */
export async function checkCaPin(addr: string, pins: string[], timeoutMs = 10_000): Promise<string> {
  const hostPort = normalizeAddr(addr);
  const chain = await new Promise<DetailedPeerCertificate>((resolve, reject) => {
    // Nothing is verified on this connection: the pin is checked below.
    const sock = dialAuth(new URL(`https://${hostPort}`));
    sock.setTimeout(timeoutMs, () => sock.destroy(new Error("timed out")));
    sock.once("secureConnect", () => {
      resolve(sock.getPeerCertificate(true));
      sock.end();
    });
    sock.once("error", (e) => reject(new MeziteError("ERR_UNREACHABLE", `cannot reach the auth service at ${hostPort}: ${e.message}`, { cause: e })));
  });
  const leaf = new X509Certificate(chain.raw);
  for (let c: DetailedPeerCertificate | undefined = chain.issuerCertificate, seen = 0; c && seen < 5; c = c.issuerCertificate === c ? undefined : c.issuerCertificate, seen++) {
    const ca = new X509Certificate(c.raw);
    const spki = ca.publicKey.export({ format: "der", type: "spki" });
    if (pins.includes(`sha256:${createHash("sha256").update(spki).digest("hex")}`) && signedBy(leaf, ca)) return ca.toString();
  }
  throw new MeziteError("ERR_WRONG_CA", `the auth service at ${hostPort} is not signed by the pinned CA (${pins.map((p) => `${p.slice(0, 20)}…`).join(", ")}): check --ca-pin and --auth-server`);
}

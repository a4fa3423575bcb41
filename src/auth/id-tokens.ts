/**
 * Verifying ID tokens (JWTs) for join methods (SPEC §14) with jose, not hand-rolled JWT code:
 * the issuer's keys from OIDC discovery and its JWKS over HTTPS (cached, refetched when a token
 * names an unknown key id, at most every COOLDOWN_MS), or a static JWKS; RS256, ES256 and EdDSA
 * only; `iss`, `aud` (the cluster name), `exp`, `nbf` and `iat` with 10 s of leeway.
 */
import { createHash } from "node:crypto";
import { request as httpsRequest } from "node:https";
import { createLocalJWKSet, createRemoteJWKSet, customFetch, errors, jwtVerify, type JWTPayload, type JWTVerifyGetKey } from "jose";
import { MeziteError } from "../lib/errors.js";

const ALGORITHMS = ["RS256", "ES256", "EdDSA"];
export const LEEWAY_S = 10;
const FETCH_TIMEOUT_MS = 5_000;
const MAX_DOCUMENT_BYTES = 256 * 1024;
/** A token naming a key id not in the cached JWKS refetches it, but not more often than this. */
const COOLDOWN_MS = 2_000;
const CACHE_MAX_AGE_MS = 10 * 60_000;

function refused(why: string): MeziteError {
  return new MeziteError("ERR_TOKEN_INVALID", `the ID token was refused: ${why}`);
}

function unreachable(issuer: string, why: string, cause?: unknown): MeziteError {
  return new MeziteError("ERR_ISSUER_UNREACHABLE", `the auth service cannot fetch the keys of ${issuer}: ${why}; retry later`, cause === undefined ? undefined : { cause });
}

/** GET over HTTPS (the system's CAs, and NODE_EXTRA_CA_CERTS), with a timeout and a size cap. */
function httpsGet(url: string, signal?: AbortSignal): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = httpsRequest(url, { method: "GET", headers: { accept: "application/json" }, timeout: FETCH_TIMEOUT_MS, ...(signal ? { signal } : {}) }, (res) => {
      const chunks: Buffer[] = [];
      let size = 0;
      res.on("data", (c: Buffer) => {
        size += c.length;
        if (size > MAX_DOCUMENT_BYTES) req.destroy(new Error(`the document is larger than ${MAX_DOCUMENT_BYTES} bytes`));
        else chunks.push(c);
      });
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString("utf8") }));
      res.on("error", reject);
    });
    req.on("timeout", () => req.destroy(new Error(`no answer within ${FETCH_TIMEOUT_MS} ms`)));
    req.on("error", reject);
    req.end();
  });
}

/** jose's fetch hook: our HTTPS client instead of the global fetch. */
const joseFetch = async (url: string, options: { signal: AbortSignal }): Promise<Response> => {
  const { status, body } = await httpsGet(url, options.signal);
  return new Response(body, { status, headers: { "content-type": "application/json" } });
};

/** Key sets by issuer (discovery is looked up once per issuer and process). */
const remoteKeys = new Map<string, Promise<JWTVerifyGetKey>>();

async function discover(issuer: string): Promise<JWTVerifyGetKey> {
  let doc: { issuer?: unknown; jwks_uri?: unknown };
  try {
    const { status, body } = await httpsGet(`${issuer}/.well-known/openid-configuration`);
    if (status !== 200) throw new Error(`discovery answered HTTP ${status}`);
    doc = JSON.parse(body) as typeof doc;
  } catch (e) {
    throw unreachable(issuer, (e as Error).message, e);
  }
  if (doc.issuer !== issuer) throw unreachable(issuer, `its discovery document names another issuer (${String(doc.issuer).slice(0, 100)})`);
  if (typeof doc.jwks_uri !== "string" || !doc.jwks_uri.startsWith("https://")) throw unreachable(issuer, "its discovery document has no https jwks_uri");
  return createRemoteJWKSet(new URL(doc.jwks_uri), { timeoutDuration: FETCH_TIMEOUT_MS, cooldownDuration: COOLDOWN_MS, cacheMaxAge: CACHE_MAX_AGE_MS, [customFetch]: joseFetch });
}

function keySource(issuer: string, staticJwks: string | undefined): Promise<JWTVerifyGetKey> {
  if (staticJwks !== undefined) return Promise.resolve(createLocalJWKSet(JSON.parse(staticJwks) as Parameters<typeof createLocalJWKSet>[0]));
  let keys = remoteKeys.get(issuer);
  if (!keys) {
    keys = discover(issuer);
    remoteKeys.set(issuer, keys);
    keys.catch(() => remoteKeys.delete(issuer)); // a failed discovery is tried again next time
  }
  return keys;
}

export interface VerifiedIdToken {
  claims: JWTPayload;
  /** Names this token for "used once": its issuer and jti, or its signed part (not the signature, which can be re-encoded). */
  useKey: string;
  /** Unix ms: the token is worth nothing after this (exp plus the leeway). */
  usableUntil: number;
}

/** Verifies signature and standard claims; throws ERR_TOKEN_INVALID saying why, or ERR_ISSUER_UNREACHABLE. */
export async function verifyIdToken(jwt: string, issuer: string, audience: string, staticJwks: string | undefined, nowMs: number): Promise<VerifiedIdToken> {
  if (jwt.length > 16 * 1024 || !/^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/.test(jwt)) throw refused("it is not a JWT (three base64url parts)");
  const keys = await keySource(issuer, staticJwks);
  let claims: JWTPayload;
  try {
    ({ payload: claims } = await jwtVerify(jwt, keys, {
      algorithms: ALGORITHMS,
      issuer,
      audience,
      clockTolerance: LEEWAY_S,
      currentDate: new Date(nowMs),
      requiredClaims: ["exp", "iat"],
    }));
  } catch (e) {
    throw explain(e, issuer, audience);
  }
  if (claims.iat! > nowMs / 1000 + LEEWAY_S) throw refused("it was issued in the future (iat); check the clocks");
  const signed = jwt.slice(0, jwt.lastIndexOf("."));
  const useKey = createHash("sha256")
    .update(`${issuer}\n${typeof claims.jti === "string" && claims.jti ? `jti:${claims.jti}` : `signed:${signed}`}`)
    .digest("hex");
  return { claims, useKey, usableUntil: (claims.exp! + LEEWAY_S) * 1000 };
}

function explain(e: unknown, issuer: string, audience: string): MeziteError {
  if (e instanceof MeziteError) return e;
  if (e instanceof errors.JWTExpired) return refused("it has expired (exp)");
  if (e instanceof errors.JWTClaimValidationFailed) {
    if (e.claim === "aud") return refused(`its audience (aud) is not this cluster's name, ${audience}`);
    if (e.claim === "iss") return refused(`its issuer (iss) is not the join token's, ${issuer}`);
    if (e.claim === "nbf") return refused("it is not valid yet (nbf)");
    if (e.claim === "iat") return refused("its issue time (iat) is not valid");
    return refused(`its ${e.claim} claim is missing or invalid`);
  }
  if (e instanceof errors.JOSEAlgNotAllowed || e instanceof errors.JOSENotSupported) return refused("it is signed with an algorithm the service does not accept (only RS256, ES256, EdDSA)");
  if (e instanceof errors.JWSSignatureVerificationFailed) return refused("its signature does not verify");
  if (e instanceof errors.JWKSNoMatchingKey || e instanceof errors.JWKSMultipleMatchingKeys) return refused("it is signed with a key the issuer does not publish");
  if (e instanceof errors.JWKSTimeout) return unreachable(issuer, "its JWKS did not arrive in time", e);
  if (e instanceof errors.JWKSInvalid) return unreachable(issuer, "its JWKS is not valid", e);
  if (e instanceof errors.JWSInvalid || e instanceof errors.JWTInvalid || e instanceof errors.JOSEError) return refused(`it is not a valid JWT (${(e as Error).message.slice(0, 100)})`);
  return unreachable(issuer, (e as Error)?.message ?? String(e), e);
}

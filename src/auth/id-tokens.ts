/**
 * Verifying ID tokens (JWTs) for join methods (SPEC §14) with jose, not hand-rolled JWT code:
 * the issuer's keys from OIDC discovery and its JWKS over HTTPS (cached, refetched when a token
 * names an unknown key id, at most every COOLDOWN_MS), or a static JWKS; RS256, ES256 and EdDSA
 * only; `iss`, `aud` (the cluster name), `exp`, `nbf` and `iat` with 10 s of leeway. Finding the
 * keys has a total deadline, and an issuer that failed is not asked again for FAILURE_MEMORY_MS.
 * A token refused before its signature verified is an UnverifiedIdToken: anyone can send those.
 */
import { createHash } from "node:crypto";
import { request as httpsRequest } from "node:https";
import { createLocalJWKSet, createRemoteJWKSet, customFetch, errors, jwtVerify, type JWTPayload, type JWTVerifyGetKey } from "jose";
import { MeziteError } from "../lib/errors.js";

const ALGORITHMS = ["RS256", "ES256", "EdDSA"];
export const LEEWAY_S = 10;
/** Longest ID token looked at: a longer one is refused before anything else (SPEC §14). */
export const MAX_ID_TOKEN_BYTES = 16 * 1024;
/** Finding a token's key (discovery, then the JWKS) takes at most this long in all; so does each fetch. */
const KEYS_DEADLINE_MS = 5_000;
/** An issuer whose discovery or JWKS fetch failed is not asked again for this long. */
const FAILURE_MEMORY_MS = 5_000;
const MAX_DOCUMENT_BYTES = 256 * 1024;
/** A token naming a key id not in the cached JWKS refetches it, but not more often than this. */
const COOLDOWN_MS = 2_000;
const CACHE_MAX_AGE_MS = 10 * 60_000;

/**
 * An ID token refused before its signature verified (not a JWT, too long, an algorithm or key
 * the issuer does not sign with, a bad signature, the issuer's keys out of reach): anyone can
 * send those as fast as they like, so a join counts them instead of auditing each (SPEC §14).
 */
export class UnverifiedIdToken extends MeziteError {}

function refused(why: string): MeziteError {
  return new MeziteError("ERR_TOKEN_INVALID", `the ID token was refused: ${why}`);
}

/** The detail is for the service's log: callers hear a generic sentence (api/errors.ts). */
function unreachable(issuer: string, why: string, cause?: unknown): MeziteError {
  return new MeziteError("ERR_ISSUER_UNREACHABLE", `the auth service cannot fetch the keys of ${issuer}: ${why}; retry later`, cause === undefined ? undefined : { cause });
}

/**
 * GET over HTTPS (the system's CAs, and NODE_EXTRA_CA_CERTS) of a document that must answer 200:
 * the whole exchange, from connecting to the last byte, within KEYS_DEADLINE_MS; a size cap.
 */
function httpsGet(url: string, signal?: AbortSignal): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = httpsRequest(url, { method: "GET", headers: { accept: "application/json" }, ...(signal ? { signal } : {}) }, (res) => {
      const chunks: Buffer[] = [];
      let size = 0;
      res.on("data", (c: Buffer) => {
        size += c.length;
        if (size > MAX_DOCUMENT_BYTES) req.destroy(new Error(`the document is larger than ${MAX_DOCUMENT_BYTES} bytes`));
        else chunks.push(c);
      });
      res.on("end", () => {
        clearTimeout(deadline);
        if (res.statusCode === 200) resolve(Buffer.concat(chunks).toString("utf8"));
        else reject(new Error(`${url} answered HTTP ${res.statusCode}`));
      });
      res.on("error", (e) => (clearTimeout(deadline), reject(e)));
    });
    // A socket timeout alone would let a server that trickles a byte now and then hold this forever.
    const deadline = setTimeout(() => req.destroy(new Error(`no complete answer within ${KEYS_DEADLINE_MS} ms`)), KEYS_DEADLINE_MS);
    req.on("error", (e) => (clearTimeout(deadline), reject(e)));
    req.end();
  });
}

/** Failures by what failed (a discovery, a JWKS URL), remembered for FAILURE_MEMORY_MS. */
const recentFailures = new Map<string, { until: number; error: unknown }>();

/** Runs `fetch` unless `what` failed a moment ago (then fails at once, as it did); remembers a failure. */
async function unlessFailedLately<T>(what: string, fetch: () => Promise<T>): Promise<T> {
  const now = performance.now();
  for (const [k, f] of recentFailures) if (f.until <= now) recentFailures.delete(k);
  const failed = recentFailures.get(what);
  if (failed) throw failed.error;
  try {
    return await fetch();
  } catch (e) {
    recentFailures.set(what, { until: performance.now() + FAILURE_MEMORY_MS, error: e });
    throw e;
  }
}

/** jose's fetch hook: our HTTPS client instead of the global fetch. */
const joseFetch = async (url: string, options: { signal: AbortSignal }): Promise<Response> => {
  const body = await unlessFailedLately(url, () => httpsGet(url, options.signal));
  return new Response(body, { status: 200, headers: { "content-type": "application/json" } });
};

/**
 * The `iss` values that name a join token's issuer. The issuer is stored without a trailing slash
 * (join-methods.ts) but some issuers write one into every token and their discovery document
 * (Auth0: `https://TENANT.auth0.com/`): both forms name the same issuer, whose keys are fetched
 * from the same place either way.
 */
const issuerForms = (issuer: string): string[] => [issuer, `${issuer}/`];

/** Key sets by issuer (discovery is looked up once per issuer and process). */
const remoteKeys = new Map<string, Promise<JWTVerifyGetKey>>();

async function discover(issuer: string): Promise<JWTVerifyGetKey> {
  let doc: { issuer?: unknown; jwks_uri?: unknown };
  try {
    doc = JSON.parse(await httpsGet(`${issuer}/.well-known/openid-configuration`)) as typeof doc;
  } catch (e) {
    throw unreachable(issuer, (e as Error).message, e);
  }
  if (typeof doc.issuer !== "string" || !issuerForms(issuer).includes(doc.issuer)) throw unreachable(issuer, `its discovery document names another issuer (${String(doc.issuer).slice(0, 100)})`);
  if (typeof doc.jwks_uri !== "string" || !doc.jwks_uri.startsWith("https://")) throw unreachable(issuer, "its discovery document has no https jwks_uri");
  return createRemoteJWKSet(new URL(doc.jwks_uri), { timeoutDuration: KEYS_DEADLINE_MS, cooldownDuration: COOLDOWN_MS, cacheMaxAge: CACHE_MAX_AGE_MS, [customFetch]: joseFetch });
}

function keySource(issuer: string, staticJwks: string | undefined): Promise<JWTVerifyGetKey> {
  if (staticJwks !== undefined) return Promise.resolve(createLocalJWKSet(JSON.parse(staticJwks) as Parameters<typeof createLocalJWKSet>[0]));
  let keys = remoteKeys.get(issuer);
  if (!keys) {
    keys = unlessFailedLately(`discovery of ${issuer}`, () => discover(issuer));
    remoteKeys.set(issuer, keys);
    keys.catch(() => remoteKeys.delete(issuer)); // a failed discovery is tried again once its failure is forgotten
  }
  return keys;
}

/**
 * The key for a token's header, within KEYS_DEADLINE_MS in all. Failing to get the keys is the
 * issuer's fault (ERR_ISSUER_UNREACHABLE); a key id or key type the issuer does not publish is
 * the token's.
 */
function keyFor(issuer: string, staticJwks: string | undefined): JWTVerifyGetKey {
  return async (header, token) => {
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`no keys within ${KEYS_DEADLINE_MS} ms`)), KEYS_DEADLINE_MS);
    });
    try {
      return await Promise.race([keySource(issuer, staticJwks).then((keys) => keys(header, token)), late]);
    } catch (e) {
      if (e instanceof MeziteError || e instanceof errors.JWKSNoMatchingKey || e instanceof errors.JWKSMultipleMatchingKeys || e instanceof errors.JOSENotSupported) throw e;
      throw unreachable(issuer, e instanceof errors.JWKSTimeout ? "its JWKS did not arrive in time" : (e as Error)?.message ?? String(e), e);
    } finally {
      clearTimeout(timer);
    }
  };
}

export interface VerifiedIdToken {
  claims: JWTPayload;
  /** Names this token for "used once": its issuer and jti, or its signed part (not the signature, which can be re-encoded). */
  useKey: string;
  /** Unix ms: the token is worth nothing after this (exp plus the leeway). */
  usableUntil: number;
}

/**
 * Verifies signature and standard claims; throws ERR_TOKEN_INVALID saying why, or
 * ERR_ISSUER_UNREACHABLE; as an UnverifiedIdToken when the signature had not verified.
 */
export async function verifyIdToken(jwt: string, issuer: string, audience: string, staticJwks: string | undefined, nowMs: number): Promise<VerifiedIdToken> {
  if (jwt.length > MAX_ID_TOKEN_BYTES) throw unverified(refused(`it is longer than ${MAX_ID_TOKEN_BYTES} bytes`));
  if (!/^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/.test(jwt)) throw unverified(refused("it is not a JWT (three base64url parts)"));
  let claims: JWTPayload;
  try {
    ({ payload: claims } = await jwtVerify(jwt, keyFor(issuer, staticJwks), {
      algorithms: ALGORITHMS,
      issuer: issuerForms(issuer),
      audience,
      clockTolerance: LEEWAY_S,
      currentDate: new Date(nowMs),
      requiredClaims: ["exp", "iat"],
    }));
  } catch (e) {
    // jose checks the claims only once the signature has verified.
    const signed = e instanceof errors.JWTExpired || e instanceof errors.JWTClaimValidationFailed;
    throw signed ? explain(e, issuer, audience) : unverified(explain(e, issuer, audience));
  }
  if (claims.iat! > nowMs / 1000 + LEEWAY_S) throw refused("it was issued in the future (iat); check the clocks");
  const signed = jwt.slice(0, jwt.lastIndexOf("."));
  const useKey = createHash("sha256")
    .update(`${issuer}\n${typeof claims.jti === "string" && claims.jti ? `jti:${claims.jti}` : `signed:${signed}`}`)
    .digest("hex");
  return { claims, useKey, usableUntil: (claims.exp! + LEEWAY_S) * 1000 };
}

function unverified(e: MeziteError): UnverifiedIdToken {
  return new UnverifiedIdToken(e.code, e.message, e.cause === undefined ? undefined : { cause: e.cause });
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
  if (e instanceof errors.JWSInvalid || e instanceof errors.JWTInvalid || e instanceof errors.JOSEError) return refused(`it is not a valid JWT (${(e as Error).message.slice(0, 100)})`);
  return unreachable(issuer, (e as Error)?.message ?? String(e), e);
}

/**
 * A local OIDC issuer for the join-method tests: keys made here with jose, served as discovery
 * and JWKS over HTTPS with a CA made here (the auth service trusts it through NODE_EXTRA_CA_CERTS,
 * in the tests only), and a stand-in for GitHub Actions' ID-token endpoint that speaks its
 * request and reply: GET ACTIONS_ID_TOKEN_REQUEST_URL&audience=AUD with "Authorization: bearer
 * ACTIONS_ID_TOKEN_REQUEST_TOKEN", answered {"count": 1, "value": JWT}. Issuers that fail live
 * under fixed prefixes: /tarpit (discovery trickles a byte every 200 ms and never ends), /failing
 * (discovery answers 500), /badjwks (discovery works, its JWKS answers 500).
 */
import { randomBytes } from "node:crypto";
import { createServer, type Server } from "node:https";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import type { AddressInfo } from "node:net";
import { exportJWK, generateKeyPair, SignJWT, type JWK, type JWTPayload, type CryptoKey } from "jose";
import { createCaCertificate, generateP256, issueServerCertificate, privateKeyToPem } from "../../src/ca/x509.js";
import { SEED_ROLE_PATH, mezctlOk, startAuth, type AuthProcess } from "./auth.js";

export interface SigningKey {
  kid: string;
  alg: "ES256" | "RS256" | "EdDSA";
  privateKey: CryptoKey;
  jwk: JWK;
}

export async function makeKey(alg: SigningKey["alg"] = "ES256"): Promise<SigningKey> {
  const { privateKey, publicKey } = await generateKeyPair(alg, { extractable: true });
  const kid = randomBytes(6).toString("hex");
  return { kid, alg, privateKey, jwk: { ...(await exportJWK(publicKey)), kid, alg, use: "sig" } };
}

export interface Issuer {
  origin: string;
  /** The CA file for NODE_EXTRA_CA_CERTS. */
  caPath: string;
  /** The keys the JWKS publishes; replace to rotate. */
  published: SigningKey[];
  /** Requests to the GitHub stand-in so far. */
  githubRequests: number;
  /** Requests so far, by path. */
  requests: Map<string, number>;
  /** The claims the GitHub stand-in puts in its next tokens (plus iss, aud, iat, exp, jti). */
  githubClaims: JWTPayload;
  githubIssuer: string;
  githubRequestToken: string;
  githubRequestUrl: string;
  sign(claims: JWTPayload, key?: SigningKey, header?: Record<string, unknown>): Promise<string>;
  close(): Promise<void>;
}

export async function startIssuer(dir: string): Promise<Issuer> {
  const now = Date.now();
  const caKeys = generateP256();
  const caPem = await createCaCertificate({ commonName: "test issuer CA", organization: "test", keys: caKeys, notBefore: new Date(now - 60_000), notAfter: new Date(now + 3_600_000) });
  const leaf = generateP256();
  const certPem = await issueServerCertificate({
    caCertPem: caPem,
    caKey: caKeys.privateKey,
    publicKey: leaf.publicKey,
    notBefore: new Date(now - 60_000),
    notAfter: new Date(now + 3_600_000),
    commonName: "127.0.0.1",
    dnsNames: ["localhost"],
    ipAddresses: ["127.0.0.1"],
  });
  const caPath = join(dir, "issuer-ca.pem");
  writeFileSync(caPath, caPem);
  const first = await makeKey();
  let server!: Server;
  const issuer: Issuer = {
    origin: "",
    caPath,
    published: [first],
    githubRequests: 0,
    requests: new Map(),
    githubClaims: {},
    githubIssuer: "",
    githubRequestToken: randomBytes(16).toString("hex"),
    githubRequestUrl: "",
    async sign(claims, key = issuer.published[0]!, header = {}) {
      const t = Math.floor(Date.now() / 1000);
      return new SignJWT({ iat: t, exp: t + 300, jti: randomBytes(8).toString("hex"), ...claims })
        .setProtectedHeader({ alg: key.alg, kid: key.kid, typ: "JWT", ...header })
        .sign(key.privateKey);
    },
    close: () => new Promise((r) => server.close(() => r())),
  };
  server = createServer({ key: privateKeyToPem(leaf.privateKey), cert: certPem }, (req, res) => {
    const url = new URL(req.url ?? "/", issuer.origin);
    const json = (status: number, body: unknown) => res.writeHead(status, { "content-type": "application/json" }).end(JSON.stringify(body));
    issuer.requests.set(url.pathname, (issuer.requests.get(url.pathname) ?? 0) + 1);
    if (url.pathname === "/tarpit/.well-known/openid-configuration") {
      res.writeHead(200, { "content-type": "application/json" });
      const drip = setInterval(() => res.write(" "), 200);
      res.on("close", () => clearInterval(drip));
      return;
    }
    if (url.pathname === "/failing/.well-known/openid-configuration" || url.pathname === "/badjwks/jwks") return json(500, { message: "down for maintenance" });
    if (url.pathname === "/badjwks/.well-known/openid-configuration") return json(200, { issuer: `${issuer.origin}/badjwks`, jwks_uri: `${issuer.origin}/badjwks/jwks` });
    if (url.pathname.endsWith("/.well-known/openid-configuration")) {
      const prefix = url.pathname.slice(0, -"/.well-known/openid-configuration".length);
      // Under /slashed the issuer ends in "/", as Auth0's (https://TENANT.auth0.com/) does.
      return json(200, { issuer: `${issuer.origin}${prefix}${prefix === "/slashed" ? "/" : ""}`, jwks_uri: `${issuer.origin}/jwks`, id_token_signing_alg_values_supported: ["ES256", "RS256", "EdDSA"] });
    }
    if (url.pathname === "/jwks") return json(200, { keys: issuer.published.map((k) => k.jwk) });
    if (url.pathname === "/github-token") {
      issuer.githubRequests++;
      if (req.headers.authorization !== `bearer ${issuer.githubRequestToken}`) return json(401, { message: "bad token" });
      const audience = url.searchParams.get("audience");
      if (!audience) return json(400, { message: "no audience" });
      void issuer.sign({ iss: issuer.githubIssuer, aud: audience, ...issuer.githubClaims }).then((value) => json(200, { count: 1, value }));
      return;
    }
    json(404, {});
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  issuer.origin = `https://127.0.0.1:${(server.address() as AddressInfo).port}`;
  issuer.githubIssuer = `${issuer.origin}/_services/token`; // GitHub Enterprise Server's issuer form
  issuer.githubRequestUrl = `${issuer.origin}/github-token?api-version=2.0`;
  return issuer;
}

/**
 * An auth service that trusts `issuer` as GitHub Enterprise Server, with the seed's role, the
 * `github-deploy` identity and a `github-deploy-main` join_token whose rules are `allow` (YAML
 * list items, indented as under `allow:`). Returns the service, the CA pin and `create -f`'s output.
 */
export async function startGithubJoinBed(issuer: Issuer, dir: string, allow: string): Promise<{ auth: AuthProcess; pin: string; created: string }> {
  const auth = await startAuth({ env: { NODE_EXTRA_CA_CERTS: issuer.caPath } });
  await mezctlOk(auth, "create", "-f", SEED_ROLE_PATH);
  await mezctlOk(auth, "agent-identities", "add", "--name=github-deploy", "--roles=ci-deployer");
  const pin = (JSON.parse(await mezctlOk(auth, "status", "--format=json")) as { ca_pin: string }).ca_pin;
  const file = join(dir, "github-deploy-main.yaml");
  writeFileSync(
    file,
    `kind: join_token
metadata:
  name: github-deploy-main
spec:
  agent_identity: github-deploy
  join_method: github
  github:
    enterprise_server_host: "${new URL(issuer.origin).host}"
    allow:
${allow}`,
  );
  return { auth, pin, created: await mezctlOk(auth, "create", "-f", file) };
}

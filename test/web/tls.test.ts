/**
 * The dashboard's HTTPS side against the real auth service, without a browser: it follows a Host
 * CA rotation with the gRPC port (the new key signs its certificate from `update_clients` on), its
 * overview shows a rotation's progress, and `mezctl dashboard` says clearly when the service
 * serves no dashboard.
 */
import assert from "node:assert/strict";
import { X509Certificate, createHash } from "node:crypto";
import { get as httpsGet } from "node:https";
import { connect as tlsConnect, type DetailedPeerCertificate } from "node:tls";
import { after, before, test } from "node:test";
import { readAdminIdentity } from "../../src/api/admin-identity.js";
import { SEED_ROLE, mezctl, mezctlOk, startAuth, type AuthProcess } from "../harness/auth.js";
import { addIdentity, createRole, join } from "../auth/client.js";
import { freePort } from "../harness/net.js";

let auth: AuthProcess;
let webPort = 0;

before(async () => {
  webPort = await freePort();
  auth = await startAuth({ extraArgs: [`--web-addr=127.0.0.1:${webPort}`] });
});
after(async () => {
  await auth?.stop();
});

/** The pin (as `ca status` prints it) of the CA that signed the dashboard's certificate, and whether it verifies against admin.identity's CAs. */
function servedIssuer(): Promise<{ pin: string; authorized: boolean }> {
  const ca = readAdminIdentity(auth.identityPath).ca_pem;
  return new Promise((resolve, reject) => {
    const s = tlsConnect({ host: "127.0.0.1", port: webPort, ca, rejectUnauthorized: false }, () => {
      const peer = s.getPeerCertificate(true) as DetailedPeerCertificate;
      const spki = new X509Certificate(peer.issuerCertificate.raw).publicKey.export({ type: "spki", format: "der" });
      resolve({ pin: `sha256:${createHash("sha256").update(spki).digest("hex")}`, authorized: s.authorized });
      s.end();
    });
    s.once("error", reject);
  });
}

type CaDoc = { type: string; keys: { role: string; x509_pin: string }[] };
async function hostPins(): Promise<{ current: string; next: string | undefined }> {
  const host = (JSON.parse(await mezctlOk(auth, "ca", "status", "--format=json")) as CaDoc[]).find((c) => c.type === "host")!;
  return { current: host.keys.find((k) => k.role === "current")!.x509_pin, next: host.keys.find((k) => k.role === "next")?.x509_pin };
}

test("the dashboard's certificate follows a Host CA rotation, as the gRPC port's does", async () => {
  const { current } = await hostPins();
  assert.deepEqual(await servedIssuer(), { pin: current, authorized: true });
  await mezctlOk(auth, "ca", "rotate", "--type=host", "--manual", "--phase=init");
  const { next } = await hostPins();
  assert.ok(next && next !== current);
  await mezctlOk(auth, "ca", "rotate", "--type=host", "--manual", "--phase=update_clients");
  // Server credentials move to the new key at update_servers, when every client trusts it (SPEC §15).
  assert.equal((await servedIssuer()).pin, current, "update_clients: still the old key");
  await mezctlOk(auth, "ca", "rotate", "--type=host", "--manual", "--phase=update_servers");
  // The service applies the phase within a second or so; wait for it, generously.
  const deadline = Date.now() + 20_000;
  let served = await servedIssuer();
  while (served.pin !== next && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 200));
    served = await servedIssuer();
  }
  assert.equal(served.pin, next, "the new Host CA key signs the dashboard's certificate");
  assert.equal(served.authorized, true, "and admin.identity's CAs verify it");
  await mezctlOk(auth, "ca", "rotate", "--type=host", "--phase=rollback");
  await mezctlOk(auth, "ca", "rotate", "--type=host", "--manual", "--phase=standby");
});

/** GET of a dashboard page with a fresh session (over TLS verified against the cluster's CA): its HTML. */
async function signedInGet(path: string): Promise<string> {
  const ca = readAdminIdentity(auth.identityPath).ca_pem;
  const get = (p: string, cookie = "") =>
    new Promise<{ status: number; body: string; cookie: string }>((resolve, reject) => {
      httpsGet({ host: "127.0.0.1", port: webPort, path: p, ca, headers: cookie ? { cookie } : {} }, (res) => {
        let body = "";
        res.on("data", (d: Buffer) => (body += d.toString()));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, body, cookie: String(res.headers["set-cookie"]?.[0] ?? "").split(";")[0]! }));
      }).on("error", reject);
    });
  const link = new URL((await mezctlOk(auth, "dashboard")).split("\n")[0]!);
  const { cookie } = await get(link.pathname);
  const page = await get(path, cookie);
  assert.equal(page.status, 200);
  return page.body;
}

test("the overview shows a User CA rotation's phase and the instances still on the old key", async () => {
  await createRole(auth, SEED_ROLE);
  await join(auth.addr, await addIdentity(auth, "behind-1", ["ci-deployer"]));
  assert.match(await signedInGet("/"), /<td>user<\/td><td>standby<\/td>/);
  await mezctlOk(auth, "ca", "rotate", "--type=user", "--manual", "--phase=init");
  await mezctlOk(auth, "ca", "rotate", "--type=user", "--manual", "--phase=update_clients");
  const deadline = Date.now() + 20_000;
  let html = await signedInGet("/");
  while (!/<td>user<\/td><td>update_clients<\/td>/.test(html) && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 200));
    html = await signedInGet("/");
  }
  assert.match(html, /<td>user<\/td><td>update_clients<\/td><td>manual<\/td>/);
  assert.match(html, /1 of 1 not yet on the signing key/);
  await mezctlOk(auth, "ca", "rotate", "--type=user", "--phase=rollback");
  await mezctlOk(auth, "ca", "rotate", "--type=user", "--manual", "--phase=standby");
});

test("mezctl dashboard against a service without --web-addr: one clear line", async () => {
  const plain = await startAuth();
  try {
    const r = await mezctl(plain, "dashboard");
    assert.equal(r.code, 2, "a configuration matter (exit 2)");
    assert.equal(r.stdout, "");
    assert.match(r.stderr, /^mezctl: this auth service serves no dashboard: start it with --web-addr=HOST:PORT\n$/);
  } finally {
    await plain.stop();
  }
});

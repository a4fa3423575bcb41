/**
 * The dashboard (SPEC §18) through a real headless Chromium against the real auth service
 * (`bin/mezd auth start --web-addr`) and the real `bin/mezctl`: sign-in links, the session
 * cookie, sign-out, CSRF refusals, lock and unlock (seen by mezctl, by a renewal and in the
 * audit), search and paging, the security headers. It also takes the README's screenshots.
 */
import assert from "node:assert/strict";
import { X509Certificate, createHash } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { createServer, type Server } from "node:http";
import { request as httpsRequest } from "node:https";
import { connect as tlsConnect, type PeerCertificate } from "node:tls";
import { join as joinPath } from "node:path";
import { after, before, test, type TestContext } from "node:test";
import { chromium, type Browser, type BrowserContext, type Page } from "playwright-core";
import { readAdminIdentity } from "../../src/api/admin-identity.js";
import { MEZD, ROOT, SEED_ROLE, mezctlOk, principalsMezd, run, startAuth, tokenFrom, type AuthProcess } from "../harness/auth.js";
import { freePort } from "../harness/net.js";
import { missingComponent } from "../harness/require.js";
import { addIdentity, createRole, join, outcome, renew, type Held } from "../auth/client.js";

const CHROMIUM = "/usr/bin/chromium";
/** Identities named app-000.. for paging: two full pages of 50 and a part. */
const APPS = 120;

let auth: AuthProcess | undefined;
let browser: Browser | undefined;
let webPort = 0;
let base = "";
/** SHA-256 of the served certificate's public key: the one key the browser is told to accept. */
let spki = "";
let held: Held;
const evil: { server?: Server; url: string } = { url: "" };

function needChromium(t: TestContext): boolean {
  if (existsSync(CHROMIUM)) return true;
  missingComponent(t, "chromium", "apt-get install chromium");
  return false;
}

/** The dashboard's certificate, verified against the cluster's CA as mezctl trusts it. */
function servedCertificate(): Promise<{ cert: PeerCertificate; authorized: boolean; error: Error | null }> {
  const ca = readAdminIdentity(auth!.identityPath).ca_pem;
  return new Promise((resolve, reject) => {
    const s = tlsConnect({ host: "127.0.0.1", port: webPort, ca, rejectUnauthorized: false }, () => {
      resolve({ cert: s.getPeerCertificate(), authorized: s.authorized, error: s.authorizationError });
      s.end();
    });
    s.once("error", reject);
  });
}

/**
 * A POST made outside the browser, as a forger would send it (over TLS verified against the
 * cluster's CA): the status only.
 */
function post(path: string, form: Record<string, string>, headers: Record<string, string>): Promise<number> {
  const body = new URLSearchParams(form).toString();
  const ca = readAdminIdentity(auth!.identityPath).ca_pem;
  return new Promise((resolve, reject) => {
    const req = httpsRequest(`${base}${path}`, { method: "POST", ca, headers: { "content-type": "application/x-www-form-urlencoded", "content-length": String(Buffer.byteLength(body)), ...headers } }, (res) => {
      res.resume();
      res.on("end", () => resolve(res.statusCode ?? 0));
    });
    req.on("error", reject);
    req.end(body);
  });
}

async function signInUrl(): Promise<string> {
  const out = await mezctlOk(auth!, "dashboard");
  const url = out.split("\n")[0]!;
  assert.match(url, new RegExp(`^${base.replace(/[.]/g, "\\.")}/signin/[A-Za-z0-9_-]{43}$`));
  return url;
}

/** A fresh browser context (no cookies) that trusts only the dashboard's certificate key. */
async function newContext(): Promise<BrowserContext> {
  return browser!.newContext({ viewport: { width: 1280, height: 900 } });
}

async function signedIn(): Promise<{ context: BrowserContext; page: Page }> {
  const context = await newContext();
  const page = await context.newPage();
  const res = await page.goto(await signInUrl());
  assert.equal(res?.status(), 200);
  assert.equal(new URL(page.url()).pathname, "/");
  return { context, page };
}

async function status(name: string): Promise<{ locked: boolean; instances: { id: string }[] }> {
  return JSON.parse(await mezctlOk(auth!, "agent-identities", "status", name, "--format=json"));
}

before(async () => {
  if (!existsSync(CHROMIUM)) return;
  webPort = await freePort();
  auth = await startAuth({ extraArgs: [`--web-addr=127.0.0.1:${webPort}`] });
  base = `https://127.0.0.1:${webPort}`;
  await createRole(auth, SEED_ROLE);
  const token = await addIdentity(auth, "web-deploy", ["ci-deployer"]);
  held = await join(auth.addr, token);
  await Promise.all(Array.from({ length: APPS }, (_, i) => addIdentity(auth!, `app-${String(i).padStart(3, "0")}`, ["ci-deployer"])));
  const served = await servedCertificate();
  spki = createHash("sha256").update(new X509Certificate(served.cert.raw).publicKey.export({ type: "spki", format: "der" })).digest("base64");
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox", `--ignore-certificate-errors-spki-list=${spki}`] });
  // A page of another site that posts a form to the dashboard when opened (a forged cross-site request).
  evil.server = createServer((_req, res) => {
    res.writeHead(200, { "content-type": "text/html" });
    res.end(`<form id="f" method="post" action="${base}/identities/web-deploy/lock"><input name="csrf" value="guess"><input name="reason" value="evil"></form><script>document.getElementById("f").submit()</script>`);
  });
  await new Promise<void>((r) => evil.server!.listen(0, "127.0.0.1", r));
  evil.url = `http://127.0.0.1:${(evil.server.address() as { port: number }).port}/`;
});

after(async () => {
  await browser?.close();
  evil.server?.close();
  await auth?.stop();
});

test("the dashboard's certificate chains to the cluster's CA and names its address", async (t) => {
  if (!needChromium(t)) return;
  const served = await servedCertificate();
  assert.equal(served.error, null, `verifies against admin.identity's CA: ${served.error?.message}`);
  assert.ok(served.authorized);
  assert.match(served.cert.subjectaltname ?? "", /IP Address:127\.0\.0\.1/);
});

test("a sign-in link works once and sets a strict session cookie; the pages carry a strict CSP", async (t) => {
  if (!needChromium(t)) return;
  const url = await signInUrl();
  const context = await newContext();
  const page = await context.newPage();
  const res = await page.goto(url);
  assert.equal(res?.status(), 200);
  assert.equal(await page.locator("h1").textContent(), "Overview");
  const headers = res!.headers();
  assert.match(headers["content-security-policy"] ?? "", /default-src 'self'/);
  assert.doesNotMatch(headers["content-security-policy"] ?? "", /unsafe-inline|unsafe-eval|\*/);
  assert.equal(headers["x-frame-options"], "DENY");
  assert.equal(headers["cache-control"], "no-store");

  const cookies = await context.cookies(base);
  assert.equal(cookies.length, 1);
  const c = cookies[0]!;
  assert.equal(c.name, "__Host-mezite_session");
  assert.equal(c.httpOnly, true);
  assert.equal(c.secure, true);
  assert.equal(c.sameSite, "Strict");
  const hoursLeft = (c.expires * 1000 - Date.now()) / 3_600_000;
  assert.ok(hoursLeft > 11 && hoursLeft <= 12, `expires in ${hoursLeft} h`);
  assert.equal(page.url(), `${base}/`, "the secret leaves the address bar");

  // The same link again, from a browser without the session: refused.
  const other = await newContext();
  const again = await (await other.newPage()).goto(url);
  assert.equal(again?.status(), 403);
  assert.equal(new URL(again!.url()).pathname, new URL(url).pathname);
  assert.deepEqual(await other.cookies(base), [], "no cookie for a used link");
  await other.close();
  await context.close();
});

test("without a session every page is refused and no asset comes from another host", async (t) => {
  if (!needChromium(t)) return;
  const context = await newContext();
  const page = await context.newPage();
  for (const path of ["/", "/identities", "/identities/web-deploy", "/nodes", "/locks", "/audit"]) {
    const res = await page.goto(base + path);
    assert.equal(res?.status(), 401, path);
    assert.match(res!.headers()["content-security-policy"] ?? "", /frame-ancestors 'none'/);
    assert.doesNotMatch(await page.content(), /web-deploy<\/a>|app-000/, `${path} shows nothing`);
  }
  await context.close();

  // Signed in, the overview draws its chart with uPlot served from here, and nothing breaks the CSP.
  const { context: c2, page: p2 } = await signedIn();
  const hosts = new Set<string>();
  const violations: string[] = [];
  p2.on("request", (r) => hosts.add(new URL(r.url()).host));
  p2.on("console", (m) => m.type() === "error" && violations.push(m.text()));
  await p2.goto(`${base}/`);
  await p2.locator("#chart .uplot canvas").first().waitFor();
  assert.deepEqual([...hosts], [`127.0.0.1:${webPort}`]);
  assert.deepEqual(violations, []);
  assert.match(await p2.locator("table").last().textContent() ?? "", /user\s*standby/);
  await c2.close();
});

test("sign-out ends the session on the server, not just in the browser", async (t) => {
  if (!needChromium(t)) return;
  const { context, page } = await signedIn();
  const cookie = (await context.cookies(base))[0]!;
  await page.getByRole("button", { name: "Sign out" }).click();
  await page.getByRole("heading", { name: "Signed out" }).waitFor();
  assert.deepEqual(await context.cookies(base), []);
  assert.equal((await page.goto(`${base}/identities`))?.status(), 401);
  // The old cookie, replayed, opens nothing.
  await context.addCookies([cookie]);
  assert.equal((await page.goto(`${base}/identities`))?.status(), 401);
  await context.close();
});

test("forged and cross-site POSTs are refused and change nothing", async (t) => {
  if (!needChromium(t)) return;
  const { context, page } = await signedIn();
  await page.goto(`${base}/identities/web-deploy`);
  const csrf = await page.locator('input[name="csrf"]').first().inputValue();
  const lockPath = "/identities/web-deploy/lock";
  const lock = `${base}${lockPath}`;
  const form = { csrf, reason: "forged" };
  const c = (await context.cookies(base))[0]!;
  const cookie = `${c.name}=${c.value}`;

  // A form on another site, submitted in the signed-in browser: the cookie stays home (SameSite)
  // and the Origin is foreign.
  const evilPage = await context.newPage();
  const [res] = await Promise.all([evilPage.waitForResponse(lock), evilPage.goto(evil.url)]);
  assert.equal(res.status(), 403);
  await evilPage.close();

  // The session's cookie with a foreign Origin, with no Origin, or without the form token; and
  // the right token without the cookie.
  const refused = [
    await post(lockPath, form, { cookie, origin: "https://evil.example" }),
    await post(lockPath, form, { cookie, origin: "null" }),
    await post(lockPath, form, { cookie }),
    await post(lockPath, { reason: "no token" }, { cookie, origin: base }),
    await post(lockPath, { csrf: csrf.slice(0, -2) + (csrf.endsWith("xx") ? "yy" : "xx"), reason: "bad token" }, { cookie, origin: base }),
    await post(lockPath, form, { origin: base }),
  ];
  assert.deepEqual(refused, [403, 403, 403, 403, 403, 403]);
  assert.equal((await status("web-deploy")).locked, false, "no request locked it");
  const events = JSON.parse(await mezctlOk(auth!, "audit", "ls", "--type=lock", "--format=json")) as { identity: string }[];
  assert.ok(!events.some((e) => e.identity === "web-deploy"), "and none was audited as a lock");

  // The same request from the page, with Origin and token, works (the refusals were not luck).
  assert.equal(await post(lockPath, form, { cookie, origin: base }), 303);
  assert.equal((await status("web-deploy")).locked, true);
  await mezctlOk(auth!, "agent-identities", "unlock", "web-deploy");
  await context.close();
});

test("lock and unlock from the identity's page: mezctl, a renewal and the audit page see them, with the session as actor", async (t) => {
  if (!needChromium(t)) return;
  type Ev = { type: string; identity: string; actor: string; detail: string };
  const lockEvents = async () => (JSON.parse(await mezctlOk(auth!, "audit", "ls", "--type=lock", "--format=json")) as Ev[]).filter((e) => e.identity === "web-deploy");
  const earlier = (await lockEvents()).length;
  const { context, page } = await signedIn();
  await page.goto(`${base}/identities/web-deploy`);
  await page.locator('input[name="reason"]').fill("incident 42");
  await page.getByRole("button", { name: "Lock" }).click();
  await page.getByText("Locked: its renewals").waitFor();
  assert.equal((await status("web-deploy")).locked, true);
  const r = await outcome(renew(auth!.addr, held));
  assert.ok(r !== "ok" && r.code === "ERR_LOCKED", `a renewal is refused: ${JSON.stringify(r)}`);

  await page.getByRole("button", { name: "Unlock" }).click();
  await page.getByText("Unlocked.").waitFor();
  assert.equal((await status("web-deploy")).locked, false);
  held = await renew(auth!.addr, held);

  const events = (await lockEvents()).slice(earlier);
  assert.deepEqual(events.map((e) => e.type), ["lock.create", "lock.delete"]);
  for (const e of events) assert.match(e.actor, /^dashboard:[0-9a-f]{12} \(via .+\)$/);
  assert.match(events[0]!.detail, /incident 42/);

  await page.goto(`${base}/audit?type=lock`);
  const rows = page.locator("#audit-rows tr");
  assert.equal(await rows.count(), earlier + 2);
  assert.match((await rows.nth(0).textContent()) ?? "", /lock\.delete.*web-deploy.*dashboard:/s, "newest first");
  assert.match((await rows.nth(1).textContent()) ?? "", /lock\.create.*web-deploy.*dashboard:/s);
  await context.close();
});

test("add a token (shown once, joins), then end the instance it made", async (t) => {
  if (!needChromium(t)) return;
  const { context, page } = await signedIn();
  const first = (await status("web-deploy")).instances.map((i) => i.id);
  await page.goto(`${base}/identities/web-deploy`);
  const [res] = await Promise.all([page.waitForResponse((r) => r.url().endsWith("/tokens")), page.getByRole("button", { name: /Add a join token/ }).click()]);
  assert.equal(res.headers()["cache-control"], "no-store");
  const token = ((await page.locator("#token").textContent()) ?? "").trim();
  assert.match(token, /^[0-9a-f]{64}$/);
  const second = await join(auth!.addr, token);
  assert.ok(second.certs.renewalCertificatePem);
  assert.ok(!auth!.output().includes(token), "the token is in no log or audit line");

  const before = (await status("web-deploy")).instances.map((i) => i.id);
  assert.equal(before.length, first.length + 1, "the token made a new instance");
  await page.goto(`${base}/identities/web-deploy`);
  const newest = before.find((id) => !first.includes(id))!;
  await page.locator("#instances tr", { hasText: newest }).getByRole("button", { name: "End" }).click();
  await page.getByText("Instance ended").waitFor();
  assert.deepEqual((await status("web-deploy")).instances.map((i) => i.id), before.filter((id) => id !== newest));
  await context.close();
});

test("nodes, the locks page's Remove, and the audit page's live tail", async (t) => {
  if (!needChromium(t)) return;
  const sshDir = mkdtempSync(joinPath(tmpdir(), "mezite-web-node-"));
  try {
    const token = tokenFrom(await mezctlOk(auth!, "tokens", "add", "--type=node", "--labels=env=staging"));
    const joined = await run(MEZD, ["node", "join", `--auth-server=${auth!.addr}`, `--token=${token}`, "--hostname=web-server-01", `--ssh-dir=${sshDir}`, `--mezd-path=${principalsMezd()}`]);
    assert.equal(joined.code, 0, joined.stderr);
  } finally {
    rmSync(sshDir, { recursive: true, force: true });
  }
  const { context, page } = await signedIn();
  await page.goto(`${base}/nodes`);
  assert.match((await page.locator("#nodes tbody tr").first().textContent()) ?? "", /web-server-01.*env=staging/s);

  // The audit page picks up new events by itself while "live" is ticked.
  await page.goto(`${base}/audit?type=lock`);
  assert.equal(await page.locator("#live").isChecked(), true);
  const before = await page.locator("#audit-rows tr").count();
  await mezctlOk(auth!, "locks", "add", "--role=ci-deployer", "--reason=maintenance");
  await page.locator("#audit-rows tr", { hasText: "role=ci-deployer maintenance" }).waitFor({ timeout: 15_000 });
  assert.equal(await page.locator("#audit-rows tr").count(), before + 1);

  await page.goto(`${base}/locks`);
  const row = page.locator("#locks tbody tr", { hasText: "ci-deployer" });
  assert.match((await row.textContent()) ?? "", /role ci-deployer\s*maintenance/);
  await row.getByRole("button", { name: "Remove" }).click();
  await page.locator("#locks tbody tr", { hasText: "no active locks" }).waitFor();
  assert.equal(JSON.parse(await mezctlOk(auth!, "locks", "ls", "--format=json")).length, 0);
  await context.close();
});

test("identities: server-side search by name prefix, both orders, paging both ways, 50 a page; screenshots for the README", async (t) => {
  if (!needChromium(t)) return;
  const { context, page } = await signedIn();
  await page.goto(`${base}/identities`);
  await page.locator('input[name="q"]').fill("app-");
  await page.getByRole("button", { name: "Search" }).click();
  const names = () => page.locator("#identities tbody td:first-child a").allTextContents();
  const first = await names();
  assert.equal(first.length, 50);
  assert.deepEqual(first.slice(0, 2), ["app-000", "app-001"]);
  // Their state as `agent-identities ls` shows it: none of them has joined yet.
  assert.deepEqual(await page.locator("#identities tbody td:nth-child(3)").first().textContent(), "awaiting join");
  const next = () => page.getByRole("link", { name: "next page ›" });
  await next().click();
  assert.deepEqual((await names()).slice(0, 1), ["app-050"]);
  await next().click();
  const last = await names();
  assert.equal(last.length, APPS - 100);
  assert.equal(await next().count(), 0);
  await page.getByRole("link", { name: "‹ previous page" }).click();
  const back = await names();
  assert.deepEqual([back.length, back[0], back.at(-1)], [50, "app-050", "app-099"]);

  // Z to A, paged the same way.
  await page.goto(`${base}/identities?q=app-`);
  await page.locator("#sort-name").click();
  assert.deepEqual((await names()).slice(0, 2), ["app-119", "app-118"]);
  await next().click();
  assert.deepEqual((await names()).slice(0, 1), ["app-069"]);
  await page.getByRole("link", { name: "‹ previous page" }).click();
  assert.deepEqual((await names()).slice(0, 1), ["app-119"]);

  await page.goto(`${base}/identities?q=web`);
  assert.deepEqual(await names(), ["web-deploy"]);
  await page.goto(`${base}/identities?q=${encodeURIComponent("<script>")}`);
  assert.deepEqual(await names(), []);
  assert.equal((await page.goto(`${base}/identities/%E0%A4%A`))?.status(), 400, "a malformed address is a bad request");
  assert.equal((await page.goto(`${base}/identities/no-such-one`))?.status(), 404);

  // The README's pictures: into docs/ with MEZITE_SCREENSHOTS=1 (so a test run leaves the checkout
  // as it was), else into a temp dir, taken the same way either way.
  const shots = process.env["MEZITE_SCREENSHOTS"] === "1" ? joinPath(ROOT, "docs") : mkdtempSync(joinPath(tmpdir(), "mezite-shots-"));
  mkdirSync(shots, { recursive: true });
  await page.goto(`${base}/identities`);
  await page.screenshot({ path: joinPath(shots, "dashboard-identities.png"), fullPage: false });
  await page.goto(`${base}/identities/web-deploy`);
  await page.screenshot({ path: joinPath(shots, "dashboard-identity.png"), fullPage: true });
  await context.close();
});

/**
 * `mezd auth start --web-addr`: the dashboard over HTTPS (SPEC §18) with the service's own TLS
 * certificate (server.ts hands over a fresh one on every CA phase change).
 *
 * Security, in one place:
 * - A session cookie (`__Host-`, HttpOnly, Secure, SameSite=Strict, 12 h) opened only by a
 *   one-time sign-in link (sessions.ts); no page but the sign-in link and the static assets
 *   answers without one.
 * - Every state change is a POST that must carry both an Origin header naming this very host and
 *   the session's form token (CSRF beyond SameSite); it is audited with the session as actor.
 * - A strict Content-Security-Policy (everything from 'self', no inline script or style, no
 *   framing), X-Frame-Options DENY, no referrer to other sites, nosniff, and no caching of pages.
 */
import { createServer, type Server } from "node:https";
import type { IncomingMessage, ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { hostname as osHostname } from "node:os";
import { create } from "@bufbuild/protobuf";
import { TokenVerifierSchema } from "../api/gen/mezite/v1/admin_pb.js";
import * as identities from "../auth/admin/identities.js";
import * as locks from "../auth/admin/locks.js";
import type { AuthContext } from "../auth/context.js";
import { deriveTokenSecrets, generateToken } from "../ca/jointoken.js";
import { ed25519RawPublic } from "../ca/sshkey.js";
import { splitHostPort } from "../lib/diag.js";
import { MeziteError, isMeziteError } from "../lib/errors.js";
import { assets } from "./assets.js";
import { Html, html, page, query, type PageOptions } from "./html.js";
import * as pages from "./pages.js";
import { RenewalChart } from "./renewals.js";
import { csrfMatches, sessionCaller, sessionOf, signIn, signOut, type Session } from "./sessions.js";

export const SESSION_COOKIE = "__Host-mezite_session";

export const CONTENT_SECURITY_POLICY =
  "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

const SECURITY_HEADERS: Record<string, string> = {
  "content-security-policy": CONTENT_SECURITY_POLICY,
  "x-frame-options": "DENY",
  "x-content-type-options": "nosniff",
  // Not no-referrer: under it browsers send "Origin: null" with the dashboard's own forms.
  "referrer-policy": "same-origin",
  "cross-origin-opener-policy": "same-origin",
  "cross-origin-resource-policy": "same-origin",
  "strict-transport-security": "max-age=31536000",
};

/** Largest form body: every form here is a few hundred bytes. */
const MAX_BODY_BYTES = 16 * 1024;
const REQUEST_TIMEOUT_MS = 10_000;

export interface WebTls {
  key: string;
  cert: string;
}

export interface WebServer {
  port: number;
  /** https://HOST:PORT as a browser reaches it. */
  url: string;
  setTls(tls: WebTls): void;
  stop(): Promise<void>;
}

/** The dashboard's URL for --web-addr: a wildcard host becomes the first public address's host, or this host's name. */
export function webUrl(webAddr: string, port: number, publicAddrs: string[]): string {
  let { host } = splitHostPort(webAddr, "--web-addr");
  if (host === "0.0.0.0" || host === "::" || host === "") host = publicAddrs[0] ? splitHostPort(publicAddrs[0], "--public-addr").host : osHostname();
  return `https://${host.includes(":") ? `[${host}]` : host}:${port}`;
}

class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

/** A path segment, decoded; a malformed one is a bad request, not a server error. */
function segment(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    throw new HttpError(400, "Malformed address.");
  }
}

function cookieOf(req: IncomingMessage): string | undefined {
  for (const part of (req.headers.cookie ?? "").split(";")) {
    const i = part.indexOf("=");
    if (i > 0 && part.slice(0, i).trim() === SESSION_COOKIE) return part.slice(i + 1).trim();
  }
  return undefined;
}

function readForm(req: IncomingMessage): Promise<URLSearchParams> {
  return new Promise((resolve, reject) => {
    const type = (req.headers["content-type"] ?? "").split(";")[0]!.trim();
    if (type !== "application/x-www-form-urlencoded") return reject(new HttpError(415, "forms only"));
    let size = 0;
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => {
      size += c.length;
      if (size > MAX_BODY_BYTES) {
        reject(new HttpError(413, "request too large"));
        req.destroy();
      } else chunks.push(c);
    });
    req.on("end", () => resolve(new URLSearchParams(Buffer.concat(chunks).toString("utf8"))));
    req.on("error", reject);
  });
}

/** Whether a POST comes from a page of this dashboard: its Origin names this host (and https). */
function sameOrigin(req: IncomingMessage): boolean {
  const origin = req.headers.origin;
  const host = req.headers.host;
  return origin !== undefined && host !== undefined && origin === `https://${host}`;
}

export async function startWebServer(ctx: AuthContext, addr: string, tls: WebTls): Promise<WebServer> {
  const { host, port: wantPort } = splitHostPort(addr, "--web-addr");
  const overviewState: pages.OverviewState = { renewals: new RenewalChart(ctx.backend) };
  const send = (res: ServerResponse, status: number, body: string, headers: Record<string, string | string[]> = {}) => {
    res.writeHead(status, { ...SECURITY_HEADERS, "content-type": "text/html; charset=utf-8", "cache-control": "no-store", ...headers });
    res.end(body);
  };
  const render = (res: ServerResponse, title: string, session: Session | undefined, body: Html, o: PageOptions, status = 200) =>
    send(res, status, page(title, ctx.clusterName, session, body, o));
  const see = (res: ServerResponse, location: string, headers: Record<string, string | string[]> = {}) =>
    send(res, 303, "", { location, ...headers });

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? "/", "https://dashboard.invalid");
    const path = url.pathname;
    const remoteAddr = req.socket.remoteAddress ?? "";
    const method = req.method ?? "GET";

    if (path.startsWith("/assets/") && (method === "GET" || method === "HEAD")) {
      const a = assets().get(path.slice("/assets/".length));
      if (!a) throw new HttpError(404, "no such file");
      if (req.headers["if-none-match"] === a.etag) return void (res.writeHead(304, { ...SECURITY_HEADERS, etag: a.etag }), res.end());
      res.writeHead(200, { ...SECURITY_HEADERS, "content-type": a.type, etag: a.etag, "cache-control": "no-cache" });
      return void res.end(method === "HEAD" ? undefined : a.body);
    }
    const signInMatch = /^\/signin\/([A-Za-z0-9_-]{1,100})$/.exec(path);
    if (signInMatch && method === "GET") {
      const opened = await signIn(ctx, signInMatch[1]!, remoteAddr);
      if (!opened) throw new HttpError(403, "This sign-in link is used, expired or unknown: each works once, for 5 minutes. Run mezctl dashboard for a new one.");
      const maxAge = Math.floor((opened.session.expires - ctx.now()) / 1000);
      return see(res, "/", { "set-cookie": `${SESSION_COOKIE}=${opened.cookie}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=${maxAge}` });
    }

    const cookie = cookieOf(req);
    const session = await sessionOf(ctx, cookie);
    if (method === "POST") {
      // Refused before anything is read or changed: no session, a foreign Origin, or no token.
      if (!session) throw new HttpError(403, "Not signed in: run mezctl dashboard for a sign-in link.");
      if (!sameOrigin(req)) throw new HttpError(403, "Refused: this request did not come from a page of this dashboard (Origin).");
      const form = await readForm(req);
      if (!csrfMatches(session, form.get("csrf") ?? undefined)) throw new HttpError(403, "Refused: the form's token is missing or stale; reload the page and try again.");
      return post(res, path, form, session, cookie!, remoteAddr);
    }
    if (method !== "GET" && method !== "HEAD") throw new HttpError(405, "method not allowed");
    if (!session) throw new HttpError(401, "Not signed in: run mezctl dashboard for a one-time sign-in link.");
    const now = ctx.now();

    if (path === "/") return render(res, "Overview", session, await pages.overview(ctx, overviewState), { nav: "/", scripts: ["/assets/uplot.js", "/assets/app.js"], styles: ["/assets/uplot.css"] });
    if (path === "/identities") {
      const iq: pages.IdentityQuery = {
        q: url.searchParams.get("q") ?? "",
        sort: url.searchParams.get("sort") === "-name" ? "-name" : "name",
        after: url.searchParams.get("after") ?? "",
        before: url.searchParams.get("before") ?? "",
      };
      return render(res, "Agent identities", session, pages.identitiesView(iq, await pages.identityPage(ctx, iq), now), { nav: "/identities" });
    }
    const one = /^\/identities\/([^/]+)$/.exec(path);
    if (one) {
      const name = segment(one[1]!);
      const s = await identities.getAgentIdentity(ctx, name);
      const done = url.searchParams.get("done");
      const flash = done && FLASH[done] ? html`${FLASH[done]}` : undefined;
      return render(res, `Agent identity ${name}`, session, pages.identityView(s, session, now, flash), { nav: "/identities" });
    }
    if (path === "/nodes") return render(res, "Nodes", session, await pages.nodesView(ctx, url.searchParams.get("after") ?? ""), { nav: "/nodes" });
    if (path === "/locks") return render(res, "Locks", session, await pages.locksView(ctx, session), { nav: "/locks" });
    if (path === "/audit") {
      const type = (url.searchParams.get("type") ?? "").trim().slice(0, 100);
      const window = url.searchParams.get("since") ?? "1h";
      const events = await pages.auditEvents(ctx, type, window);
      if (url.searchParams.get("rows") === "1") return send(res, 200, pages.auditRows(events, now).text);
      return render(res, "Audit", session, pages.auditView(type, pages.AUDIT_WINDOWS[window] ? window : "1h", events, now), { nav: "/audit", scripts: ["/assets/app.js"] });
    }
    throw new HttpError(404, "No such page.");
  }

  async function post(res: ServerResponse, path: string, form: URLSearchParams, session: Session, cookie: string, remoteAddr: string): Promise<void> {
    const by = sessionCaller(session, remoteAddr);
    if (path === "/signout") {
      await signOut(ctx, cookie, session, remoteAddr);
      return send(res, 200, page("Signed out", ctx.clusterName, undefined, html`<p>Signed out. Run <code>mezctl dashboard</code> to sign in again.</p>`, { nav: "" }), {
        "set-cookie": `${SESSION_COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0`,
      });
    }
    const m = /^\/identities\/([^/]+)\/(lock|unlock|tokens)$/.exec(path) ?? /^\/identities\/([^/]+)\/instances\/([^/]+)\/end$/.exec(path);
    if (m) {
      const name = segment(m[1]!);
      const back = `/identities/${encodeURIComponent(name)}`;
      switch (m[2]) {
        case "lock":
          await locks.addLock(ctx, by, "agent_identity", name, (form.get("reason") ?? "").slice(0, 200) || "locked from the dashboard", 0);
          return see(res, `${back}${query({ done: "locked" })}`);
        case "unlock":
          await locks.removeLocks(ctx, by, `agent_identity:${name}`);
          return see(res, `${back}${query({ done: "unlocked" })}`);
        case "tokens": {
          // Made here, shown once in this reply (never cached, never stored): the service keeps
          // only what mezctl would send it (SPEC §4).
          const token = generateToken();
          const s = deriveTokenSecrets(Buffer.from(token, "hex"));
          const verifier = create(TokenVerifierSchema, { tokenId: s.tokenId, verifyKey: ed25519RawPublic(s.verifyKey), macKey: s.macKey, ttlMs: 0n });
          const info = await identities.addIdentityToken(ctx, by, name, verifier);
          const body = pages.tokenView(name, token, ctx.publicAddrs[0] ?? "", Number(info.expires), ctx.now());
          return render(res, `New join token for ${name}`, session, body, { nav: "/identities" });
        }
        default:
          await identities.removeInstance(ctx, by, name, segment(m[2]!));
          return see(res, `${back}${query({ done: "ended" })}`);
      }
    }
    const lock = /^\/locks\/([^/]+)\/remove$/.exec(path);
    if (lock) {
      const id = segment(lock[1]!);
      if (id.includes(":")) throw new HttpError(404, "No such lock."); // an id, never KIND:TARGET
      await locks.removeLocks(ctx, by, id);
      return see(res, "/locks");
    }
    throw new HttpError(404, "No such action.");
  }

  const server: Server = createServer({ key: tls.key, cert: tls.cert, minVersion: "TLSv1.2" }, (req, res) => {
    handle(req, res).catch((e: unknown) => {
      let status = 500;
      let message = "Something went wrong; the service log has the details.";
      if (e instanceof HttpError) [status, message] = [e.status, e.message];
      else if (isMeziteError(e, "ERR_NOT_FOUND")) [status, message] = [404, e.message];
      else if (isMeziteError(e)) [status, message] = [e.code === "ERR_USAGE" ? 400 : 409, e.message];
      // A sign-in link's path is its secret: never logged.
      const path = (req.url ?? "").split("?")[0]!.replace(/^\/signin\/.*/, "/signin/…").slice(0, 100);
      if (status === 500) ctx.log.error("dashboard request failed", { path, error: (e as Error)?.stack ?? String(e) });
      if (res.headersSent) return void res.destroy();
      send(res, status, page(status === 401 ? "Sign in" : "Refused", ctx.clusterName, undefined, html`<p class="${status >= 400 ? "bad" : ""}" id="error">${message}</p>`, { nav: "" }));
    });
  });
  server.requestTimeout = REQUEST_TIMEOUT_MS;
  server.headersTimeout = REQUEST_TIMEOUT_MS;
  server.maxConnections = 256;
  server.on("tlsClientError", () => {}); // a browser that drops a handshake is not our error
  await new Promise<void>((resolve, reject) => {
    server.once("error", (e) => reject(new MeziteError("ERR_CONFIG", `cannot listen on --web-addr ${addr}: ${(e as Error).message}`, { cause: e })));
    server.listen(wantPort, host, resolve);
  });
  const port = (server.address() as AddressInfo).port;
  return {
    port,
    url: webUrl(addr, port, ctx.publicAddrs),
    setTls: (t) => server.setSecureContext({ key: t.key, cert: t.cert, minVersion: "TLSv1.2" }),
    stop: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

const FLASH: Record<string, string> = {
  locked: "Locked: its renewals and joins are refused from now on, and nodes refuse its certificates within seconds.",
  unlocked: "Unlocked.",
  ended: "Instance ended: its certificates are revoked.",
};


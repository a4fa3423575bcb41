/**
 * `mezd auth start`: the CAs, the gRPC API over TLS (HTTP/2), and the diagnostics endpoints.
 * One TLS port serves every service; which client certificate a call needs is checked per
 * service: none for Join, a renewal certificate for Renew, a node certificate for the node API,
 * the admin certificate for the admin API.
 */
import { createSecureServer, type Http2SecureServer, type Http2ServerRequest, type Http2ServerResponse, type ServerHttp2Session } from "node:http2";
import { constants } from "node:crypto";
import type { TLSSocket } from "node:tls";
import type { AddressInfo } from "node:net";
import { hostname as osHostname } from "node:os";
import { join } from "node:path";
import { Code, ConnectError, createContextKey, createContextValues, type ConnectRouter, type HandlerContext } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { create } from "@bufbuild/protobuf";
import { AdminService } from "../api/gen/mezite/v1/admin_pb.js";
import * as adminPb from "../api/gen/mezite/v1/admin_pb.js";
import { JoinRequestSchema, JoinResponseSchema, JoinService, type JoinRequest } from "../api/gen/mezite/v1/join_pb.js";
import { NodeService, RenewHostCertificateResponseSchema } from "../api/gen/mezite/v1/node_pb.js";
import { RenewRequestSchema, RenewResponseSchema, RenewService, type RenewRequest } from "../api/gen/mezite/v1/renew_pb.js";
import { toConnectError } from "../api/errors.js";
import { unaryGrpc, type UnaryRoute } from "../api/grpc-unary.js";
import { writeAdminIdentity } from "../api/admin-identity.js";
import type { Backend } from "../backend/backend.js";
import { openBackend } from "../backend/open.js";
import { caPin, generateP256, issueClientCertificate, issueServerCertificate, parseVerifiedCertificate, privateKeyToPem, type CertKind, type ParsedCert } from "../ca/x509.js";
import { diagSource, handleDiag, splitHostPort, startDiagServer, type DiagSource } from "../lib/diag.js";
import { MeziteError, isMeziteError } from "../lib/errors.js";
import { ensureDir } from "../lib/files.js";
import { createLogger, type Logger } from "../lib/log.js";
import { Registry, type MetricState } from "../lib/metrics.js";
import * as admin from "./admin.js";
import { Audit } from "./audit.js";
import { loadOrCreateCas, type ClusterCas } from "./cas.js";
import type { AuthContext } from "./context.js";
import { joinAgent } from "./join.js";
import { heartbeat, joinNode, renewNode } from "./nodes.js";
import { Revocations } from "./revocations.js";
import { renewAgent } from "./renew.js";

export interface AuthConfig {
  /** CA cluster key, SQLite file and admin.identity. */
  dataDir: string;
  /** HOST:PORT for gRPC over TLS; port 0 picks a free one. */
  listen: string;
  /** Addresses clients use; put into the TLS certificate and join hints. Default: the listen address. */
  publicAddrs: string[];
  clusterName: string;
  /** "sqlite", "memory" or a postgres:// URL. */
  backend: string;
  /** Serve plain HTTP/1.1 (health, metrics) on the TLS port too, chosen by ALPN. */
  singlePort: boolean;
  diagAddr?: string;
}

/** Largest request accepted: every legitimate message is a few KiB. */
export const MAX_REQUEST_BYTES = 64 * 1024;
const TLS_CERT_TTL_MS = 365 * 24 * 3_600_000;
const ADMIN_CERT_TTL_MS = 365 * 24 * 3_600_000;

interface Peer {
  remoteAddr: string;
  cert: ParsedCert | undefined;
}
const peerKey = createContextKey<Peer>({ remoteAddr: "", cert: undefined });

function peerOf(req: Http2ServerRequest): Peer {
  const socket = req.socket as TLSSocket;
  const remoteAddr = socket.remoteAddress ?? "";
  if (!socket.authorized) return { remoteAddr, cert: undefined };
  const x509 = socket.getPeerX509Certificate();
  if (!x509) return { remoteAddr, cert: undefined };
  try {
    return { remoteAddr, cert: parseVerifiedCertificate(x509) };
  } catch {
    return { remoteAddr, cert: undefined };
  }
}

function requireCert(from: HandlerContext | Peer, kind: CertKind): Peer & { cert: ParsedCert } {
  const peer = "values" in from ? from.values.get(peerKey) : from;
  if (!peer.cert || peer.cert.kind !== kind) {
    const what = kind === "renewal" ? "the daemon's renewal certificate (output certificates cannot renew)" : `a ${kind} certificate`;
    throw new ConnectError(`this call needs ${what}`, Code.Unauthenticated, { "mezite-error-code": "ERR_NOT_AUTHORIZED" });
  }
  return peer as Peer & { cert: ParsedCert };
}

export interface AuthService {
  port: number;
  addr: string;
  context: AuthContext;
  /** This process's metrics as data, for a cluster's primary to sum. */
  metricsState(): MetricState[];
  stop(): Promise<void>;
}

export interface AuthMetrics {
  calls: ReturnType<Registry["counter"]>;
  duration: ReturnType<Registry["histogram"]>;
}

function routes(ctx: AuthContext, revocations: Revocations, metrics: AuthMetrics) {
  // Every handler goes through here: one place for metrics, logging and error mapping.
  const failed = (method: string, e: unknown): ConnectError => {
    metrics.calls.inc({ method, result: isMeziteError(e) ? e.code : e instanceof ConnectError ? Code[e.code] : "internal" });
    if (!isMeziteError(e) && !(e instanceof ConnectError)) ctx.log.error("request failed", { method, error: (e as Error)?.stack ?? String(e) });
    return toConnectError(e);
  };
  const wrap = <A extends unknown[], R>(method: string, fn: (...args: A) => Promise<R>) => async (...args: A): Promise<R> => {
    const start = performance.now();
    try {
      const r = await fn(...args);
      metrics.calls.inc({ method, result: "ok" });
      return r;
    } catch (e) {
      throw failed(method, e);
    } finally {
      metrics.duration.observe((performance.now() - start) / 1000, { method });
    }
  };
  const adminCall = <Req, Res>(method: string, fn: (req: Req) => Promise<Res>) =>
    wrap(method, async (req: Req, hc: HandlerContext) => {
      requireCert(hc, "admin");
      return fn(req);
    });
  const adminStream = <Req, Res>(method: string, fn: (req: Req) => AsyncIterable<Res>) =>
    async function* (req: Req, hc: HandlerContext): AsyncGenerator<Res> {
      const start = performance.now();
      try {
        requireCert(hc, "admin");
        yield* fn(req);
        metrics.calls.inc({ method, result: "ok" });
      } catch (e) {
        throw failed(method, e);
      } finally {
        metrics.duration.observe((performance.now() - start) / 1000, { method });
      }
    };

  // Served by grpc-unary.ts as plain gRPC, and by connect in any other protocol or encoding.
  const join = wrap("Join", (req: JoinRequest, peer: Peer) => joinAgent(ctx, req, peer.remoteAddr));
  const renew = wrap("Renew", (req: RenewRequest, from: Peer) => {
    const peer = requireCert(from, "renewal");
    return renewAgent(ctx, req, peer.cert, peer.remoteAddr);
  });
  const hot = new Map<string, UnaryRoute>([
    [`/${JoinService.typeName}/${JoinService.method.join.name}`, { input: JoinRequestSchema, output: JoinResponseSchema, handle: (req, http) => join(req as JoinRequest, peerOf(http)) }],
    [`/${RenewService.typeName}/${RenewService.method.renew.name}`, { input: RenewRequestSchema, output: RenewResponseSchema, handle: (req, http) => renew(req as RenewRequest, peerOf(http)) }],
  ]);

  const router = (router: ConnectRouter) => {
    router.service(JoinService, {
      join: (req, hc) => join(req, hc.values.get(peerKey)),
      joinNode: wrap("JoinNode", (req, hc) => joinNode(ctx, req, hc.values.get(peerKey).remoteAddr)),
    });
    router.service(RenewService, {
      renew: (req, hc) => renew(req, hc.values.get(peerKey)),
    });
    router.service(NodeService, {
      heartbeat: wrap("Heartbeat", async (req, hc) => {
        const peer = requireCert(hc, "node");
        await heartbeat(ctx, peer.cert.subjectCommonName, req.address || peer.remoteAddr, Number(req.hostCertExpires));
        return {};
      }),
      renewHostCertificate: wrap("RenewHostCertificate", async (req, hc) => {
        const peer = requireCert(hc, "node");
        const credentials = await renewNode(ctx, peer.cert.subjectCommonName, req.hostPublicKey, req.tlsPublicKey);
        return create(RenewHostCertificateResponseSchema, { credentials });
      }),
      getRevocations: wrap("GetRevocations", async (_req, hc) => {
        requireCert(hc, "node");
        return revocations.get();
      }),
    });
    router.service(AdminService, {
      getClusterInfo: adminCall("GetClusterInfo", async () =>
        create(adminPb.GetClusterInfoResponseSchema, { clusterName: ctx.clusterName, publicAddrs: ctx.publicAddrs, caPin: caPin(ctx.cas.host.x509CertPem) }),
      ),
      createRole: adminCall("CreateRole", async (req: adminPb.CreateRoleRequest) => {
        if (!req.role) throw new MeziteError("ERR_USAGE", "invalid request: role missing");
        return create(adminPb.CreateRoleResponseSchema, await admin.createRole(ctx, req.role, req.force));
      }),
      listRoles: adminCall("ListRoles", async () => create(adminPb.ListRolesResponseSchema, { roles: await admin.listRoles(ctx) })),
      getRole: adminCall("GetRole", async (req: adminPb.GetRoleRequest) => create(adminPb.GetRoleResponseSchema, { role: await admin.getRole(ctx, req.name) })),
      deleteRole: adminCall("DeleteRole", async (req: adminPb.DeleteRoleRequest) => {
        await admin.deleteRole(ctx, req.name);
        return {};
      }),
      addAgentIdentity: adminCall("AddAgentIdentity", async (req: adminPb.AddAgentIdentityRequest) =>
        create(adminPb.AddAgentIdentityResponseSchema, await admin.addAgentIdentity(ctx, req.name, req.roles, req.token)),
      ),
      listAgentIdentities: adminStream("ListAgentIdentities", async function* (req: adminPb.ListAgentIdentitiesRequest) {
        for await (const identities of admin.listAgentIdentities(ctx, req.pageSize)) yield create(adminPb.ListAgentIdentitiesResponseSchema, { identities });
      }),
      getAgentIdentity: adminCall("GetAgentIdentity", async (req: adminPb.GetAgentIdentityRequest) =>
        create(adminPb.GetAgentIdentityResponseSchema, { identity: await admin.getAgentIdentity(ctx, req.name) }),
      ),
      deleteAgentIdentity: adminCall("DeleteAgentIdentity", async (req: adminPb.DeleteAgentIdentityRequest) => {
        await admin.deleteAgentIdentity(ctx, req.name);
        return {};
      }),
      removeInstance: adminCall("RemoveInstance", async (req: adminPb.RemoveInstanceRequest) => {
        await admin.removeInstance(ctx, req.name, req.instanceId);
        return {};
      }),
      addToken: adminCall("AddToken", async (req: adminPb.AddTokenRequest) =>
        create(adminPb.AddTokenResponseSchema, { token: await admin.addToken(ctx, req.type, req.agentIdentity, req.labels, req.token) }),
      ),
      listTokens: adminCall("ListTokens", async () => create(adminPb.ListTokensResponseSchema, { tokens: await admin.listTokens(ctx) })),
      deleteToken: adminCall("DeleteToken", async (req: adminPb.DeleteTokenRequest) => {
        await admin.deleteToken(ctx, req.id);
        return {};
      }),
      createLock: adminCall("CreateLock", async (req: adminPb.CreateLockRequest) =>
        create(adminPb.CreateLockResponseSchema, { lock: await admin.addLock(ctx, req.targetKind, req.target, req.reason, Number(req.ttlMs)) }),
      ),
      listLocks: adminCall("ListLocks", async () => create(adminPb.ListLocksResponseSchema, { locks: await admin.listLocks(ctx) })),
      deleteLock: adminCall("DeleteLock", async (req: adminPb.DeleteLockRequest) =>
        create(adminPb.DeleteLockResponseSchema, { removed: await admin.removeLocks(ctx, req.id) }),
      ),
      listNodes: adminCall("ListNodes", async () => create(adminPb.ListNodesResponseSchema, { nodes: await admin.listNodes(ctx) })),
      listAudit: adminCall("ListAudit", async (req: adminPb.ListAuditRequest) =>
        create(adminPb.ListAuditResponseSchema, { events: (await ctx.audit.list(Number(req.since), req.type, req.limit)).map(admin.auditToProto) }),
      ),
    });
  };
  return { router, hot };
}

function isIp(host: string): boolean {
  return /^\d{1,3}(\.\d{1,3}){3}$/.test(host) || host.includes(":");
}

/** What goes into the TLS certificate: every public address plus the loopback names. */
function serverNames(publicAddrs: string[]): { dnsNames: string[]; ipAddresses: string[] } {
  const hosts = new Set(["localhost", osHostname(), "127.0.0.1", "::1"]);
  for (const a of publicAddrs) hosts.add(splitHostPort(a, "--public-addr").host);
  hosts.delete("0.0.0.0");
  hosts.delete("::");
  const all = [...hosts];
  return { dnsNames: all.filter((h) => !isIp(h)), ipAddresses: all.filter(isIp) };
}

async function serverTls(cas: ClusterCas, clusterName: string, publicAddrs: string[], now: number) {
  const keys = generateP256();
  const certPem = await issueServerCertificate({
    caCertPem: cas.host.x509CertPem,
    caKey: cas.host.x509Key,
    publicKey: keys.publicKey,
    notBefore: new Date(now - 60_000),
    notAfter: new Date(now + TLS_CERT_TTL_MS),
    commonName: `${clusterName} auth`,
    ...serverNames(publicAddrs),
  });
  return { key: privateKeyToPem(keys.privateKey), cert: certPem + cas.host.x509CertPem };
}

async function writeAdmin(ctx: AuthContext, path: string, authAddr: string): Promise<void> {
  const now = ctx.now();
  const keys = generateP256();
  const certPem = await issueClientCertificate({
    caCertPem: ctx.cas.user.x509CertPem,
    caKey: ctx.cas.user.x509Key,
    publicKey: keys.publicKey,
    notBefore: new Date(now - 60_000),
    notAfter: new Date(now + ADMIN_CERT_TTL_MS),
    commonName: "admin",
    organization: ctx.clusterName,
    kind: "admin",
  });
  writeAdminIdentity(path, {
    version: 1,
    cluster_name: ctx.clusterName,
    auth_server: authAddr,
    cert_pem: certPem,
    key_pem: privateKeyToPem(keys.privateKey),
    ca_pem: ctx.cas.host.x509CertPem,
  });
}

/** A client-usable address for a listen address: 0.0.0.0 and :: become loopback. */
function dialable(host: string, port: number): string {
  const h = host === "0.0.0.0" || host === "" ? "127.0.0.1" : host === "::" ? "[::1]" : host.includes(":") ? `[${host}]` : host;
  return `${h}:${port}`;
}

/**
 * `clusterMetrics`: in a cluster worker, what /metrics serves on the TLS port (--single-port):
 * every worker's counts, which the primary collects.
 */
export async function startAuthService(cfg: AuthConfig, log: Logger = createLogger(process.stderr), clusterMetrics?: () => Promise<string>): Promise<AuthService> {
  ensureDir(cfg.dataDir, 0o700);
  const { host, port: wantPort } = splitHostPort(cfg.listen, "--listen");
  const backend: Backend = await openBackend(cfg.backend, cfg.dataDir);
  const now = () => Date.now();
  let server: Http2SecureServer | undefined;
  try {
    const cas = await loadOrCreateCas(backend, cfg.dataDir, cfg.clusterName, now());
    const auditLog = createLogger(process.stdout);
    const ctx: AuthContext = { backend, cas, clusterName: cfg.clusterName, publicAddrs: cfg.publicAddrs, now, audit: new Audit(backend, auditLog, now), log };
    const registry = new Registry();
    const metrics: AuthMetrics = {
      calls: registry.counter("mezite_auth_requests_total", "API calls by method and result"),
      duration: registry.histogram(
        "mezite_auth_request_duration_seconds",
        "time from a call reaching its handler to its reply, by method (TLS handshake not included)",
        [0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10],
      ),
    };
    let ready = false;
    const notReady = () => (ready ? undefined : "starting");
    const diag: DiagSource = clusterMetrics ? { notReady, metrics: clusterMetrics } : diagSource(registry, notReady);

    const tls = await serverTls(cas, cfg.clusterName, cfg.publicAddrs.length ? cfg.publicAddrs : [cfg.listen], now());
    const api = routes(ctx, new Revocations(ctx), metrics);
    const connectHandler = connectNodeAdapter({
      routes: api.router,
      readMaxBytes: MAX_REQUEST_BYTES,
      // Replies are never compressed: certificates and keys barely shrink, and gzip cost the
      // service ~0.25 ms per renewal (npm run bench). Compressed requests are still accepted.
      compressMinBytes: Number.MAX_SAFE_INTEGER,
      contextValues: (req) => createContextValues().set(peerKey, peerOf(req as Http2ServerRequest)),
      fallback: (req, res) => {
        const r = res as Http2ServerResponse;
        if (!handleDiag(diag, req, r)) r.writeHead(404).end();
      },
    });
    const handler = unaryGrpc(api.hot, MAX_REQUEST_BYTES, connectHandler);
    server = createSecureServer(
      {
        key: tls.key,
        cert: tls.cert,
        ca: [cas.user.x509CertPem, cas.host.x509CertPem],
        requestCert: true,
        rejectUnauthorized: false, // Join has no client certificate; each service checks its own
        minVersion: "TLSv1.3",
        // No resumable sessions: every daemon connects afresh with a new certificate (a resumed
        // session would carry the old one). OpenSSL then sends stateful tickets naming a session
        // cache that Node leaves off, instead of serialising the whole session into two
        // stateless tickets per handshake: ~25 % of the handshake's server CPU (npm run bench).
        secureOptions: constants.SSL_OP_NO_TICKET,
        allowHTTP1: cfg.singlePort,
        ALPNProtocols: cfg.singlePort ? ["h2", "http/1.1"] : ["h2"],
      },
      handler,
    );
    server.on("sessionError", () => {}); // a client that vanishes mid-handshake is not our error
    const sessions = new Set<ServerHttp2Session>();
    server.on("session", (s: ServerHttp2Session) => {
      sessions.add(s);
      s.once("close", () => sessions.delete(s));
    });
    const srv = server;
    await new Promise<void>((resolve, reject) => {
      srv.once("error", (e) => reject(new MeziteError("ERR_CONFIG", `cannot listen on ${cfg.listen}: ${(e as Error).message}`, { cause: e })));
      srv.listen(wantPort, host, resolve);
    });
    const port = (srv.address() as AddressInfo).port;
    const addr = dialable(host, port);
    if (cfg.publicAddrs.length === 0) ctx.publicAddrs = [host === "0.0.0.0" || host === "::" ? `${osHostname()}:${port}` : addr];
    await writeAdmin(ctx, join(cfg.dataDir, "admin.identity"), addr);
    const diagServer = cfg.diagAddr ? await startDiagServer(cfg.diagAddr, diag) : undefined;
    ready = true;
    return {
      port,
      addr,
      context: ctx,
      metricsState: () => registry.state(),
      stop: async () => {
        ready = false;
        await new Promise<void>((resolve) => {
          srv.close(() => resolve());
          // Clients keep idle HTTP/2 sessions open, which would hold close() open: a graceful
          // close (GOAWAY) ends each once its in-flight calls are answered; 2 s at most.
          for (const s of sessions) s.close();
          setTimeout(resolve, 2000).unref();
        });
        diagServer?.server.close();
        await backend.close();
      },
    };
  } catch (e) {
    server?.close();
    await backend.close();
    throw e;
  }
}

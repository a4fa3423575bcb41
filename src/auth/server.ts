/**
 * `mezd auth start`: the CAs, the gRPC API over TLS (HTTP/2), and the diagnostics endpoints.
 * One TLS port serves every service; which client certificate a call needs is declared per
 * service (SERVICE_CALLER) and checked before any handler runs: none for Join, a renewal
 * certificate for Renew, a node certificate for the node API, the admin certificate for the admin
 * API, each issued by its own CA.
 */
import { X509Certificate, constants } from "node:crypto";
import v8 from "node:v8";
import { constants as h2, createSecureServer, type Http2SecureServer, type Http2ServerRequest, type Http2ServerResponse, type ServerHttp2Session } from "node:http2";
import type { IncomingMessage, ServerResponse } from "node:http";
import type { TLSSocket } from "node:tls";
import type { AddressInfo } from "node:net";
import { hostname as osHostname } from "node:os";
import { join } from "node:path";
import { Code, ConnectError, createContextKey, createContextValues, type ConnectRouter, type HandlerContext, type Interceptor } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { create, type DescMessage, type DescService, type MessageShape } from "@bufbuild/protobuf";
import { briefPage, isJsonContentType } from "../api/brief-page.js";
import { AdminService } from "../api/gen/mezite/v1/admin_pb.js";
import { AgentService } from "../api/gen/mezite/v1/agent_pb.js";
import * as adminPb from "../api/gen/mezite/v1/admin_pb.js";
import {
  GetClusterNameResponseSchema,
  JoinRequestSchema,
  JoinResponseSchema,
  JoinService,
  type JoinNodeRequest,
  type JoinRequest,
  type JoinWithIdTokenRequest,
} from "../api/gen/mezite/v1/join_pb.js";
import {
  NodeService,
  RenewHostCertificateResponseSchema,
  type GetRevocationsRequest,
  type HeartbeatRequest,
  type RenewHostCertificateRequest,
  WatchNodeEventSchema,
  WatchNodeRequestSchema,
  type WatchNodeRequest,
} from "../api/gen/mezite/v1/node_pb.js";
import {
  GetCaStateResponseSchema, RenewRequestSchema, type GetCaStateRequest, RenewResponseSchema, RenewService, type RenewRequest,
  WatchCaStateEventSchema, WatchCaStateRequestSchema, type WatchCaStateRequest,
} from "../api/gen/mezite/v1/renew_pb.js";
import { ERROR_REF_HEADER, toConnectError } from "../api/errors.js";
import { unaryGrpc, type StreamRoute, type UnaryRoute } from "../api/grpc-unary.js";
import type { Backend } from "../backend/backend.js";
import { openBackend } from "../backend/open.js";
import { caPin, generateP256, issueServerCertificate, parseVerifiedCertificate, privateKeyToPem, validAt, type CertKind, type ParsedCert } from "../ca/x509.js";
import { DEFAULT_CONNECTION_CAPS, capConnections } from "../lib/connections.js";
import { diagSource, handleDiag, splitHostPort, startDiagServer, type DiagSource } from "../lib/diag.js";
import { MeziteError, isMeziteError } from "../lib/errors.js";
import { ensureDir } from "../lib/files.js";
import { createLogger, type Logger } from "../lib/log.js";
import { watchRuntime } from "../lib/runtime-metrics.js";
import { Registry, type MetricState } from "../lib/metrics.js";
import { AdminIdentityKeeper, checkAdminCert, revokeAdminCertificates } from "./admin-cert.js";
import { listAccessibleNodes } from "./agent-service.js";
import { certificateInfo } from "./certs.js";
import { releaseInstance } from "./release.js";
import { auditToProto } from "./admin/audit.js";
import * as caRotation from "./admin/ca-rotation.js";
import * as identities from "./admin/identities.js";
import * as locks from "./admin/locks.js";
import * as nodes from "./admin/nodes.js";
import * as roles from "./admin/roles.js";
import { Audit } from "./audit.js";
import { CA_KINDS, PHASES, caState, hostCaPins, openCaStore, trustedX509Pems, type CaKind, type CertAuthority, type ClusterCas } from "./cas.js";
import { resolveClusterName } from "./cluster.js";
import type { AdminCaller, AuthContext, Caller } from "./context.js";
import { joinAgent, joinWithIdToken } from "./join.js";
import * as joinMethods from "./join-methods.js";
import { callingNode, heartbeat, joinNode, renewNode } from "./nodes.js";
import { Revocations } from "./revocations.js";
import { renewAgent, staleInstanceRefusal } from "./renew.js";
import { CaWatcher, recordInstanceCaState, recordNodeCaState, daemonCaState } from "./rotation.js";
import * as tokens from "./tokens.js";
import { createSignIn } from "../web/sessions.js";
import { startWebServer, type WebServer } from "../web/server.js";
import { DEFAULT_WATCH_LIMITS, WatchHub, type WatchLimits } from "./watch.js";

type RequestHandler = (req: IncomingMessage | Http2ServerRequest, res: ServerResponse | Http2ServerResponse) => void;

export interface AuthConfig {
  /** CA cluster key, SQLite file and admin.identity. */
  dataDir: string;
  /** HOST:PORT for gRPC over TLS; port 0 picks a free one. */
  listen: string;
  /** Addresses clients use; put into the TLS certificate and join hints. Default: the listen address. */
  publicAddrs: string[];
  /** Given explicitly (--cluster-name); otherwise the backend's, or on a new cluster this host's name. */
  clusterName?: string | undefined;
  /** "sqlite", "memory" or a postgres:// URL. */
  backend: string;
  /** Serve plain HTTP/1.1 (health, metrics) on the TLS port too, chosen by ALPN. */
  singlePort: boolean;
  diagAddr?: string;
  /** Open connections at most (default 24,576); more are closed at once, or evict connections without a client certificate (connections.ts). */
  maxConnections?: number;
  /** Open connections from one source address (an IPv6 /64) at most (default 2,560); more are closed at once. */
  maxConnectionsPerSource?: number;
  /** Concurrent streams per connection at most (default 64), as an HTTP/2 setting. */
  maxStreams?: number;
  /** HOST:PORT for the dashboard over HTTPS (SPEC §18); none: no dashboard. */
  webAddr?: string;
  /** Change streams (watch.ts) at most, in all and per source address. */
  watchLimits?: WatchLimits;
}

/** Largest request accepted: every legitimate message is a few KiB. */
export const MAX_REQUEST_BYTES = 64 * 1024;
const TLS_CERT_TTL_MS = 365 * 24 * 3_600_000;

/**
 * The client certificate each service takes ("none": none needed, and any sent is ignored). Each
 * kind is accepted only from the CA that issues it (CERT_ISSUER), and only on its own service.
 */
const SERVICE_CALLER: Record<string, CertKind | "none"> = {
  [JoinService.typeName]: "none",
  [RenewService.typeName]: "renewal",
  [NodeService.typeName]: "node",
  [AdminService.typeName]: "admin",
  [AgentService.typeName]: "output",
};
const CERT_ISSUER: Record<CertKind, CaKind> = { admin: "user", renewal: "user", output: "user", node: "host", server: "host" };

/** What the TLS layer knows of a connection: the client certificate, and whether OpenSSL verified it against the trusted CAs. */
interface Peer {
  remoteAddr: string;
  x509: X509Certificate | undefined;
  authorized: boolean;
  /** The HTTP/2 session, which a change stream keeps open (watch.ts). */
  session?: ServerHttp2Session | undefined;
}
const peerKey = createContextKey<Peer>({ remoteAddr: "", x509: undefined, authorized: false });
const callerKey = createContextKey<Caller>({ remoteAddr: "", cert: undefined });

function peerOf(req: Http2ServerRequest): Peer {
  const socket = req.socket as TLSSocket;
  const remoteAddr = socket.remoteAddress ?? "";
  return { remoteAddr, x509: socket.getPeerX509Certificate(), authorized: socket.authorized, session: req.stream?.session as ServerHttp2Session | undefined };
}

/**
 * Whether a trusted key of `ca` issued the certificate, and it is valid now. OpenSSL has checked the
 * signature of an authorized one against every CA, so the issuer's name and key id tell which; any
 * other is checked here in full. The dates are checked on every call: OpenSSL checked them at the
 * handshake, and an HTTP/2 connection can outlive the certificate.
 */
function issuedBy(x509: X509Certificate, ca: CertAuthority, authorized: boolean, now: number): boolean {
  if (!validAt(x509, now)) return false;
  return ca.trusted.some((k) => x509.checkIssued(k.x509Cert) && (authorized || x509.verify(k.x509Cert.publicKey)));
}

function notAuthorized(accepts: CertKind): MeziteError {
  const what = accepts === "renewal" ? "the daemon's renewal certificate (output certificates cannot renew)" : `${accepts === "output" || accepts === "admin" ? "an" : "a"} ${accepts} certificate`;
  return new MeziteError("ERR_NOT_AUTHORIZED", `this call needs ${what}`);
}

/** The caller of a service, or ERR_NOT_AUTHORIZED when its certificate is not of the service's kind and CA. */
async function authenticate(ctx: AuthContext, peer: Peer, accepts: CertKind | "none"): Promise<Caller> {
  if (accepts === "none") return { remoteAddr: peer.remoteAddr, cert: undefined };
  if (!peer.x509) throw notAuthorized(accepts);
  // Not verified by OpenSSL: perhaps signed by a key another auth service brought in with a
  // rotation's phase a moment ago, which this one has not loaded yet.
  if (!peer.authorized) await ctx.refreshCas();
  if (!issuedBy(peer.x509, ctx.cas[CERT_ISSUER[accepts]], peer.authorized, ctx.now())) {
    throw (accepts === "renewal" && (await staleInstanceRefusal(ctx, peer.x509, peer.remoteAddr))) || notAuthorized(accepts);
  }
  let cert: ParsedCert;
  try {
    cert = parseVerifiedCertificate(peer.x509);
  } catch {
    throw notAuthorized(accepts);
  }
  if (cert.kind !== accepts) throw notAuthorized(accepts);
  if (accepts === "admin") await checkAdminCert(ctx, cert);
  return { remoteAddr: peer.remoteAddr, cert };
}

function adminCaller(caller: Caller): AdminCaller {
  const actor = `${caller.cert?.subjectCommonName ?? "?"} (serial ${caller.cert?.serial ?? "?"})`;
  return { ...caller, audit: { actor, remote_addr: caller.remoteAddr } };
}

export interface AuthService {
  port: number;
  addr: string;
  context: AuthContext;
  /** The cluster name this start chose (this host's name) and stored: the first start without --cluster-name. */
  namedAfterHost?: string;
  /** This process's metrics as data, for a cluster's primary to sum. */
  metricsState(): MetricState[];
  stop(): Promise<void>;
}

export interface AuthMetrics {
  calls: ReturnType<Registry["counter"]>;
  duration: ReturnType<Registry["histogram"]>;
}

function routes(ctx: AuthContext, revocations: Revocations, hub: WatchHub, metrics: AuthMetrics, adminIdentity: () => AdminIdentityKeeper | undefined, web: () => WebServer | undefined) {
  // Every handler goes through here: one place for metrics, logging and error mapping. Only an
  // admin hears an error's own message; anyone else gets its code and a sentence (errors.ts).
  const failed = (method: string, e: unknown, admin: boolean): ConnectError => {
    metrics.calls.inc({ method, result: isMeziteError(e) ? e.code : e instanceof ConnectError ? Code[e.code] : "internal" });
    const wire = toConnectError(e, admin ? "detailed" : "public");
    const ref = wire.metadata.get(ERROR_REF_HEADER);
    if (ref) ctx.log.error("request failed", { method, ref, error: (e as Error)?.stack ?? String(e) });
    return wire;
  };
  const timed = <R>(method: string, admin: boolean, run: () => Promise<R>): Promise<R> => {
    const start = performance.now();
    return run().then(
      (r) => (metrics.calls.inc({ method, result: "ok" }), r),
      (e: unknown) => {
        throw failed(method, e, admin);
      },
    ).finally(() => metrics.duration.observe((performance.now() - start) / 1000, { method }));
  };
  /** A unary handler of a service whose caller authenticate() has checked. */
  const unary = <Req, Res>(method: string, fn: (req: Req, caller: Caller) => Promise<Res>) => (req: Req, hc: HandlerContext) =>
    timed(method, SERVICE_CALLER[hc.service.typeName] === "admin", () => fn(req, hc.values.get(callerKey)));
  const admin = <Req, Res>(method: string, fn: (req: Req, by: AdminCaller) => Promise<Res>) => unary(method, (req: Req, caller) => fn(req, adminCaller(caller)));
  const adminStream = <Req, Res>(method: string, fn: (req: Req, hc: HandlerContext) => AsyncIterable<Res>) =>
    async function* (req: Req, hc: HandlerContext): AsyncGenerator<Res> {
      const start = performance.now();
      try {
        yield* fn(req, hc);
        metrics.calls.inc({ method, result: "ok" });
      } catch (e) {
        throw failed(method, e, true);
      } finally {
        metrics.duration.observe((performance.now() - start) / 1000, { method });
      }
    };

  /**
   * A change stream (watch.ts): `open` checks and records, then gives the stream; counted and its
   * errors mapped like a unary call's. What stays referenced for the stream's life is the
   * stream's own state alone, not the request, certificate or caller (a service holds thousands).
   */
  const watch = <Req, Res>(method: string, open: (req: Req, caller: Caller, peer: Peer, signal: AbortSignal) => Promise<AsyncIterable<Res>>) =>
    async (req: Req, caller: Caller, peer: Peer, signal: AbortSignal): Promise<AsyncIterable<Res>> => {
      let events: AsyncIterable<Res>;
      try {
        events = await open(req, caller, peer, signal);
      } catch (e) {
        throw failed(method, e, false);
      }
      return (async function* () {
        try {
          yield* events;
          metrics.calls.inc({ method, result: "ok" });
        } catch (e) {
          throw failed(method, e, false);
        }
      })();
    };

  /** Checks the caller for connect's calls: each service's kind, before its handler runs. */
  const authInterceptor: Interceptor = (next) => async (req) => {
    const accepts = SERVICE_CALLER[req.service.typeName] ?? "admin";
    try {
      req.contextValues.set(callerKey, await authenticate(ctx, req.contextValues.get(peerKey), accepts));
    } catch (e) {
      throw failed(req.method.name, e, false);
    }
    return next(req);
  };

  // Served by grpc-unary.ts as plain gRPC, and by connect in any other protocol or encoding.
  const join = (req: JoinRequest, caller: Caller) => timed("Join", false, () => joinAgent(ctx, req, caller));
  const renew = (req: RenewRequest, caller: Caller) => timed("Renew", false, () => renewAgent(ctx, req, caller));
  const fast = <I extends DescMessage, O extends DescMessage>(service: DescService, input: I, output: O, handle: (req: MessageShape<I>, caller: Caller) => Promise<MessageShape<O>>, method: string): [string, UnaryRoute] => [
    `/${service.typeName}/${method}`,
    {
      input,
      output,
      handle: async (req, http) => {
        let caller: Caller;
        try {
          caller = await authenticate(ctx, peerOf(http), SERVICE_CALLER[service.typeName]!);
        } catch (e) {
          throw failed(method, e, false);
        }
        return handle(req as MessageShape<I>, caller);
      },
    } as UnaryRoute,
  ];
  // The change streams: held by every agent, so their per-call state is kept to what they need.
  const watchDaemon = watch("WatchCaState", async (req: WatchCaStateRequest, caller, peer, signal) => {
    await recordInstanceCaState(ctx, caller.cert?.identityId ?? "", caller.cert?.instanceId ?? "", req.heldCaState);
    return hub.watchDaemon(caller, peer.session, signal);
  });
  const watchNode = watch("WatchRevocations", async (req: WatchNodeRequest, caller, peer, signal) => {
    await recordNodeCaState(ctx, await callingNode(ctx, caller), req.heldCaState, req.heldUserCaState);
    return hub.watchNode(caller, peer.session, req.krlVersion, signal);
  });
  const fastStream = <I extends DescMessage, O extends DescMessage>(service: DescService, input: I, output: O, method: string, open: (req: MessageShape<I>, caller: Caller, peer: Peer, signal: AbortSignal) => Promise<AsyncIterable<MessageShape<O>>>): [string, StreamRoute] => [
    `/${service.typeName}/${method}`,
    {
      stream: true,
      input,
      output,
      handle: async (req, http, signal) => {
        const peer = peerOf(http);
        let caller: Caller;
        try {
          caller = await authenticate(ctx, peer, SERVICE_CALLER[service.typeName]!);
        } catch (e) {
          throw failed(method, e, false);
        }
        return open(req as MessageShape<I>, caller, peer, signal);
      },
    } as StreamRoute,
  ];
  const hot = new Map<string, UnaryRoute | StreamRoute>([
    fast(JoinService, JoinRequestSchema, JoinResponseSchema, join, JoinService.method.join.name),
    fast(RenewService, RenewRequestSchema, RenewResponseSchema, renew, RenewService.method.renew.name),
    fastStream(RenewService, WatchCaStateRequestSchema, WatchCaStateEventSchema, RenewService.method.watch.name, (req, caller, peer, signal) => watchDaemon(req, caller, peer, signal)),
    fastStream(NodeService, WatchNodeRequestSchema, WatchNodeEventSchema, NodeService.method.watch.name, (req, caller, peer, signal) => watchNode(req, caller, peer, signal)),
  ]);

  const router = (router: ConnectRouter) => {
    router.service(JoinService, {
      join: (req, hc) => join(req, hc.values.get(callerKey)),
      joinNode: unary("JoinNode", (req: JoinNodeRequest, caller) => joinNode(ctx, req, caller)),
      joinWithIdToken: unary("JoinWithIdToken", (req: JoinWithIdTokenRequest, caller) => joinWithIdToken(ctx, req, caller)),
      getClusterName: unary("GetClusterName", async () => create(GetClusterNameResponseSchema, { clusterName: ctx.clusterName })),
    });
    router.service(RenewService, {
      renew: (req, hc) => renew(req, hc.values.get(callerKey)),
      getCaState: unary("GetCaState", async (req: GetCaStateRequest, caller) => {
        await recordInstanceCaState(ctx, caller.cert?.identityId ?? "", caller.cert?.instanceId ?? "", req.heldCaState);
        return create(GetCaStateResponseSchema, daemonCaState(ctx.cas));
      }),
      release: unary("Release", (_req, caller) => releaseInstance(ctx, caller, "renewal")),
      watch: async function* (req, hc) {
        yield* await watchDaemon(req, hc.values.get(callerKey), hc.values.get(peerKey), hc.signal);
      },
    });
    router.service(NodeService, {
      heartbeat: unary("Heartbeat", async (req: HeartbeatRequest, caller) => {
        await heartbeat(ctx, caller, req.address, Number(req.hostCertExpires));
        return {};
      }),
      renewHostCertificate: unary("RenewHostCertificate", async (req: RenewHostCertificateRequest, caller) =>
        create(RenewHostCertificateResponseSchema, { credentials: await renewNode(ctx, caller, req.hostPublicKey, req.tlsPublicKey) }),
      ),
      getRevocations: unary("GetRevocations", async (req: GetRevocationsRequest, caller) => {
        await recordNodeCaState(ctx, await callingNode(ctx, caller), req.heldCaState, req.heldUserCaState);
        return { ...(await revocations.reply(req.krlVersion)), userCaState: caState(ctx.cas, ["user"]) };
      }),
      watch: async function* (req, hc) {
        yield* await watchNode(req, hc.values.get(callerKey), hc.values.get(peerKey), hc.signal);
      },
    });
    router.service(AgentService, {
      listAccessibleNodes: unary("ListAccessibleNodes", (req, caller) => listAccessibleNodes(ctx, caller, req)),
      releaseInstance: unary("ReleaseInstance", (_req, caller) => releaseInstance(ctx, caller, "output")),
    });
    router.service(AdminService, {
      getClusterInfo: admin("GetClusterInfo", async () =>
        create(adminPb.GetClusterInfoResponseSchema, { clusterName: ctx.clusterName, publicAddrs: ctx.publicAddrs, caPin: caPin(ctx.cas.host.server.x509CertPem), caPins: hostCaPins(ctx.cas) }),
      ),
      createRole: admin("CreateRole", async (req: adminPb.CreateRoleRequest, by) => {
        if (!req.role) throw new MeziteError("ERR_USAGE", "invalid request: role missing");
        return create(adminPb.CreateRoleResponseSchema, await roles.createRole(ctx, by, req.role, req.force));
      }),
      listRoles: admin("ListRoles", async () => create(adminPb.ListRolesResponseSchema, { roles: await roles.listRoles(ctx) })),
      getRole: admin("GetRole", async (req: adminPb.GetRoleRequest) => create(adminPb.GetRoleResponseSchema, { role: await roles.getRole(ctx, req.name) })),
      deleteRole: admin("DeleteRole", async (req: adminPb.DeleteRoleRequest, by) => {
        await roles.deleteRole(ctx, by, req.name);
        return {};
      }),
      addAgentIdentity: admin("AddAgentIdentity", async (req: adminPb.AddAgentIdentityRequest, by) =>
        create(adminPb.AddAgentIdentityResponseSchema, await identities.addAgentIdentity(ctx, by, req.name, req.roles, req.token)),
      ),
      listAgentIdentities: adminStream("ListAgentIdentities", async function* (req: adminPb.ListAgentIdentitiesRequest, hc) {
        const json = isJsonContentType(hc.requestHeader.get("content-type"));
        if (req.brief) for await (const page of identities.listBriefStatuses(ctx, req)) yield briefPage(page, json);
        else for await (const page of identities.listAgentIdentities(ctx, req)) yield create(adminPb.ListAgentIdentitiesResponseSchema, { identities: page });
      }),
      getAgentIdentity: admin("GetAgentIdentity", async (req: adminPb.GetAgentIdentityRequest) =>
        create(adminPb.GetAgentIdentityResponseSchema, { identity: await identities.getAgentIdentity(ctx, req.name) }),
      ),
      deleteAgentIdentity: admin("DeleteAgentIdentity", async (req: adminPb.DeleteAgentIdentityRequest, by) => {
        await identities.deleteAgentIdentity(ctx, by, req.name);
        return {};
      }),
      removeInstance: admin("RemoveInstance", async (req: adminPb.RemoveInstanceRequest, by) => {
        await identities.removeInstance(ctx, by, req.name, req.instanceId);
        return {};
      }),
      addToken: admin("AddToken", async (req: adminPb.AddTokenRequest, by) => {
        if (req.type === "node") return create(adminPb.AddTokenResponseSchema, { token: await nodes.addNodeToken(ctx, by, req.labels, req.replaces, req.token) });
        if (req.type !== "agent_identity") throw new MeziteError("ERR_USAGE", `unknown token type "${req.type.slice(0, 40)}": use node or agent_identity`);
        return create(adminPb.AddTokenResponseSchema, { token: await identities.addIdentityToken(ctx, by, req.agentIdentity, req.token) });
      }),
      listTokens: admin("ListTokens", async () => create(adminPb.ListTokensResponseSchema, { tokens: await tokens.listTokens(ctx) })),
      deleteToken: admin("DeleteToken", async (req: adminPb.DeleteTokenRequest, by) => {
        await tokens.deleteToken(ctx, req.id, by.audit.actor);
        return {};
      }),
      createLock: admin("CreateLock", async (req: adminPb.CreateLockRequest, by) =>
        create(adminPb.CreateLockResponseSchema, { lock: await locks.addLock(ctx, by, req.targetKind, req.target, req.reason, Number(req.ttlMs)) }),
      ),
      listLocks: admin("ListLocks", async () => create(adminPb.ListLocksResponseSchema, { locks: await locks.listLocks(ctx) })),
      deleteLock: admin("DeleteLock", async (req: adminPb.DeleteLockRequest, by) =>
        create(adminPb.DeleteLockResponseSchema, { removed: await locks.removeLocks(ctx, by, req.id) }),
      ),
      createJoinToken: admin("CreateJoinToken", async (req: adminPb.CreateJoinTokenRequest, by) =>
        create(adminPb.CreateJoinTokenResponseSchema, await joinMethods.createJoinToken(ctx, by, req.documentJson, req.force)),
      ),
      listJoinTokens: admin("ListJoinTokens", async () => create(adminPb.ListJoinTokensResponseSchema, { joinTokens: await joinMethods.listJoinTokens(ctx) })),
      deleteJoinToken: admin("DeleteJoinToken", async (req: adminPb.DeleteJoinTokenRequest, by) => {
        await joinMethods.deleteJoinToken(ctx, by, req.name);
        return {};
      }),
      listNodes: admin("ListNodes", async (req: adminPb.ListNodesRequest) => create(adminPb.ListNodesResponseSchema, await nodes.listNodes(ctx, req))),
      deleteNode: admin("DeleteNode", async (req: adminPb.DeleteNodeRequest, by) => {
        await nodes.removeNode(ctx, by, req.name);
        return {};
      }),
      listAudit: adminStream("ListAudit", async function* (req: adminPb.ListAuditRequest) {
        if (req.limit > MAX_AUDIT_LIMIT) throw new MeziteError("ERR_USAGE", `--limit ${req.limit} is too large: at most ${MAX_AUDIT_LIMIT} (or 0 for every event, streamed)`);
        for await (const page of ctx.audit.list(Number(req.since), req.type, req.limit)) yield create(adminPb.ListAuditResponseSchema, { events: page.map(auditToProto) });
      }),
      revokeAdminCertificates: admin("RevokeAdminCertificates", async (_req: adminPb.RevokeAdminCertificatesRequest, by) => {
        const before = await revokeAdminCertificates(ctx, by);
        await adminIdentity()?.refresh();
        return create(adminPb.RevokeAdminCertificatesResponseSchema, { revokedBefore: BigInt(before) });
      }),
      getCaStatus: admin("GetCaStatus", async () => create(adminPb.GetCaStatusResponseSchema, { cas: await caRotation.getCaStatus(ctx) })),
      rotateCa: admin("RotateCa", async (req: adminPb.RotateCaRequest, by) => create(adminPb.RotateCaResponseSchema, { cas: await caRotation.rotateCa(ctx, by, req) })),
      getCertificate: admin("GetCertificate", async (req: adminPb.GetCertificateRequest) => create(adminPb.GetCertificateResponseSchema, { certificate: await certificateInfo(ctx, req.serial) })),
      createDashboardSignIn: admin("CreateDashboardSignIn", async (req: adminPb.CreateDashboardSignInRequest, by) => {
        const w = web();
        if (!w) throw new MeziteError("ERR_USAGE", "this auth service serves no dashboard: start it with --web-addr=HOST:PORT");
        return create(adminPb.CreateDashboardSignInResponseSchema, { webUrl: w.url, expires: BigInt(await createSignIn(ctx, by, req.secretHash)) });
      }),
    });
  };
  return { router, hot, authInterceptor };
}

/** `audit ls --limit`: the newest N are kept in memory while the range is read. */
const MAX_AUDIT_LIMIT = 100_000;

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
    caCertPem: cas.host.server.x509CertPem,
    caKey: cas.host.server.x509Key,
    publicKey: keys.publicKey,
    notBefore: new Date(now - 60_000),
    notAfter: new Date(now + TLS_CERT_TTL_MS),
    commonName: `${clusterName} auth`,
    ...serverNames(publicAddrs),
  });
  // Clients verify the chain to any trusted Host CA key; client certificates of every kind are
  // verified against every trusted key of both CAs, and authenticate() then checks which.
  return { key: privateKeyToPem(keys.privateKey), cert: certPem + cas.host.server.x509CertPem, ca: [...trustedX509Pems(cas.user), ...trustedX509Pems(cas.host)] };
}

const SECURE_OPTIONS = {
  minVersion: "TLSv1.3",
  // No resumable sessions: every daemon connects afresh with a new certificate (a resumed
  // session would carry the old one). OpenSSL then sends stateful tickets naming a session
  // cache that Node leaves off, instead of serialising the whole session into two
  // stateless tickets per handshake: ~25 % of the handshake's server CPU (npm run bench).
  secureOptions: constants.SSL_OP_NO_TICKET,
} as const;

/** How long a TLS handshake, a request's body, or a connection with nothing to say may take. */
export const REQUEST_DEADLINE_MS = 10_000;
const DEFAULT_MAX_STREAMS = 64;

/**
 * Resets a request whose body has not ended within REQUEST_DEADLINE_MS of its headers: a client
 * trickling half a request cannot hold a stream (and its buffers) open.
 */
function withRequestDeadline(handler: RequestHandler): RequestHandler {
  return (req, res) => {
    if (!req.readableEnded) {
      const timer = setTimeout(() => {
        if ("stream" in req) req.stream.close(h2.NGHTTP2_CANCEL);
        else req.socket.destroy();
      }, REQUEST_DEADLINE_MS);
      timer.unref();
      const done = () => clearTimeout(timer);
      req.once("end", done);
      req.once("close", done);
    }
    handler(req, res);
  };
}

/** A client-usable address for a listen address: 0.0.0.0 and :: become loopback. */
function dialable(host: string, port: number): string {
  const h = host === "0.0.0.0" || host === "" ? "127.0.0.1" : host === "::" ? "[::1]" : host.includes(":") ? `[${host}]` : host;
  return `${h}:${port}`;
}

/**
 * Each connection (a change stream's above all) holds ~17 KiB of long-lived JS objects, so with
 * 11,000 agents the heap is ~190 MB that every major GC marks: 100-200 ms of the main thread,
 * the renewals arriving meanwhile waiting. By default V8 lets the heap grow only ~10 % past what
 * a major GC kept before the next one, which renewals' garbage reaches within seconds at a high
 * rate: renewal p99 97-138 ms in 15 s windows holding a major GC, 21-24 ms in those without
 * (bench/fleet.ts, 74 renewals/s). Letting the heap double first makes them several times rarer
 * (none in 45 s at that rate), for at most that much more heap.
 */
function growHeapForConnections(): void {
  v8.setFlagsFromString(`--heap-growing-percent=${HEAP_GROWING_PERCENT}`);
}
const HEAP_GROWING_PERCENT = 100;

/**
 * `clusterMetrics`: in a cluster worker, what /metrics serves on the TLS port (--single-port):
 * every worker's counts, which the primary collects.
 */
export async function startAuthService(cfg: AuthConfig, log: Logger = createLogger(process.stderr), clusterMetrics?: () => Promise<string>): Promise<AuthService> {
  growHeapForConnections();
  ensureDir(cfg.dataDir, 0o700, { what: `--data-dir ${cfg.dataDir}` });
  const { host, port: wantPort } = splitHostPort(cfg.listen, "--listen");
  const registry = new Registry();
  const backend: Backend = await openBackend(cfg.backend, cfg.dataDir, {
    queries: registry.counter("mezite_backend_queries_total", "statements sent to PostgreSQL, one round trip each, by statement (none with SQLite)"),
  });
  const now = () => Date.now();
  let server: Http2SecureServer | undefined;
  try {
    let namedAfterHost: string | undefined;
    const clusterName = await resolveClusterName(backend, cfg.clusterName, (n) => (namedAfterHost = n));
    const { store: caStore, cas } = await openCaStore(backend, cfg.dataDir, clusterName, now());
    const auditLog = createLogger(process.stdout);
    let watcher: CaWatcher | undefined;
    const ctx: AuthContext = {
      backend, cas, caStore, refreshCas: (at) => watcher?.refresh(at) ?? Promise.resolve(),
      clusterName, publicAddrs: cfg.publicAddrs, now, audit: new Audit(backend, auditLog, now), log,
    };
    const metrics: AuthMetrics = {
      calls: registry.counter("mezite_auth_requests_total", "API calls by method and result"),
      duration: registry.histogram(
        "mezite_auth_request_duration_seconds",
        "time from a call reaching its handler to its reply, by method (TLS handshake not included)",
        [0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10],
      ),
    };
    registry.gauge("mezite_ca_rotation_phase", "1 for the rotation phase each CA is in, 0 for the others", () =>
      CA_KINDS.flatMap((ca) => PHASES.map((phase) => ({ labels: { ca, phase }, value: ctx.cas[ca].phase === phase ? 1 : 0 }))),
    );
    let ready = false;
    const notReady = () => (ready ? undefined : "starting");
    const diag: DiagSource = clusterMetrics ? { notReady, metrics: clusterMetrics } : diagSource(registry, notReady);

    const tlsNames = [...(cfg.publicAddrs.length ? cfg.publicAddrs : [cfg.listen]), ...(cfg.webAddr ? [cfg.webAddr] : [])];
    const tls = await serverTls(cas, clusterName, tlsNames, now());
    let keeper: AdminIdentityKeeper | undefined;
    let web: WebServer | undefined;
    const revocations = new Revocations(ctx);
    const hub = new WatchHub(ctx, revocations, log, cfg.watchLimits ?? DEFAULT_WATCH_LIMITS, REQUEST_DEADLINE_MS);
    const api = routes(ctx, revocations, hub, metrics, () => keeper, () => web);
    const connectHandler = connectNodeAdapter({
      routes: api.router,
      interceptors: [api.authInterceptor],
      readMaxBytes: MAX_REQUEST_BYTES,
      // Replies are never compressed: certificates and keys barely shrink, and gzip cost the
      // service ~0.25 ms per renewal (npm run bench). Compressed requests are still accepted.
      compressMinBytes: Number.MAX_SAFE_INTEGER,
      contextValues: (req) => createContextValues().set(peerKey, peerOf(req as Http2ServerRequest)),
      fallback: (req, res) => {
        const r = res as Http2ServerResponse;
        // Health and metrics (they name identities' calls) are for anyone only with --single-port,
        // which asks for them on this port; otherwise only for a caller with a cluster certificate.
        const open = cfg.singlePort || (req.socket as TLSSocket).authorized;
        if (!open || !handleDiag(diag, req, r)) r.writeHead(404).end();
      },
    });
    const handler = withRequestDeadline(unaryGrpc(api.hot, MAX_REQUEST_BYTES, connectHandler));
    server = createSecureServer(
      {
        // Slow and hostile clients (SPEC §13): a TLS handshake, a request's body, and a silent
        // connection each get REQUEST_DEADLINE_MS; connections and streams are capped.
        handshakeTimeout: REQUEST_DEADLINE_MS,
        settings: { maxConcurrentStreams: cfg.maxStreams ?? DEFAULT_MAX_STREAMS },
        ...tls,
        requestCert: true,
        rejectUnauthorized: false, // Join has no client certificate; each service checks its own
        ...SECURE_OPTIONS,
        allowHTTP1: cfg.singlePort,
        ALPNProtocols: cfg.singlePort ? ["h2", "http/1.1"] : ["h2"],
      },
      handler,
    );
    server.on("sessionError", () => {}); // a client that vanishes mid-handshake is not our error
    const refusedConnections = registry.counter("mezite_auth_connections_refused_total", "connections closed at once because their source address held --max-connections-per-source");
    const evictedConnections = registry.counter("mezite_auth_connections_evicted_total", "connections without a verified client certificate closed to make room for a new one (the service was full)");
    const connections = capConnections(
      server,
      { max: cfg.maxConnections ?? DEFAULT_CONNECTION_CAPS.max, perSource: cfg.maxConnectionsPerSource ?? DEFAULT_CONNECTION_CAPS.perSource },
      { refused: () => refusedConnections.inc(), evicted: () => evictedConnections.inc() },
    );
    registry.gauge("mezite_auth_connections", "open connections, with and without a client certificate the TLS layer verified (see --max-connections)", () => {
      const { open, unproven } = connections();
      return [
        { labels: { verified: "true" }, value: open - unproven },
        { labels: { verified: "false" }, value: unproven },
      ];
    }, { perWorker: true });
    // A session with no frames for this long is closed (with no 'timeout' listener, Node destroys it).
    server.setTimeout(REQUEST_DEADLINE_MS);
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
    keeper = new AdminIdentityKeeper(ctx, join(cfg.dataDir, "admin.identity"), addr);
    await keeper.start();
    // A CA phase change: new connections get a server certificate of the signing Host CA key and
    // are verified against every trusted key; admin.identity follows.
    watcher = new CaWatcher(ctx, async (fresh) => {
      const fresher = await serverTls(fresh, clusterName, tlsNames, now());
      srv.setSecureContext({ ...fresher, ...SECURE_OPTIONS });
      web?.setTls(fresher);
      await keeper?.refresh(true);
      hub.casChanged();
    }, log);
    watcher.start();
    hub.start();
    const diagServer = cfg.diagAddr ? await startDiagServer(cfg.diagAddr, diag) : undefined;
    web = cfg.webAddr ? await startWebServer(ctx, cfg.webAddr, tls) : undefined;
    const stopRuntimeMetrics = watchRuntime(registry);
    ready = true;
    return {
      port,
      addr,
      context: ctx,
      ...(namedAfterHost !== undefined ? { namedAfterHost } : {}),
      metricsState: () => registry.state(),
      stop: async () => {
        ready = false;
        stopRuntimeMetrics();
        keeper?.stop();
        watcher?.stop();
        hub.stop();
        await new Promise<void>((resolve) => {
          srv.close(() => resolve());
          // Clients keep idle HTTP/2 sessions open, which would hold close() open: a graceful
          // close (GOAWAY) ends each once its in-flight calls are answered; 2 s at most.
          for (const s of sessions) s.close();
          setTimeout(resolve, 2000).unref();
        });
        diagServer?.server.close();
        await web?.stop();
        await ctx.audit.flushTallies();
        await backend.close();
      },
    };
  } catch (e) {
    server?.close();
    await backend.close();
    throw e;
  }
}

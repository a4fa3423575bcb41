/**
 * gRPC clients over TLS for every program that talks to the auth service. The one place that
 * knows how addresses, client certificates and server verification are wired.
 */
import { Code, ConnectError, createClient, type Client, type Transport } from "@connectrpc/connect";
import { Http2SessionManager, createGrpcTransport } from "@connectrpc/connect-node";
import type { DescService } from "@bufbuild/protobuf";
import { X509Certificate } from "node:crypto";
import type { ClientHttp2Session, SecureClientSessionOptions } from "node:http2";
import { isIP } from "node:net";
import { connect as tlsConnect, type TLSSocket } from "node:tls";
import { serverCertificateProblem, splitCertificateBundle } from "../ca/x509.js";

export interface ClientTls {
  /** Client certificate and key (PEM) for mTLS; absent for Join. */
  certPem?: string;
  keyPem?: string;
  /** The CA bundle one of which must have signed the server's certificate; absent = not verified (Join only). */
  caPem?: string;
}

/** Bounds every call, so a dead server is an error rather than a hang. */
export const DEFAULT_CALL_TIMEOUT_MS = 15_000;

export function normalizeAddr(addr: string): string {
  const a = addr.replace(/^https?:\/\//, "").replace(/\/+$/, "");
  return /:\d+$/.test(a) ? a : `${a}:3025`;
}

/**
 * HTTP/2 PINGs while a call is open, for a change stream that is quiet for minutes (SPEC §20): a
 * PING unanswered within the timeout closes the connection, so the stream fails and is replaced.
 */
export interface Keepalive {
  pingIntervalMs: number;
  pingTimeoutMs: number;
}

export function connect<T extends DescService>(service: T, addr: string, tls: ClientTls, keepalive?: Keepalive): Client<T> {
  return createClient(service, connectTransport(addr, tls, keepalive));
}

/** The transport under connect()'s clients, for a call read another way (brief-page.ts readBriefPages). */
export function connectTransport(addr: string, tls: ClientTls, keepalive?: Keepalive): Transport {
  const baseUrl = `https://${normalizeAddr(addr)}`;
  const nodeOptions: SecureClientSessionOptions = {
    ...(tls.certPem !== undefined ? { cert: tls.certPem } : {}),
    ...(tls.keyPem !== undefined ? { key: tls.keyPem } : {}),
    minVersion: "TLSv1.3",
    createConnection: tls.caPem !== undefined ? verifiedConnection(tls.caPem) : dialAuth,
  };
  return createGrpcTransport({
    baseUrl,
    defaultTimeoutMs: DEFAULT_CALL_TIMEOUT_MS,
    // Daemons make a new client per renewal: let each connection go soon after its call.
    sessionManager: guardedSessionManager(new Http2SessionManager(baseUrl, { idleConnectionTimeoutMs: 5_000, ...keepalive }, nodeOptions)),
    nodeOptions,
  });
}

/** The host of an https URL, without an IPv6 address's brackets. */
const hostOf = (authority: URL): string => authority.hostname.replace(/^\[|\]$/g, "");

/**
 * A TLS connection to the auth service at `authority`, as every client opens one: HTTP/2 by ALPN,
 * SNI for a name (none for an IP), and no CA given to OpenSSL (verifiedConnection says why): the
 * caller verifies the server's certificate, or knowingly does not (Join, --ca-pin's probe).
 */
export function dialAuth(authority: URL, options: SecureClientSessionOptions = {}): TLSSocket {
  const host = hostOf(authority);
  return tlsConnect({ ...options, host, port: Number(authority.port) || 443, servername: isIP(host) ? "" : host, ALPNProtocols: ["h2"], ca: [], rejectUnauthorized: false });
}

/**
 * The TLS connections of a client that trusts the CA bundle `caPem` and nothing else; HTTP/2
 * starts on one only after its server's certificate passed serverCertificateProblem.
 *
 * Why not Node's `ca` option: the first time a process gives a TLS context a CA, Node 20 parses its
 * ~140 bundled public root certificates (~20 ms; it compares the context's store with the root
 * store, creating that). In a one-shot renewal that was 20 ms of ~110. Mezite's clients trust no
 * public root. So OpenSSL gets no trust anchor; its verdict (always "no issuer") is set aside;
 * and the certificate is checked where Node checks it, before 'secureConnect' is emitted. On a
 * failure the socket is destroyed with the reason, as Node does, and nothing more is sent: no
 * HTTP/2 preface, no request. Destroying it in a 'secureConnect' listener instead would be too
 * late: http2 sets up its session in its own listener and aborts the process on a destroyed
 * socket.
 */
function verifiedConnection(caPem: string): (authority: URL, options: SecureClientSessionOptions) => TLSSocket {
  let cas: X509Certificate[] | undefined;
  // A throw here would be thrown from inside the handshake's callback: it is a problem instead.
  const serverProblem = (socket: TLSSocket, host: string): string | undefined => {
    try {
      cas ??= splitCertificateBundle(caPem).map((pem) => new X509Certificate(pem));
      const leaf = socket.getPeerX509Certificate();
      return leaf ? serverCertificateProblem(leaf, cas, host) : "is missing";
    } catch (e) {
      return `cannot be checked: ${(e as Error).message}`;
    }
  };
  return (authority, options) => {
    const host = hostOf(authority);
    const socket = dialAuth(authority, options);
    const emit = socket.emit;
    socket.emit = function (this: TLSSocket, event: string | symbol, ...args: unknown[]): boolean {
      if (event === "secureConnect") {
        const problem = serverProblem(this, host);
        if (problem) {
          this.destroy(new Error(`the auth service's TLS certificate ${problem}`));
          return false;
        }
      }
      return Reflect.apply(emit, this, [event, ...args]) as boolean;
    };
    return socket;
  };
}

const ignoreLateError = () => {};

interface ConnectingState {
  t: string;
  conn?: Promise<ClientHttp2Session>;
}

/**
 * connect-node 2.1.2 hangs a call for good, deadline included, when the HTTP/2 session is already
 * destroyed or closed as its 'connect' event is handled (a server that hangs up as the TLS
 * handshake completes, e.g. its handshake timeout firing on a loaded machine): entering "ready"
 * throws inside a promise callback, the state stays "connecting" on a resolved promise, and
 * gotoReady() awaits that promise again and again. Those awaits are microtasks, so no timer (the
 * call's deadline) and no I/O ever runs again: the process spins silently until killed. Here such
 * a session fails the connection attempt instead: the call fails as Unavailable, and the next one
 * connects afresh. (The state machine is private to connect-node: this wraps its setState.)
 *
 * It also leaves an error listener on every session. On a GOAWAY to an idle connection
 * connect-node destroys the session with an error that Node emits only once the socket has
 * closed; if connect-node let go of the session before that (a new call replaced it, or its
 * idle timer fired: ~300 ms apart on a loaded machine), that error had no listener and ended the
 * process, e.g. a daemon whose auth service restarted. The calls on it have already ended; the
 * error is of use to no one.
 */
export function guardedSessionManager(m: Http2SessionManager): Http2SessionManager {
  const inner = m as unknown as { setState?: (s: ConnectingState) => void };
  if (typeof inner.setState !== "function") return m;
  const setState = inner.setState.bind(m);
  inner.setState = (s) =>
    setState(
      s.t === "connecting" && s.conn
        ? {
            ...s,
            conn: s.conn.then((session) => {
              if (session.destroyed || session.closed) throw new ConnectError("the connection closed as it opened", Code.Unavailable);
              session.on("error", ignoreLateError);
              return session;
            }),
          }
        : s,
    );
  return m;
}

/**
 * `--ssh-agent-socket` (SPEC §16): the current SSH key and certificate served over the SSH agent
 * protocol on a Unix socket, so a login never reads a key file and a certificate file that a
 * renewal replaced between its two reads. Lists identities and signs; refuses everything else.
 *
 * The socket is 0600 in a directory only we can enter (created 0700; an existing one must be
 * ours and closed to others). A socket file left by a crashed daemon is replaced; anything else
 * at that path (a regular file, a symlink, a live agent) is refused with a clear error.
 */
import type { KeyObject } from "node:crypto";
import { chmodSync, lstatSync, mkdirSync, unlinkSync } from "node:fs";
import { createConnection, createServer, type Server, type Socket } from "node:net";
import { dirname } from "node:path";
import {
  AgentFrameReader, FAILURE_REPLY, ed25519SignatureBlob, encodeIdentitiesAnswer, encodeSignResponse, parseAgentRequest, type AgentIdentity,
} from "../ca/sshagent.js";
import { parseSshCertificate } from "../ca/sshcert.js";
import { sshPublicKeyBlob } from "../ca/sshkey.js";
import { MeziteError } from "../lib/errors.js";
import type { Logger } from "../lib/log.js";
import type { Counter } from "../lib/metrics.js";

interface Held {
  key: KeyObject;
  keyBlob: Buffer;
  certBlob: Buffer;
  /** When the certificate expires (unix ms). */
  expires: number;
  principals: string[];
  comment: string;
}

/** How long the pair a renewal replaced may still sign (SPEC §16): an ssh that listed it just before the swap. */
export const REPLACED_PAIR_GRACE_MS = 2 * 60_000;

/**
 * The key and certificate the agent serves. A renewal replaces both in one assignment, so no
 * request ever sees the new key with the old certificate. The pair it replaces may still sign
 * (never listed) for REPLACED_PAIR_GRACE_MS or until its certificate expires, whichever is
 * first: a client that listed the old certificate a moment before the swap may still ask for a
 * signature with it. Not when the new certificate lost a principal the old one had (the old one
 * would still log in where this identity no longer may), and not after `revoke`.
 */
export class AgentKeyring {
  private current: Held | undefined;
  private previous: Held | undefined;
  /** Until when `previous` may sign (unix ms). */
  private previousUntil = 0;

  constructor(private readonly now: () => number = Date.now) {}

  /** `certLine` is the authorized-keys form of the certificate for `key`. */
  set(key: KeyObject, certLine: string, name: string): void {
    const cert = parseSshCertificate(certLine);
    const held: Held = {
      key,
      keyBlob: sshPublicKeyBlob(key),
      certBlob: cert.blob,
      expires: Number(cert.validBefore) * 1000,
      principals: cert.principals,
      comment: `mezite agent-identity/${name}`,
    };
    const old = this.current;
    const shrank = old !== undefined && old.principals.some((p) => !held.principals.includes(p));
    this.previous = shrank ? undefined : old;
    this.previousUntil = old ? Math.min(old.expires, this.now() + REPLACED_PAIR_GRACE_MS) : 0;
    this.current = held;
  }

  /**
   * The service refused a renewal because the identity or instance is locked or deleted: nothing
   * held may list or sign any more, the pair a renewal replaced included.
   */
  revoke(): void {
    this.current = undefined;
    this.previous = undefined;
  }

  get empty(): boolean {
    return this.current === undefined;
  }

  /** The certificate first (what sshd accepts), then the bare key for clients that want it. */
  identities(): AgentIdentity[] {
    const c = this.current;
    if (!c) return [];
    return [
      { blob: c.certBlob, comment: `${c.comment} (certificate)` },
      { blob: c.keyBlob, comment: c.comment },
    ];
  }

  /** The private key behind a listed blob (certificate or bare key), or undefined. */
  keyFor(blob: Buffer): KeyObject | undefined {
    const c = this.current;
    if (c && (c.certBlob.equals(blob) || c.keyBlob.equals(blob))) return c.key;
    const p = this.previous;
    if (p && this.now() < this.previousUntil && (p.certBlob.equals(blob) || p.keyBlob.equals(blob))) return p.key;
    return undefined;
  }
}

export interface AgentServerOptions {
  path: string;
  keyring: AgentKeyring;
  /** mezite_identity_agent_requests_total, by result: listed, signed, refused. */
  requests: Counter;
  log: Logger;
}

export interface AgentServer {
  close(): Promise<void>;
}

/**
 * At most this many clients at once; each login holds one connection for a moment. With the two
 * bounds below, a connection holds at most about half a MiB however it behaves.
 */
const MAX_CONNECTIONS = 128;
/**
 * Replies a client has not read, in bytes, past which we read nothing more from it until they
 * drain. Received requests wait unparsed meanwhile, at most a frame and one read (AgentFrameReader).
 */
const MAX_UNSENT_REPLIES = 64 * 1024;
/** A client silent this long is dropped (ssh keeps its connection only for the authentication). */
const IDLE_MS = 5 * 60_000;

export async function startAgentServer(opts: AgentServerOptions): Promise<AgentServer> {
  const { path, keyring, requests, log } = opts;
  preparePrivateDir(dirname(path));
  await clearStaleSocket(path);
  const open = new Set<Socket>();
  const server = createServer({ allowHalfOpen: false }, (sock) => {
    open.add(sock);
    sock.once("close", () => open.delete(sock));
    serve(sock, keyring, requests, log);
  });
  server.maxConnections = MAX_CONNECTIONS;
  await listen(server, path);
  const ino = lstatSync(path).ino;
  log.info("ssh agent listening", { socket: path });
  return {
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        // close() waits for every connection to end: a client holding one must not hold up a stop.
        for (const sock of open) sock.destroy();
        // Only our own socket: another daemon may have taken the path over meanwhile.
        try {
          if (lstatSync(path).ino === ino) unlinkSync(path);
        } catch {
          /* already gone */
        }
      }),
  };
}

function serve(sock: Socket, keyring: AgentKeyring, requests: Counter, log: Logger): void {
  const frames = new AgentFrameReader();
  let throttled = false;
  const drop = (e: unknown) => {
    // A length over the cap (no way to find the next frame) or input past its bound: drop the connection.
    requests.inc({ result: "refused" });
    log.warn("ssh agent: closing a connection", { reason: (e as Error).message });
    sock.destroy();
  };
  /** Answers the whole requests received, in order, until the client's unread replies reach the cap. */
  const answerReceived = (): void => {
    while (!sock.destroyed) {
      if (sock.writableLength > MAX_UNSENT_REPLIES) {
        // A client that sends requests without reading the replies is not buffered for: nothing
        // more is read from it (or answered) until it has read them.
        throttled = true;
        sock.pause();
        sock.once("drain", () => {
          throttled = false;
          answerReceived();
          if (!throttled) sock.resume();
        });
        return;
      }
      let body: Buffer | undefined;
      try {
        body = frames.next();
      } catch (e) {
        drop(e);
        return;
      }
      if (body === undefined) return;
      sock.write(answer(body, keyring, requests));
    }
  };
  sock.setTimeout(IDLE_MS, () => sock.destroy());
  sock.on("error", () => sock.destroy());
  sock.on("data", (chunk: Buffer) => {
    try {
      frames.append(chunk);
    } catch (e) {
      drop(e);
      return;
    }
    if (!throttled) answerReceived();
  });
}

/** One reply per request, synchronously: a renewal cannot land between a lookup and its signature. */
function answer(body: Buffer, keyring: AgentKeyring, requests: Counter): Buffer {
  let req;
  try {
    req = parseAgentRequest(body);
  } catch {
    requests.inc({ result: "refused" });
    return FAILURE_REPLY;
  }
  if (req.kind === "list") {
    requests.inc({ result: "listed" });
    return encodeIdentitiesAnswer(keyring.identities());
  }
  if (req.kind === "sign") {
    const key = keyring.keyFor(req.keyBlob);
    if (key) {
      // Ed25519 has one signature form: the RSA hash flags do not apply and are ignored.
      requests.inc({ result: "signed" });
      return encodeSignResponse(ed25519SignatureBlob(key, req.data));
    }
  }
  requests.inc({ result: "refused" });
  return FAILURE_REPLY;
}

const usage = (msg: string) => new MeziteError("ERR_USAGE", msg);

/** The socket's directory: created 0700, or an existing one that is ours and closed to others. */
function preparePrivateDir(dir: string): void {
  let st;
  try {
    st = lstatSync(dir);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== "ENOENT") throw usage(`--ssh-agent-socket: cannot use directory ${dir}: ${(e as Error).message}`);
    try {
      mkdirSync(dir, { recursive: true, mode: 0o700 });
      chmodSync(dir, 0o700);
    } catch (e2) {
      throw usage(`--ssh-agent-socket: cannot create directory ${dir}: ${(e2 as Error).message}`);
    }
    return;
  }
  if (st.isSymbolicLink()) throw new MeziteError("ERR_SYMLINK", `--ssh-agent-socket: ${dir} is a symlink: refusing to follow it; give a private directory`);
  if (!st.isDirectory()) throw usage(`--ssh-agent-socket: ${dir} is not a directory`);
  const uid = process.getuid?.();
  if (uid !== undefined && st.uid !== uid) throw usage(`--ssh-agent-socket: ${dir} belongs to uid ${st.uid}, not to us: put the socket in a directory of our own (mode 0700)`);
  if ((st.mode & 0o077) !== 0) {
    throw usage(`--ssh-agent-socket: ${dir} is open to other users (mode ${(st.mode & 0o777).toString(8)}): put the socket in a private directory (mode 0700)`);
  }
}

/**
 * A socket file nobody answers on is a crashed daemon's: removed. A live one is another agent's,
 * and anything that is not a socket is not ours to delete: both refused.
 */
async function clearStaleSocket(path: string): Promise<void> {
  let st;
  try {
    st = lstatSync(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return;
    throw usage(`--ssh-agent-socket: cannot inspect ${path}: ${(e as Error).message}`);
  }
  if (st.isSymbolicLink()) throw new MeziteError("ERR_SYMLINK", `--ssh-agent-socket: ${path} is a symlink: refusing to replace it; remove it and try again`);
  if (!st.isSocket()) throw usage(`--ssh-agent-socket: ${path} exists and is not a socket: refusing to replace it; remove it or choose another path`);
  if (await answers(path)) throw new MeziteError("ERR_CONFIG", `--ssh-agent-socket: another process is serving ${path}: stop it or choose another path`);
  try {
    unlinkSync(path);
  } catch (e) {
    throw usage(`--ssh-agent-socket: cannot remove the stale socket ${path}: ${(e as Error).message}`);
  }
}

function answers(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const c = createConnection(path);
    c.once("connect", () => {
      c.destroy();
      resolve(true);
    });
    c.once("error", () => resolve(false));
  });
}

/** Binds with a umask that leaves the socket 0600 from its first instant, then says so exactly. */
function listen(server: Server, path: string): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once("error", (e) => reject(usage(`--ssh-agent-socket: cannot listen on ${path}: ${e.message}`)));
    const old = process.umask(0o177);
    try {
      // A Unix socket is bound inside listen() itself: the umask is back before anything else runs.
      server.listen(path, () => {
        try {
          chmodSync(path, 0o600);
        } catch (e) {
          server.close();
          reject(usage(`--ssh-agent-socket: cannot set the mode of ${path}: ${(e as Error).message}`));
          return;
        }
        resolve();
      });
    } finally {
      process.umask(old);
    }
  });
}

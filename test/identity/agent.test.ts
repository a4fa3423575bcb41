/**
 * `--ssh-agent-socket` and `--no-ssh-key-file` (SPEC §16) against the real daemon, the real
 * `ssh-add` and `ssh` clients and a real sshd: the agent lists the current certificate and key,
 * signs with them, refuses everything else (and survives abuse), keeps the private key off the
 * disk, and its socket is 0600 in a 0700 directory; a crashed daemon's socket is replaced, a
 * file that is not a socket is not.
 */
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { randomBytes, generateKeyPairSync, verify } from "node:crypto";
import { chmodSync, existsSync, mkdirSync, readdirSync, readFileSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { createConnection, type Socket } from "node:net";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import {
  AGENT, AgentFrameReader, encodeRequestIdentities, encodeSignRequest, frame, parseIdentitiesAnswer, parseSignResponse,
} from "../../src/ca/sshagent.js";
import { parseSshCertificate } from "../../src/ca/sshcert.js";
import { sshPublicKeyBlob } from "../../src/ca/sshkey.js";
import { SshReader } from "../../src/ca/sshwire.js";
import { IdentityDaemon } from "../../src/identity/daemon.js";
import { resolveIdentityOptions } from "../../src/identity/options.js";
import { isMeziteError } from "../../src/lib/errors.js";
import type { Logger } from "../../src/lib/log.js";
import { mezctlOk, run } from "../harness/auth.js";
import { SSH_PATH } from "../harness/require.js";
import {
  JOINED, RENEWED, addIdentity, humanLines, sshdMissing, startDaemon, startNode, type Daemon, identityTestbed } from "./fixture.js";

const SSH_ADD = "/usr/bin/ssh-add";

const bed = identityTestbed("agent");

const mode = (p: string) => statSync(p).mode & 0o777;

/** A connection to the agent that sends frames and reads whole replies. */
class AgentClient {
  private readonly frames = new AgentFrameReader(1 << 20);
  private readonly replies: Buffer[] = [];
  private waiter: (() => void) | undefined;
  closed = false;
  private constructor(readonly sock: Socket) {
    sock.on("data", (d: Buffer) => {
      this.replies.push(...this.frames.push(d));
      this.waiter?.();
    });
    sock.on("close", () => {
      this.closed = true;
      this.waiter?.();
    });
    sock.on("error", () => {});
  }

  static open(path: string): Promise<AgentClient> {
    return new Promise((res, rej) => {
      const s = createConnection(path);
      s.once("connect", () => res(new AgentClient(s)));
      s.once("error", rej);
    });
  }

  /** Sends raw bytes and resolves with the next reply body, or "closed". */
  async send(bytes: Buffer): Promise<Buffer | "closed"> {
    this.sock.write(bytes);
    return this.next();
  }

  next(): Promise<Buffer | "closed"> {
    return new Promise((res, rej) => {
      const timer = setTimeout(() => rej(new Error("no agent reply in 5 s")), 5_000);
      const check = () => {
        const r = this.replies.shift();
        if (r !== undefined || this.closed) {
          clearTimeout(timer);
          this.waiter = undefined;
          res(r ?? "closed");
        }
      };
      this.waiter = check;
      check();
    });
  }

  end(): void {
    this.sock.destroy();
  }
}

const isFailure = (r: Buffer | "closed") => r !== "closed" && r.length === 1 && r[0] === AGENT.FAILURE;

async function metrics(port: number): Promise<string> {
  return (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
}

function agentCount(text: string, result: string): number {
  return Number(new RegExp(`^mezite_identity_agent_requests_total\\{result="${result}"\\} (\\d+)$`, "m").exec(text)?.[1] ?? 0);
}

function sshAdd(sock: string, ...args: string[]): { code: number | null; out: string } {
  const r = spawnSync(SSH_ADD, args, { encoding: "utf8", env: { ...process.env, SSH_AUTH_SOCK: sock }, timeout: 10_000 });
  return { code: r.status, out: r.stdout + r.stderr };
}

/** ssh through the generated ssh_config alone (plus batch mode and a cheap kex for two shared cores). */
export function sshViaConfig(dest: string, port: number, user = "deploy") {
  return spawnSync(SSH_PATH!, ["-F", join(dest, "ssh_config"), "-o", "BatchMode=yes", "-o", "KexAlgorithms=curve25519-sha256", "-p", String(port), `${user}@127.0.0.1`, "whoami"], { encoding: "utf8", timeout: 15_000 });
}

describe("the SSH agent socket", () => {
  let daemon: Daemon;
  let dest: string;
  let sock: string;
  let diagPort: number;

  before(async () => {
    dest = join(bed.tmp, "agent-certs");
    sock = join(bed.tmp, "run", "mezite", "agent.sock");
    daemon = startDaemon(bed.auth.addr, dest, [`--ssh-agent-socket=${sock}`, "--no-ssh-key-file", "--cert-ttl=1m", "--renewal-interval=50s", "--diag-addr=127.0.0.1:0"], { MEZITE_TOKEN: await addIdentity(bed.auth, "agent-user") });
    await daemon.waitFor(/"msg":"diagnostics listening"/);
    diagPort = Number(/"addr":"127\.0\.0\.1:(\d+)"/.exec(daemon.output())![1]);
    await daemon.waitFor(JOINED);
  });

  after(async () => {
    await daemon?.stop();
  });

  test("socket 0600 in a 0700 directory; ssh-add -L lists the certificate of ssh_cert and its bare key", () => {
    assert.ok(statSync(sock).isSocket());
    assert.equal(mode(sock), 0o600);
    assert.equal(mode(join(bed.tmp, "run", "mezite")), 0o700);
    const r = sshAdd(sock, "-L");
    assert.equal(r.code, 0, r.out);
    const lines = r.out.trim().split("\n");
    assert.equal(lines.length, 2, r.out);
    const certLine = readFileSync(join(dest, "ssh_cert"), "utf8").trim();
    assert.equal(lines[0]!.split(" ").slice(0, 2).join(" "), certLine.split(" ").slice(0, 2).join(" "), "the agent's certificate is ssh_cert's");
    const cert = parseSshCertificate(certLine);
    assert.equal(lines[1]!.split(" ").slice(0, 2).join(" "), `ssh-ed25519 ${sshPublicKeyBlob(cert.publicKey).toString("base64")}`);
    assert.match(lines[0]!, / mezite agent-identity\/agent-user \(certificate\)$/);
  });

  test("--no-ssh-key-file: no ssh_key, no private key in any file, and ssh_config points at the agent", () => {
    assert.ok(!existsSync(join(dest, "ssh_key")));
    for (const f of readdirSync(dest, { recursive: true, encoding: "utf8" })) {
      const p = join(dest, f);
      if (statSync(p).isFile()) assert.doesNotMatch(readFileSync(p, "utf8"), /OPENSSH PRIVATE KEY/, p);
    }
    const config = readFileSync(join(dest, "ssh_config"), "utf8");
    assert.match(config, new RegExp(`^    IdentityAgent ${sock}$`, "m"));
    assert.match(config, /^    IdentityFile none$/m);
    assert.doesNotMatch(config, /ssh_key|CertificateFile/);
  });

  test("stock ssh logs in through ssh_config and the agent, is refused as root; sshd saw the certificate", async (t) => {
    if (sshdMissing(t)) return;
    bed.node = await startNode(bed.auth, join(bed.tmp, "node"));
    const ok = sshViaConfig(dest, bed.node.sshd.port);
    assert.equal(ok.status, 0, ok.stderr);
    assert.equal(ok.stdout, "deploy\n");
    const root = sshViaConfig(dest, bed.node.sshd.port, "root");
    assert.equal(root.status, 255);
    assert.match(root.stderr, /Permission denied/);
    const serial = parseSshCertificate(readFileSync(join(dest, "ssh_cert"), "utf8")).serial;
    assert.match(readFileSync(bed.node.sshd.logPath, "utf8"), new RegExp(`Accepted publickey for deploy .*ED25519-CERT .*\\(serial ${serial}\\)`));
  });

  test("ssh-add cannot add, delete or delete all: every such request is refused and nothing changes", () => {
    const before = sshAdd(sock, "-L").out;
    const keyPath = join(bed.tmp, "extra_key");
    spawnSync("/usr/bin/ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", keyPath]);
    const pubPath = join(bed.tmp, "agent_cert.pub");
    writeFileSync(pubPath, readFileSync(join(dest, "ssh_cert")));
    for (const args of [[keyPath], ["-d", pubPath], ["-D"]]) {
      const r = sshAdd(sock, ...args);
      assert.notEqual(r.code, 0, `ssh-add ${args.join(" ")} succeeded: ${r.out}`);
    }
    assert.equal(sshAdd(sock, "-L").out, before);
  });

  test("raw protocol: signs with the certificate or the key; malformed, unknown, add/remove/lock, foreign key: FAILURE; oversized: closed; still serving", async () => {
    const before = await metrics(diagPort);
    const c = await AgentClient.open(sock);
    const ids = parseIdentitiesAnswer((await c.send(encodeRequestIdentities())) as Buffer);
    assert.equal(ids.length, 2);
    const cert = parseSshCertificate(ids[0]!.blob);
    const data = randomBytes(64);
    for (const [blob, flags] of [[ids[0]!.blob, 0], [ids[1]!.blob, 0], [ids[1]!.blob, 0x04]] as const) {
      const sig = parseSignResponse((await c.send(encodeSignRequest(blob, data, flags))) as Buffer);
      const r = new SshReader(sig, "ERR_MALFORMED_KEY", "signature");
      assert.equal(r.text(), "ssh-ed25519");
      assert.ok(verify(null, data, cert.publicKey, r.string()), "the signature verifies with the certified key");
      r.end();
    }
    const other = sshPublicKeyBlob(generateKeyPairSync("ed25519").publicKey);
    const bad: [string, Buffer][] = [
      ["empty message", frame(Buffer.alloc(0))],
      ["list with trailing bytes", frame(Buffer.of(AGENT.REQUEST_IDENTITIES, 0))],
      ["truncated sign request", frame(Buffer.of(AGENT.SIGN_REQUEST, 0, 0, 1, 0))],
      ["sign request without flags", frame(encodeSignRequest(ids[0]!.blob, data).subarray(4, -4))],
      ["sign for another key", encodeSignRequest(other, data)],
      ["sign for garbage", encodeSignRequest(randomBytes(40), data)],
      ["add identity", frame(Buffer.concat([Buffer.of(AGENT.ADD_IDENTITY), randomBytes(100)]))],
      ["add constrained", frame(Buffer.of(AGENT.ADD_ID_CONSTRAINED))],
      ["remove identity", frame(Buffer.concat([Buffer.of(AGENT.REMOVE_IDENTITY), Buffer.of(0, 0, 0, ids[1]!.blob.length), ids[1]!.blob]))],
      ["remove all", frame(Buffer.of(AGENT.REMOVE_ALL_IDENTITIES))],
      ["lock", frame(Buffer.from("\x16\0\0\0\x03abc", "latin1"))],
      ["extension", frame(Buffer.from("\x1b\0\0\0\x18session-bind@openssh.com", "latin1"))],
      ["unknown type 200", frame(Buffer.of(200, 1, 2, 3))],
    ];
    for (const [what, bytes] of bad) assert.ok(isFailure(await c.send(bytes)), what);
    // Several requests in one write, answered in order.
    c.sock.write(Buffer.concat([frame(Buffer.of(AGENT.LOCK)), encodeRequestIdentities()]));
    assert.ok(isFailure(await c.next()));
    assert.equal(parseIdentitiesAnswer((await c.next()) as Buffer).length, 2, "the identities are still there");
    // A length over the 256 KiB cap: the connection is closed, not read into memory.
    const huge = Buffer.alloc(4);
    huge.writeUInt32BE(256 * 1024 + 1);
    assert.equal(await c.send(Buffer.concat([huge, Buffer.of(AGENT.REQUEST_IDENTITIES)])), "closed");
    // A frame announcing the whole cap and dribbling in is held, then answered.
    const c2 = await AgentClient.open(sock);
    const big = Buffer.concat([Buffer.of(AGENT.EXTENSION), Buffer.alloc(256 * 1024 - 1)]);
    c2.sock.write(frame(big).subarray(0, 1000));
    await new Promise((r) => setTimeout(r, 50));
    assert.ok(isFailure(await c2.send(frame(big).subarray(1000))));
    // Half a frame, then the client goes away: nothing breaks.
    const c3 = await AgentClient.open(sock);
    c3.sock.write(Buffer.of(0, 0, 0, 9, AGENT.SIGN_REQUEST));
    c3.end();
    c2.end();
    const c4 = await AgentClient.open(sock);
    assert.equal(parseIdentitiesAnswer((await c4.send(encodeRequestIdentities())) as Buffer).length, 2, "the daemon keeps serving");
    c4.end();
    assert.equal(daemon.proc.exitCode, null);

    const afterText = await metrics(diagPort);
    assert.equal(agentCount(afterText, "listed") - agentCount(before, "listed"), 3);
    assert.equal(agentCount(afterText, "signed") - agentCount(before, "signed"), 3);
    assert.equal(agentCount(afterText, "refused") - agentCount(before, "refused"), bad.length + 1 + 1 + 1);
    assert.doesNotMatch(daemon.output(), /PRIVATE KEY/);
  });

  test("SIGHUP renews: the agent serves the new certificate at once, and a restart renews at once", async () => {
    const first = sshAdd(sock, "-L").out;
    const renewed = daemon.count(RENEWED);
    daemon.proc.kill("SIGHUP");
    await daemon.waitFor(RENEWED, renewed + 1);
    const second = sshAdd(sock, "-L").out;
    assert.notEqual(second, first);
    assert.equal(second.split("\n")[0]!.split(" ")[1], readFileSync(join(dest, "ssh_cert"), "utf8").split(" ")[1]);

    // Restarted, the daemon has no key (it was never written): it renews before anything else.
    // A client holding a connection open does not hold up the stop.
    const idle = await AgentClient.open(sock);
    const t0 = performance.now();
    const stopped = await Promise.race([daemon.stop(), new Promise<string>((r) => setTimeout(() => r("still running after 5 s"), 5_000))]);
    assert.equal(stopped, 0, daemon.output());
    assert.ok(performance.now() - t0 < 3_000, `the stop took ${Math.round(performance.now() - t0)} ms`);
    idle.end();
    assert.ok(!existsSync(sock), "a clean stop removes the socket");
    daemon = startDaemon(bed.auth.addr, dest, [`--ssh-agent-socket=${sock}`, "--no-ssh-key-file", "--cert-ttl=1m", "--renewal-interval=50s"]);
    await daemon.waitFor(RENEWED);
    const third = sshAdd(sock, "-L").out;
    assert.notEqual(third, second);
    assert.equal(third.split("\n")[0]!.split(" ")[1], readFileSync(join(dest, "ssh_cert"), "utf8").split(" ")[1]);
    assert.ok(!existsSync(join(dest, ".mezite", "pending_renewal.json")), "the key lives in the pending request only until it completes");
  });
});

/** A process's resident memory in bytes (VmRSS in /proc/PID/status). */
function rss(pid: number): number {
  return Number(/^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"))![1]) * 1024;
}

interface Flooder {
  sock: Socket;
  /** Bytes the client's socket took (its own buffer stays under its high-water mark). */
  sent: number;
  /** When the daemon last took bytes off this connection (a 'drain'), performance.now(). */
  lastDrain: number;
  closed: boolean;
}

/**
 * A client that writes `batch` over and over as fast as the socket takes it and never reads a
 * reply (no 'data' listener: Node reads one buffer's worth, then leaves the rest in the kernel).
 */
function flood(path: string, batch: Buffer): Flooder {
  const s = createConnection(path);
  const f: Flooder = { sock: s, sent: 0, lastDrain: performance.now(), closed: false };
  const write = () => {
    // Bounded per turn: a daemon that keeps up must not keep this loop from yielding.
    for (let i = 0; i < 64 && !s.destroyed; i++) {
      f.sent += batch.length;
      if (!s.write(batch)) return;
    }
    setImmediate(write);
  };
  s.on("error", () => {});
  s.on("close", () => (f.closed = true));
  s.on("drain", () => {
    f.lastDrain = performance.now();
    write();
  });
  s.once("connect", write);
  return f;
}

describe("clients that send requests and never read the replies", () => {
  let daemon: Daemon;
  let sock: string;

  before(async () => {
    sock = join(bed.tmp, "flood-run", "agent.sock");
    daemon = startDaemon(bed.auth.addr, join(bed.tmp, "flood-certs"), [`--ssh-agent-socket=${sock}`, "--no-ssh-key-file"], { MEZITE_TOKEN: await addIdentity(bed.auth, "flood") });
    await daemon.waitFor(JOINED);
  });

  after(async () => {
    await daemon?.stop();
  });

  test("8 of them leave the daemon's RSS within 64 MiB of where it started; a ninth client is answered", async (t) => {
    const probe = await AgentClient.open(sock);
    const ids = parseIdentitiesAnswer((await probe.send(encodeRequestIdentities())) as Buffer);
    parseSignResponse((await probe.send(encodeSignRequest(ids[0]!.blob, randomBytes(32)))) as Buffer);
    probe.end();
    const base = rss(daemon.pid);
    // List requests (5 bytes, each answered with ~100 times that) and signatures with the certificate.
    const batch = Buffer.concat(Array.from({ length: 256 }, (_, i) => (i % 4 === 3 ? encodeSignRequest(ids[0]!.blob, randomBytes(32)) : encodeRequestIdentities())));
    const LIMIT = 64 * 1024 * 1024;
    const STALLED_MS = 3_000;
    const flooders = Array.from({ length: 8 }, () => flood(sock, batch));
    t.after(() => flooders.forEach((f) => f.sock.destroy())); // a failure must not leave them to the next test
    let peak = base;
    let stalled = false;
    const t0 = performance.now();
    // Until every client is stuck (the daemon stopped taking its bytes), the bound is crossed, or a minute.
    while (performance.now() - t0 < 60_000) {
      await new Promise((r) => setTimeout(r, 100));
      peak = Math.max(peak, rss(daemon.pid));
      if (peak - base > LIMIT) break;
      const now = performance.now();
      stalled = flooders.every((f) => f.closed || (f.sock.writableLength > 0 && now - f.lastDrain > STALLED_MS));
      if (stalled) break;
    }
    const mib = (n: number) => (n / 1024 / 1024).toFixed(1);
    const figures = `RSS ${mib(base)} MiB before, peak ${mib(peak)} MiB (+${mib(peak - base)}); clients wrote ${mib(flooders.reduce((a, f) => a + f.sent, 0))} MiB in ${Math.round(performance.now() - t0)} ms`;
    t.diagnostic(figures);
    assert.ok(peak - base <= LIMIT, figures);
    assert.ok(stalled, `the daemon kept reading clients that never read: ${figures}`);

    // A ninth client, with the 8 still connected: stock ssh-add and a raw list request.
    const listed = await run("/usr/bin/ssh-add", ["-L"], { env: { SSH_AUTH_SOCK: sock }, timeoutMs: 10_000 });
    assert.equal(listed.code, 0, listed.stderr);
    assert.equal(listed.stdout.trim().split("\n").length, 2, listed.stdout);
    const ninth = await AgentClient.open(sock);
    assert.equal(parseIdentitiesAnswer((await ninth.send(encodeRequestIdentities())) as Buffer).length, 2);
    ninth.end();
    const end = rss(daemon.pid);
    assert.ok(end - base <= LIMIT, `RSS ${mib(end)} MiB after the ninth client, ${mib(base)} MiB before`);
    assert.ok(flooders.every((f) => !f.closed), "a client that does not read is throttled, not dropped");
    assert.equal(daemon.proc.exitCode, null);
  });

  test("a client that reads its replies late gets every one, in order: the throttle resumes", async () => {
    const n = 20_000; // ~10 MB of replies: far past the cap and the kernel's buffers
    const probe = await AgentClient.open(sock);
    const ids = parseIdentitiesAnswer((await probe.send(encodeRequestIdentities())) as Buffer);
    probe.end();
    const s = createConnection(sock);
    s.on("error", () => {});
    await new Promise((r) => s.once("connect", r));
    s.pause();
    const data = randomBytes(32);
    // Every 100th request a signature over its index, so the order of the replies shows.
    const reqs = Array.from({ length: n }, (_, i) => (i % 100 === 99 ? encodeSignRequest(ids[1]!.blob, Buffer.concat([data, Buffer.from(String(i))])) : encodeRequestIdentities()));
    s.write(Buffer.concat(reqs));
    await new Promise((r) => setTimeout(r, 300)); // let the daemon answer until it stops reading
    const frames = new AgentFrameReader();
    const replies: Buffer[] = [];
    await new Promise<void>((res, rej) => {
      const timer = setTimeout(() => rej(new Error(`${replies.length} of ${n} replies in 30 s`)), 30_000);
      s.on("data", (d: Buffer) => {
        replies.push(...frames.push(d));
        if (replies.length >= n) {
          clearTimeout(timer);
          res();
        }
      });
      s.resume();
    });
    s.destroy();
    assert.equal(replies.length, n);
    const key = parseSshCertificate(ids[0]!.blob).publicKey;
    for (let i = 0; i < n; i++) {
      if (i % 100 !== 99) {
        assert.equal(parseIdentitiesAnswer(replies[i]!).length, 2, `reply ${i}`);
        continue;
      }
      const r = new SshReader(parseSignResponse(replies[i]!), "ERR_MALFORMED_KEY", "signature");
      r.text();
      assert.ok(verify(null, Buffer.concat([data, Buffer.from(String(i))]), key, r.string()), `signature ${i} is for request ${i}`);
    }
  });
});

test("a renewal refused because the identity is locked: the agent holds nothing that signs any more", async () => {
  // In this process, to look at the keyring once the daemon has stopped (it stops on a lock).
  const sock = join(bed.tmp, "lock-run", "agent.sock");
  const opts = resolveIdentityOptions(
    { authServer: bed.auth.addr, token: await addIdentity(bed.auth, "lock-agent"), destinationDir: join(bed.tmp, "lock-certs"), sshAgentSocket: sock, sshKeyFile: false, renewalInterval: "50m" },
    {},
  );
  let joined!: () => void;
  const isJoined = new Promise<void>((r) => (joined = r));
  const log: Logger = { info: (msg) => msg === "agent identity joined" && joined(), warn() {}, error() {}, record() {} };
  const daemon = new IdentityDaemon(opts, { log });
  const running = daemon.run(new AbortController().signal);
  await isJoined;
  const c = await AgentClient.open(sock);
  const blob = parseIdentitiesAnswer((await c.send(encodeRequestIdentities())) as Buffer)[0]!.blob;
  c.end();
  assert.ok(daemon.keyring!.keyFor(blob));
  await mezctlOk(bed.auth, "agent-identities", "lock", "lock-agent", "--reason=test");
  daemon.renewSoon();
  await assert.rejects(running, (e) => isMeziteError(e, "ERR_LOCKED"));
  assert.ok(daemon.keyring!.empty, "nothing listed");
  assert.equal(daemon.keyring!.keyFor(blob), undefined, "nothing signs");
});

describe("the socket path", { concurrency: 1 }, () => {
  let n = 0;
  /** A daemon that must exit 2 before joining, with one line matching `re`. */
  async function refusedAtStart(sock: string, re: RegExp): Promise<void> {
    const dest = join(bed.tmp, `path-${n++}`);
    const d = startDaemon(bed.auth.addr, dest, [`--ssh-agent-socket=${sock}`], { MEZITE_TOKEN: randomBytes(32).toString("hex") });
    const code = await d.exited;
    assert.equal(code, 2, d.output());
    const lines = humanLines(d.output());
    assert.equal(lines.length, 1, d.output());
    assert.match(lines[0]!, re);
  }

  test("a regular file, a symlink, or a directory open to others is refused with one line; nothing is deleted", async () => {
    const dir = join(bed.tmp, "paths");
    mkdirSync(dir, { mode: 0o700 });
    chmodSync(dir, 0o700);
    writeFileSync(join(dir, "file.sock"), "precious");
    await refusedAtStart(join(dir, "file.sock"), /file\.sock exists and is not a socket: refusing to replace it/);
    assert.equal(readFileSync(join(dir, "file.sock"), "utf8"), "precious");
    symlinkSync(join(dir, "file.sock"), join(dir, "link.sock"));
    await refusedAtStart(join(dir, "link.sock"), /link\.sock is a symlink: refusing to replace it/);
    const open = join(bed.tmp, "open");
    mkdirSync(open);
    chmodSync(open, 0o755);
    await refusedAtStart(join(open, "agent.sock"), /open is open to other users \(mode 755\): put the socket in a private directory/);
  });

  test("a socket left by a crashed daemon is replaced; a live one is refused", async () => {
    const dir = join(bed.tmp, "stale");
    mkdirSync(dir, { mode: 0o700 });
    chmodSync(dir, 0o700);
    const path = join(dir, "agent.sock");
    // A process listening on the path, then killed: the socket file stays, nobody answers.
    const holder = spawn(process.execPath, ["-e", `require("net").createServer().listen(${JSON.stringify(path)}, () => console.log("up"))`], { stdio: ["ignore", "pipe", "inherit"] });
    await new Promise((r) => holder.stdout.once("data", r));
    await refusedAtStart(path, /another process is serving .*agent\.sock/);
    holder.kill("SIGKILL");
    await new Promise((r) => holder.once("exit", r));
    assert.ok(statSync(path).isSocket(), "the killed holder left its socket");

    const dest = join(bed.tmp, "stale-certs");
    const d = startDaemon(bed.auth.addr, dest, [`--ssh-agent-socket=${path}`], { MEZITE_TOKEN: await addIdentity(bed.auth, "stale-socket") });
    await d.waitFor(JOINED);
    const r = sshAdd(path, "-L");
    assert.equal(r.code, 0, r.out);
    assert.equal(r.out.trim().split("\n").length, 2);
    // With the key file kept, ssh_config still uses the agent, not the files.
    assert.ok(existsSync(join(dest, "ssh_key")));
    assert.match(readFileSync(join(dest, "ssh_config"), "utf8"), /IdentityAgent /);
    assert.equal(await d.stop(), 0);
  });

  test("--config: ssh-agent-socket and no-ssh-key-file as YAML keys mean what the flags mean", async () => {
    for (const noKey of [true, false]) {
      const dest = join(bed.tmp, `config-${noKey}`);
      const config = join(bed.tmp, `config-${noKey}.yaml`);
      writeFileSync(config, `ssh-agent-socket: ${join(bed.tmp, `config-${noKey}-run`, "agent.sock")}\nno-ssh-key-file: ${noKey}\n`);
      const d = startDaemon(bed.auth.addr, dest, [`--config=${config}`], { MEZITE_TOKEN: await addIdentity(bed.auth, `config-${noKey}`) });
      await d.waitFor(JOINED);
      assert.equal(existsSync(join(dest, "ssh_key")), !noKey, `no-ssh-key-file: ${noKey}`);
      assert.equal(sshAdd(join(bed.tmp, `config-${noKey}-run`, "agent.sock"), "-L").code, 0);
      assert.equal(await d.stop(), 0);
    }
  });

  test("a destination and a socket path with a blank and a % still work through ssh_config; a double quote is refused", async (t) => {
    if (sshdMissing(t)) return;
    bed.node ??= await startNode(bed.auth, join(bed.tmp, "node"));
    const odd = join(bed.tmp, "odd dir 100%d");
    for (const withAgent of [true, false]) {
      const dest = join(odd, withAgent ? "agent certs" : "file certs");
      const args = withAgent ? [`--ssh-agent-socket=${join(odd, "run %h", "agent.sock")}`] : [];
      const d = startDaemon(bed.auth.addr, dest, args, { MEZITE_TOKEN: await addIdentity(bed.auth, `odd-${withAgent}`) });
      await d.waitFor(JOINED);
      const r = sshViaConfig(dest, bed.node.sshd.port);
      assert.equal(r.status, 0, `${withAgent ? "agent" : "files"}: ${r.stderr}\n${readFileSync(join(dest, "ssh_config"), "utf8")}`);
      assert.equal(r.stdout, "deploy\n");
      assert.equal(await d.stop(), 0);
    }
    const { run, MEZD } = await import("../harness/auth.js");
    const q = await run(MEZD, ["identity", "start", `--auth-server=${bed.auth.addr}`, `--destination-dir=${join(bed.tmp, 'say "hi"')}`]);
    assert.equal(q.code, 2);
    assert.match(q.stderr, /^mezd: --destination-dir: the path holds a double quote or a control character, which ssh_config cannot name/);
  });

  test("--no-ssh-key-file without a socket, and a socket with --one-shot, are usage errors", async () => {
    const { run, MEZD } = await import("../harness/auth.js");
    const a = await run(MEZD, ["identity", "start", `--auth-server=${bed.auth.addr}`, `--destination-dir=${join(bed.tmp, "u1")}`, "--no-ssh-key-file"]);
    assert.equal(a.code, 2);
    assert.match(a.stderr, /^mezd: --no-ssh-key-file needs --ssh-agent-socket/);
    const b = await run(MEZD, ["identity", "start", `--auth-server=${bed.auth.addr}`, `--destination-dir=${join(bed.tmp, "u2")}`, "--one-shot", `--ssh-agent-socket=${join(bed.tmp, "u2.sock")}`]);
    assert.equal(b.code, 2);
    assert.match(b.stderr, /^mezd: --ssh-agent-socket needs a running daemon/);
  });
});

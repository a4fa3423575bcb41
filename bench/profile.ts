/**
 * `node --import tsx bench/profile.ts [SECONDS]`: where the auth service's CPU goes per renewal.
 * Runs one service (--workers=1) under saturating renewal load, warms it up, then samples it with
 * Linux perf (native frames, and JS frames named through --perf-basic-prof) while counting the
 * renewals and the service's CPU, and splits that CPU per renewal into the buckets below, each
 * sample going to the first bucket any frame of its stack matches. node --cpu-prof cannot do this:
 * OpenSSL's handshake work runs outside JS and shows there as "(idle)".
 */
import { spawn, spawnSync } from "node:child_process";
import { join } from "node:path";
import { note, tempDir } from "./lib.js";
import { prepare, window } from "./throughput.js";

// Matched by function name: the service runs from the bundle (dist/bundle/), where file names say nothing.
const BUCKETS: [string, RegExp][] = [
  ["V8 optimizing compiler (background thread)", /OptimizingCompileDispatcher|compiler::Pipeline|Maglev/],
  ["garbage collector", /Scavenger|Heap::|MarkCompact|ConcurrentMarking|MinorMark|Sweeper/],
  ["renew: issueAgentCertificates", /issueAgentCertificates/],
  ["renew: SQLite (one transaction, incl. fsync)", /sqlite/],
  ["renew: request validation (key import)", /JS:\S*(sshKey|p256Key) /],
  ["renew: rest of renewAgent (reads, audit, reply)", /renewAgent/],
  ["peerOf: read the client certificate", /peerOf|getPeerX509Certificate/],
  ["gRPC framing (src/api/grpc-unary.ts)", /JS:\S*(serve|readMessage|fromBinaryOr|unaryGrpc) /],
  ["TLS 1.3 session tickets", /tls_construct_new_session_ticket/],
  ["TLS handshake", /state_machine|SSL_do_handshake|ossl_statem|tls_process|tls_construct/],
  ["HTTP/2 (nghttp2, node:http2)", /nghttp2|http2/],
  ["TLS records, SSL objects", /SSL_|ssl3_|TLSWrap|SecureContext/],
  ["TCP accept and close", /onconnection|uv__server_io|uv__stream_destroy|uv_close/],
  ["other JS", /JS:/],
];

const seconds = Number(process.argv[2] ?? "10");
if (spawnSync("perf", ["--version"]).status !== 0) {
  process.stderr.write("bench/profile.ts needs Linux perf (apt-get install linux-perf); without it, run the service with node --cpu-prof\n");
  process.exit(2);
}
const o = { identities: 64, warmupMs: 0, windowMs: seconds * 1000 };
const t = await prepare({ workers: 1, nodeArgs: ["--perf-basic-prof", "--no-turbo-inlining"] }, o);
try {
  note("warming up for 15 s");
  await window(t, { mode: "closed", concurrency: 8, rate: 0 }, { ...o, windowMs: 15_000 });
  const data = join(tempDir("perf"), "perf.data");
  const perf = spawn("perf", ["record", "-F", "999", "-g", "-o", data, "-p", t.svc.pids().join(","), "--", "sleep", String(seconds + 0.6)], { stdio: "ignore" });
  const { figures } = await window(t, { mode: "closed", concurrency: 8, rate: 0 }, o);
  await new Promise((r) => perf.once("exit", r));
  const perRenewalMs = 1000 / figures.perCpuSecond;
  const script = spawnSync("perf", ["script", "-i", data], { encoding: "utf8", maxBuffer: 1 << 30 }).stdout;
  const counts = new Map<string, number>();
  let total = 0;
  for (const block of script.split("\n\n")) {
    const stack = block.split("\n").slice(1).join("\n");
    if (!stack) continue;
    total++;
    const name = BUCKETS.find(([, re]) => re.test(stack))?.[0] ?? "unattributed native (malloc, locks: stack lost)";
    counts.set(name, (counts.get(name) ?? 0) + 1);
  }
  process.stdout.write(`auth service, --workers=1: ${figures.renewals} renewals in ${seconds} s, ${perRenewalMs.toFixed(2)} ms CPU per renewal, ${total} samples\n`);
  for (const [name, n] of [...counts].sort((a, b) => b[1] - a[1])) {
    process.stdout.write(`${((100 * n) / total).toFixed(1).padStart(6)} %  ${((perRenewalMs * n) / total).toFixed(2).padStart(6)} ms  ${name}\n`);
  }
} finally {
  for (const g of t.gens) g.proc.kill("SIGKILL");
  await t.svc.stop();
}
process.exit(0);

/**
 * Continuous mode against a real auth service and a real sshd: `--cert-ttl=1m
 * --renewal-interval=10s` renews about every 10 s with fresh keys, a reader sampling the outputs
 * never sees a partial file, ssh keeps logging in across renewals, the generation climbs on the
 * server, SIGHUP renews at once, and the diag endpoints tell the truth.
 */
import assert from "node:assert/strict";
import { readFileSync, existsSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { parseSshCertificate } from "../../src/ca/sshcert.js";
import { ed25519RawPublic, parseOpenSSHPrivateKey } from "../../src/ca/sshkey.js";
import { parseCertificatePem, pemToPrivateKey } from "../../src/ca/x509.js";
import { sshRun } from "../harness/sshd.js";
import { JOINED, RENEWED, addIdentity, logLines, sshdMissing, startDaemon, startNode, status, identityTestbed } from "./fixture.js";

const bed = identityTestbed("renewal");

async function get(port: number, path: string): Promise<{ status: number; body: string }> {
  const res = await fetch(`http://127.0.0.1:${port}${path}`);
  return { status: res.status, body: await res.text() };
}

/** Reads and parses every output every 100 ms; a failed parse is a torn or missing file. */
function sampleOutputs(dest: string) {
  const serials = new Set<string>();
  const torn: string[] = [];
  let samples = 0;
  let unpaired = 0;
  const timer = setInterval(() => {
    samples++;
    let step = "";
    try {
      step = "ssh_cert";
      const cert = parseSshCertificate(readFileSync(join(dest, "ssh_cert"), "utf8"));
      step = "ssh_key";
      const key = parseOpenSSHPrivateKey(readFileSync(join(dest, "ssh_key"), "utf8"));
      step = "x509_cert.pem";
      parseCertificatePem(readFileSync(join(dest, "x509_cert.pem"), "utf8"));
      step = "x509_key.pem";
      pemToPrivateKey(readFileSync(join(dest, "x509_key.pem"), "utf8"));
      step = "cert_serial";
      const serial = readFileSync(join(dest, "cert_serial"), "utf8");
      if (!/^\d+\n$/.test(serial)) throw new Error(`cert_serial is ${JSON.stringify(serial)}`);
      serials.add(serial.trim());
      // Two files cannot change in one step; count the moments a reader saw them apart.
      if (!ed25519RawPublic(cert.publicKey).equals(ed25519RawPublic(key))) unpaired++;
    } catch (e) {
      torn.push(`${step}: ${(e as Error).message}`);
    }
  }, 100);
  return {
    stop: () => clearInterval(timer),
    result: () => ({ serials, torn, samples, unpaired }),
  };
}

test("continuous renewal: whole files, working ssh, climbing generation, SIGHUP, /readyz and /metrics", async (t) => {
  if (sshdMissing(t)) return;
  bed.node = await startNode(bed.auth, join(bed.tmp, "node"));
  const dest = join(bed.tmp, "certs");
  const token = await addIdentity(bed.auth, "monitor");
  const daemon = startDaemon(bed.auth.addr, dest, ["--cert-ttl=1m", "--renewal-interval=10s", "--diag-addr=127.0.0.1:0"], { MEZITE_TOKEN: token });
  await daemon.waitFor(/"msg":"diagnostics listening"/);
  const diagPort = Number(/"addr":"127\.0\.0\.1:(\d+)"/.exec(daemon.output())![1]);
  await daemon.waitFor(JOINED);

  assert.equal((await get(diagPort, "/readyz")).status, 200);
  assert.equal((await get(diagPort, "/livez")).status, 200);
  let metrics = (await get(diagPort, "/metrics")).body;
  assert.match(metrics, /^mezite_identity_renewals_total\{kind="join"\} 1$/m);
  assert.match(metrics, /^mezite_identity_generation 1$/m);
  assert.equal((await status(bed.auth, "monitor")).generation, 1);

  const sampler = sampleOutputs(dest);
  const serialNow = () => readFileSync(join(dest, "cert_serial"), "utf8").trim();
  const logins: { code: number | null; stdout: string; stderr: string; serial: string; overlapped: boolean }[] = [];
  let renewing = true;
  const sshLoop = (async () => {
    while (renewing) {
      const serial = serialNow();
      const r = await sshRun({ port: bed.node!.sshd.port, user: "deploy", keyPath: join(dest, "ssh_key"), certPath: join(dest, "ssh_cert"), knownHostsPath: join(dest, "ssh_known_hosts"), command: "whoami" });
      logins.push({ ...r, serial, overlapped: serialNow() !== serial });
      await new Promise((r) => setTimeout(r, 300)); // pacing: two cores are shared
    }
  })();
  try {
    await daemon.waitFor(RENEWED, 2, 27_000);
    // The loop may be in the middle of a login with the previous certificate: give it the time
    // for one with the last (the next renewal is 9 s or more away). Without this wait the test
    // failed under CI load: the loop stopped before it ever tried the last certificate.
    const last = serialNow();
    for (const end = Date.now() + 5_000; Date.now() < end && !logins.some((l) => l.serial === last && !l.overlapped); ) await new Promise((r) => setTimeout(r, 100));
    const mid = await status(bed.auth, "monitor");
    assert.equal(mid.generation, 3);
  } finally {
    renewing = false;
    await sshLoop;
    sampler.stop();
  }

  const { serials, torn, samples, unpaired } = sampler.result();
  process.stderr.write(`# ${samples} samples, ${serials.size} serials, ${unpaired} key/cert mismatches seen\n`);
  assert.deepEqual(torn, [], "a reader saw a partial output file");
  assert.ok(samples >= 100, `only ${samples} samples`);
  assert.equal(serials.size, 3, "the join's serial and two renewals'");
  // ssh reads the certificate when it starts and the private key again when it signs, so a login
  // in flight while a renewal replaces both may fail (once; the next one works). Every login that
  // did not straddle a renewal must succeed, and every issued certificate must log in.
  const straddled = logins.filter((l) => l.overlapped);
  process.stderr.write(`# ${logins.length} ssh logins, ${straddled.length} straddled a renewal, ${straddled.filter((l) => l.code !== 0).length} of those failed\n`);
  for (const l of logins.filter((l) => !l.overlapped)) assert.deepEqual([l.code, l.stdout], [0, "deploy\n"], l.stderr);
  for (const l of straddled.filter((l) => l.code !== 0)) assert.match(l.stderr, /do not match public|Permission denied/);
  const loggedInWith = new Set(logins.filter((l) => !l.overlapped && l.code === 0).map((l) => l.serial));
  assert.deepEqual(loggedInWith, serials, "ssh must log in with the join's certificate and each renewed one");

  // About every 10 s (±10 % jitter), counted from the previous issue.
  const issued = logLines(daemon.output()).filter((l) => l["msg"] === "agent identity joined" || l["msg"] === "agent identity renewed").map((l) => Date.parse(l["time"] as string));
  for (let i = 1; i < issued.length; i++) {
    const gap = issued[i]! - issued[i - 1]!;
    assert.ok(gap > 8_900 && gap < 13_000, `renewal ${i} came ${gap} ms after the previous issue`);
  }
  const serialsInLog = logLines(daemon.output()).filter((l) => l["serial"] !== undefined).map((l) => l["serial"]);
  assert.deepEqual(new Set(serialsInLog), serials);

  // SIGHUP: renew now, not in 10 s.
  const before = readFileSync(join(dest, "cert_serial"), "utf8");
  const t0 = performance.now();
  daemon.proc.kill("SIGHUP");
  await daemon.waitFor(RENEWED, 3, 5_000);
  const hupMs = performance.now() - t0;
  process.stderr.write(`# SIGHUP to renewed: ${Math.round(hupMs)} ms\n`);
  assert.ok(hupMs < 3_000);
  assert.notEqual(readFileSync(join(dest, "cert_serial"), "utf8"), before);

  const s = await status(bed.auth, "monitor");
  assert.equal(s.generation, 4);
  assert.deepEqual(s.instances.map((i) => i.generation), [4]);
  metrics = (await get(diagPort, "/metrics")).body;
  assert.match(metrics, /^mezite_identity_renewals_total\{kind="join"\} 1$/m);
  assert.match(metrics, /^mezite_identity_renewals_total\{kind="renew"\} 3$/m);
  assert.match(metrics, /^mezite_identity_generation 4$/m);
  const expiry = Number(/^mezite_identity_cert_expiry_seconds (\d+)$/m.exec(metrics)?.[1]);
  assert.ok(expiry > 50 && expiry <= 60, `cert expiry ${expiry} s`);

  assert.equal(await daemon.stop("SIGTERM"), 0, daemon.output());
  assert.ok(!existsSync(join(dest, ".mezite/lock")), "a clean stop releases the storage lock");
});

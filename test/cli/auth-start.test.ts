/** `mezd auth start` as an operator runs it: flags, --config, --single-port, --diag-addr, signals. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { connect as http2Connect } from "node:http2";
import { request as httpsRequest, type RequestOptions } from "node:https";
import type { TLSSocket } from "node:tls";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { MEZD, mezctlOk, run, startAuth } from "../harness/auth.js";
import { freePort } from "../harness/net.js";


function httpsGet(port: number, path: string, ca: string): Promise<{ status: number; body: string; alpn: string }> {
  return new Promise((ok, fail) => {
    const options: RequestOptions & { ALPNProtocols: string[] } = { host: "127.0.0.1", port, path, ca, ALPNProtocols: ["http/1.1"] };
    const req = httpsRequest(options, (res) => {
      const alpn = String((res.socket as TLSSocket).alpnProtocol);
      let body = "";
      res.on("data", (d: Buffer) => (body += d.toString()));
      res.on("end", () => ok({ status: res.statusCode ?? 0, body, alpn }));
    });
    req.on("error", fail);
    req.end();
  });
}

test("first start creates the CAs, the cluster key and admin.identity (0600); a restart keeps them", async () => {
  const auth = await startAuth();
  try {
    for (const f of ["admin.identity", "cluster.key", "mezite.db"]) assert.equal(statSync(join(auth.dataDir, f)).mode & 0o777, 0o600, f);
    assert.equal(statSync(auth.dataDir).mode & 0o777, 0o700);
    const pin = /"ca_pin":"(sha256:[0-9a-f]{64})"/.exec(auth.output())?.[1];
    assert.ok(pin, "the start log names the CA pin");
    await auth.stop.call({ ...auth }); // SIGTERM
    assert.equal(auth.proc.exitCode, 0, "SIGTERM stops it cleanly");
  } finally {
    rmSync(auth.dataDir, { recursive: true, force: true });
  }
});

test("a restart on the same data dir serves the same cluster (same CA pin, admin identity works)", async () => {
  const dataDir = mkdtempSync(join(tmpdir(), "mezite-restart-"));
  try {
    const a = await startAuth({ dataDir });
    const pin1 = /"ca_pin":"([^"]+)"/.exec(a.output())?.[1];
    await a.stop();
    const b = await startAuth({ dataDir });
    const pin2 = /"ca_pin":"([^"]+)"/.exec(b.output())?.[1];
    assert.equal(pin2, pin1);
    assert.match(await mezctlOk(b, "get", "roles"), /NAME/);
    await b.stop();
  } finally {
    rmSync(dataDir, { recursive: true, force: true });
  }
});

test("--single-port serves gRPC (h2) and plain HTTP/1.1 health and metrics on one TLS port", async () => {
  const auth = await startAuth({ extraArgs: ["--single-port"] });
  try {
    const id = JSON.parse(readFileSync(auth.identityPath, "utf8")) as { ca_pem: string };
    const live = await httpsGet(auth.port, "/livez", id.ca_pem);
    assert.deepEqual([live.status, live.body.trim(), live.alpn], [200, "ok", "http/1.1"]);
    assert.equal((await httpsGet(auth.port, "/readyz", id.ca_pem)).status, 200);
    await mezctlOk(auth, "agent-identities", "ls");
    const metrics = await httpsGet(auth.port, "/metrics", id.ca_pem);
    assert.match(metrics.body, /mezite_auth_requests_total\{method="ListAgentIdentities",result="ok"\} 1/);
  } finally {
    await auth.stop();
  }
});

/** GET over HTTP/2 on the gRPC port, as a gRPC client's connection would; `client` is a certificate and key to present. */
function h2Get(port: number, path: string, ca: string, client?: { cert: string; key: string }): Promise<number> {
  return new Promise((ok, fail) => {
    const session = http2Connect(`https://127.0.0.1:${port}`, { ca, ...client });
    session.on("error", fail);
    const req = session.request({ ":path": path });
    req.on("response", (h) => {
      req.resume();
      req.on("end", () => (session.close(), ok(Number(h[":status"]))));
    });
    req.on("error", fail);
    req.end();
  });
}

test("without --single-port the gRPC port serves health and metrics only to callers with a cluster certificate", async () => {
  const auth = await startAuth();
  try {
    const id = JSON.parse(readFileSync(auth.identityPath, "utf8")) as { ca_pem: string; cert_pem: string; key_pem: string };
    for (const path of ["/metrics", "/livez", "/readyz"]) {
      assert.equal(await h2Get(auth.port, path, id.ca_pem), 404, `${path} without a client certificate`);
    }
    assert.equal(await h2Get(auth.port, "/livez", id.ca_pem, { cert: id.cert_pem, key: id.key_pem }), 200, "with the admin certificate");
    assert.equal(await h2Get(auth.port, "/metrics", id.ca_pem, { cert: id.cert_pem, key: id.key_pem }), 200);
  } finally {
    await auth.stop();
  }
});

test("--diag-addr serves /livez, /readyz and /metrics over HTTP", async () => {
  const port = await freePort();
  const auth = await startAuth({ extraArgs: [`--diag-addr=127.0.0.1:${port}`] });
  try {
    const get = async (p: string) => {
      const r = await fetch(`http://127.0.0.1:${port}${p}`);
      return { status: r.status, body: await r.text() };
    };
    assert.equal((await get("/livez")).status, 200);
    assert.equal((await get("/readyz")).status, 200);
    await mezctlOk(auth, "get", "roles");
    const metrics = (await get("/metrics")).body;
    assert.match(metrics, /# TYPE mezite_auth_requests_total counter\n.*ListRoles/);
    assert.match(metrics, /# TYPE mezite_auth_request_duration_seconds histogram\n/);
    assert.match(metrics, /^mezite_auth_request_duration_seconds_count\{method="ListRoles"\} 1$/m);
    assert.match(metrics, /^mezite_auth_request_duration_seconds_bucket\{method="ListRoles",le="\+Inf"\} 1$/m);
    // What a call waits for outside its handler (test/lib/runtime-metrics.test.ts counts them).
    assert.match(metrics, /^# TYPE mezite_event_loop_delay_seconds histogram$/m);
    assert.match(metrics, /^# TYPE mezite_gc_pause_seconds histogram$/m);
    assert.equal((await get("/nope")).status, 404);
  } finally {
    await auth.stop();
  }
});

test("--workers=2: /metrics counts every worker's calls, on --diag-addr and on the TLS port", async () => {
  const port = await freePort();
  const auth = await startAuth({ extraArgs: ["--workers=2", "--single-port", `--diag-addr=127.0.0.1:${port}`] });
  try {
    const id = JSON.parse(readFileSync(auth.identityPath, "utf8")) as { ca_pem: string };
    for (let i = 0; i < 6; i++) await mezctlOk(auth, "get", "roles"); // a new connection each: both workers answer some
    const calls = /^mezite_auth_requests_total\{method="ListRoles",result="ok"\} (\d+)$/m;
    for (let i = 0; i < 4; i++) {
      const diag = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
      assert.equal(calls.exec(diag)?.[1], "6", diag);
      assert.match(diag, /^mezite_auth_request_duration_seconds_count\{method="ListRoles"\} 6$/m);
      const tls = (await httpsGet(auth.port, "/metrics", id.ca_pem)).body;
      assert.equal(calls.exec(tls)?.[1], "6", tls);
    }
    assert.equal((await fetch(`http://127.0.0.1:${port}/readyz`)).status, 200);
  } finally {
    await auth.stop();
  }
});

test("--config: the same keys as the flags, flags win, unknown keys are named", async () => {
  const dir = mkdtempSync(join(tmpdir(), "mezite-config-"));
  try {
    const cfg = join(dir, "auth.yaml");
    writeFileSync(cfg, `data-dir: ${dir}/data\nlisten: 127.0.0.1:1\ncluster_name: from-config\n`);
    const auth = await startAuth({ dataDir: join(dir, "flagdir"), extraArgs: [`--config=${cfg}`] });
    const id = JSON.parse(readFileSync(auth.identityPath, "utf8")) as { cluster_name: string };
    assert.equal(id.cluster_name, "test.mezite", "the --cluster-name flag wins over the file");
    await auth.stop();

    writeFileSync(cfg, "data-dir: /tmp/x\nlisten-address: 1.2.3.4:5\n");
    const bad = await run(MEZD, ["auth", "start", `--config=${cfg}`]);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /unknown key "listen-address"/);
    assert.equal(bad.stderr.trim().split("\n").length, 1);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("bad flags and addresses: exit 2 with one line, no stack trace", async () => {
  for (const args of [["--listen=nonsense"], ["--bogus"], ["--workers=0"], ["--backend=mysql://x"]]) {
    const r = await run(MEZD, ["auth", "start", "--data-dir=/tmp/mezite-never", ...args]);
    assert.equal(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
    assert.equal(r.stderr.trim().split("\n").length, 1, r.stderr);
    assert.doesNotMatch(r.stderr, /\n\s+at /);
  }
  const busy = await startAuth();
  try {
    const r = await run(MEZD, ["auth", "start", `--data-dir=${busy.dataDir}-2`, `--listen=127.0.0.1:${busy.port}`]);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /cannot listen on 127\.0\.0\.1:\d+: .*EADDRINUSE/);
  } finally {
    await busy.stop();
    rmSync(`${busy.dataDir}-2`, { recursive: true, force: true });
  }
});

test("a second auth service on the same data dir is refused, naming the pid that holds it; the first keeps working", async () => {
  const auth = await startAuth();
  try {
    const before = readFileSync(auth.identityPath, "utf8");
    const second = await run(MEZD, ["auth", "start", `--data-dir=${auth.dataDir}`, "--listen=127.0.0.1:0", "--cluster-name=test.mezite"], { timeoutMs: 30_000 });
    assert.equal(second.code, 2, second.stderr);
    const lines = second.stderr.trim().split("\n");
    assert.equal(lines.length, 1, second.stderr);
    assert.match(lines[0]!, new RegExp(`another mezd auth \\(pid ${auth.proc.pid}\\) is using the data dir ${auth.dataDir}`));
    assert.equal(readFileSync(auth.identityPath, "utf8"), before, "admin.identity is untouched");
    await mezctlOk(auth, "status");
    // Once the first has stopped, the dir is free again (its lock went with it).
    await auth.stop();
    await auth.restart();
    await mezctlOk(auth, "status");
  } finally {
    await auth.stop();
    rmSync(auth.dataDir, { recursive: true, force: true });
  }
});

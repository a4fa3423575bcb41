/**
 * The memory floor of a held stream (bench section 8): a bare node:http2 TLS 1.3 server with
 * client certificates requested, and N clients in a child process each holding one connection
 * with one open stream, as the fleet's agents hold theirs. Prints the server's RSS growth per
 * connection (measured as the auth service's is: no forced GC), as one JSON line.
 */
import { execFileSync, fork } from "node:child_process";
import { readFileSync } from "node:fs";
import { connect, createSecureServer } from "node:http2";
import { join } from "node:path";
import { tempDir } from "../lib.js";

const n = Number(process.argv[2] ?? 1000);
if (process.argv[3] === "client") {
  const [port, caPath] = [Number(process.argv[4]), process.argv[5]!];
  const ca = readFileSync(caPath);
  const held = [];
  for (let i = 0; i < n; i++) {
    const s = connect(`https://localhost:${port}`, { ca, minVersion: "TLSv1.3" });
    const req = s.request({ ":path": "/", ":method": "POST" });
    req.on("data", () => {});
    await new Promise((r) => req.once("response", r));
    held.push(s);
  }
  process.send!("up");
  await new Promise(() => {});
}

const dir = tempDir("bare-h2");
execFileSync("openssl", ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", join(dir, "k.pem"), "-out", join(dir, "c.pem"), "-days", "1", "-subj", "/CN=localhost"], { stdio: "ignore" });
const server = createSecureServer({ key: readFileSync(join(dir, "k.pem")), cert: readFileSync(join(dir, "c.pem")), minVersion: "TLSv1.3", requestCert: true, rejectUnauthorized: false }, (_req, res) => {
  res.writeHead(200, { "content-type": "application/grpc" });
  res.write(Buffer.alloc(5));
});
server.setTimeout(0);
await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
await new Promise((r) => setTimeout(r, 1000));
const rss = () => process.memoryUsage().rss / 1024;
const before = rss();
const client = fork(process.argv[1]!, [String(n), "client", String((server.address() as { port: number }).port), join(dir, "c.pem")], { execArgv: process.execArgv });
await new Promise((r) => client.once("message", r));
await new Promise((r) => setTimeout(r, 3000));
process.stdout.write(`${JSON.stringify({ connections: n, rssKiBPerConnection: (rss() - before) / n })}\n`);
client.kill();
process.exit(0);

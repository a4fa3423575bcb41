/**
 * The memory floor of a held stream (bench section 8): a bare node:http2 TLS 1.3 server set up as
 * the auth service's TLS is (a two-certificate chain, client certificates requested and verified,
 * no session tickets), and N clients in a child process each holding one connection with one open
 * stream and presenting a client certificate, as the fleet's agents do. Prints the server's RSS
 * growth per connection (measured as the auth service's is: no forced GC), as one JSON line.
 */
import { execFileSync, fork } from "node:child_process";
import { readFileSync } from "node:fs";
import { connect, createSecureServer } from "node:http2";
import { join } from "node:path";
import { constants } from "node:crypto";
import { tempDir } from "../lib.js";

const n = Number(process.argv[2] ?? 1000);
if (process.argv[3] === "client") {
  const [port, dir] = [Number(process.argv[4]), process.argv[5]!];
  const tls = { ca: readFileSync(join(dir, "ca.pem")), cert: readFileSync(join(dir, "client.pem")), key: readFileSync(join(dir, "client-key.pem")), minVersion: "TLSv1.3" as const };
  const held = [];
  for (let i = 0; i < n; i++) {
    const s = connect(`https://localhost:${port}`, tls);
    const req = s.request({ ":path": "/", ":method": "POST" });
    req.on("data", () => {});
    await new Promise((r) => req.once("response", r));
    held.push(s);
  }
  process.send!("up");
  await new Promise(() => {});
}

const dir = tempDir("bare-h2");
const openssl = (...args: string[]) => execFileSync("openssl", args, { cwd: dir, stdio: "ignore" });
const newKey = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
openssl("req", "-x509", ...newKey, "-keyout", "ca-key.pem", "-out", "ca.pem", "-days", "1", "-subj", "/CN=bare CA", "-addext", "basicConstraints=critical,CA:true");
for (const [name, subj, ext] of [["server", "/CN=localhost", "subjectAltName=DNS:localhost"], ["client", "/CN=bare client", "extendedKeyUsage=clientAuth"]] as const) {
  openssl("req", ...newKey, "-keyout", `${name}-key.pem`, "-out", `${name}.csr`, "-subj", subj);
  execFileSync("sh", ["-c", `printf '%s\\n' '${ext}' > ${name}.ext && openssl x509 -req -in ${name}.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 1 -out ${name}.pem -extfile ${name}.ext`], { cwd: dir, stdio: "ignore" });
}
const read = (f: string) => readFileSync(join(dir, f), "utf8");
const server = createSecureServer({
  key: read("server-key.pem"), cert: read("server.pem") + read("ca.pem"), ca: read("ca.pem"),
  minVersion: "TLSv1.3", secureOptions: constants.SSL_OP_NO_TICKET, requestCert: true, rejectUnauthorized: false,
}, (_req, res) => {
  res.writeHead(200, { "content-type": "application/grpc" });
  res.write(Buffer.alloc(5));
});
server.setTimeout(0);
await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
await new Promise((r) => setTimeout(r, 1000));
const rss = () => process.memoryUsage().rss / 1024;
const before = rss();
const client = fork(process.argv[1]!, [String(n), "client", String((server.address() as { port: number }).port), dir], { execArgv: process.execArgv });
await new Promise((r) => client.once("message", r));
await new Promise((r) => setTimeout(r, 3000));
process.stdout.write(`${JSON.stringify({ connections: n, rssKiBPerConnection: (rss() - before) / n })}\n`);
client.kill();
process.exit(0);

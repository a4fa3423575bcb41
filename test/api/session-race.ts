/**
 * Child process of client.test.ts (it may spin forever, so it runs apart): one call through
 * connect() against a local HTTP/2 server, with every client session destroyed just before
 * connect-node handles its 'connect' event: the state a server leaves behind when it hangs up as
 * the TLS handshake completes. Prints the call's outcome and how long it took.
 */
import http2 from "node:http2";
import { syncBuiltinESMExports } from "node:module";
import { ConnectError, Code } from "@connectrpc/connect";
import { JoinService } from "../../src/api/gen/mezite/v1/join_pb.js";
import { connect } from "../../src/api/client.js";

const server = http2.createSecureServer({ key: process.env["KEY"]!, cert: process.env["CERT"]! });
server.on("stream", (s) => s.respond({ ":status": 404 }, { endStream: true }));
await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
const port = (server.address() as { port: number }).port;

const realConnect = http2.connect;
(http2 as { connect: typeof http2.connect }).connect = ((...args: Parameters<typeof http2.connect>) => {
  const session = realConnect(...args);
  session.once("connect", () => session.destroy()); // runs before connect-node's own listener
  return session;
}) as typeof http2.connect;
syncBuiltinESMExports(); // connect-node's `import * as http2` sees the wrapper too

const t0 = Date.now();
try {
  await connect(JoinService, `127.0.0.1:${port}`, {}).joinNode({}, { timeoutMs: 3_000 });
  process.stdout.write(`ok ${Date.now() - t0}\n`);
} catch (e) {
  process.stdout.write(`${Code[ConnectError.from(e).code]} ${Date.now() - t0}\n`);
}
process.exit(0);

/**
 * Child process of client.test.ts (an uncaught error ends it, so it runs apart): the server says
 * GOAWAY to an idle connection and, as the client reads it, the client makes its next call. Prints
 * "ok" when the process lived through it, and how the second call ended.
 */
import http2 from "node:http2";
import { syncBuiltinESMExports } from "node:module";
import { ConnectError, Code } from "@connectrpc/connect";
import { JoinService } from "../../src/api/gen/mezite/v1/join_pb.js";
import { connect } from "../../src/api/client.js";

const server = http2.createSecureServer({ key: process.env["KEY"]!, cert: process.env["CERT"]! });
server.on("stream", (s) => {
  const session = s.session!;
  // A gRPC reply the client takes in its stride: Unimplemented, the connection kept.
  s.respond({ ":status": 200, "content-type": "application/grpc" }, { waitForTrailers: true });
  s.on("wantTrailers", () => s.sendTrailers({ "grpc-status": "12" }));
  s.end();
  s.on("close", () => session.goaway(http2.constants.NGHTTP2_NO_ERROR)); // as a service that stops
});
await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
const port = (server.address() as { port: number }).port;

const client = connect(JoinService, `127.0.0.1:${port}`, {});
const call = () => client.getClusterName({}, { timeoutMs: 3_000 }).then(() => "OK", (e) => Code[ConnectError.from(e).code]);

// The second call starts as the client reads the GOAWAY: connect-node then destroys the session,
// which emits its error only once the socket has closed, and replaces it for the new call.
let startSecond!: (outcome: Promise<string>) => void;
const second = new Promise<string>((r) => (startSecond = r));
// Not events.once(): it would listen for 'error' too, and so hide what is tested.
let firstClosed: Promise<unknown> | undefined;
const realConnect = http2.connect;
(http2 as { connect: typeof http2.connect }).connect = ((...args: Parameters<typeof http2.connect>) => {
  const session = realConnect(...args);
  if (firstClosed === undefined) {
    firstClosed = new Promise((r) => session.once("close", r));
    session.once("goaway", () => startSecond(call()));
  }
  return session;
}) as typeof http2.connect;
syncBuiltinESMExports(); // connect-node's `import * as http2` sees the wrapper too

await call();
const outcome = await second;
await firstClosed; // its error is emitted just before
process.stdout.write(`ok ${outcome}\n`);
process.exit(0);

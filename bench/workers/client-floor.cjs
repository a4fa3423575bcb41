/**
 * Node's floor for any one-shot client (bench section 6), run by a bare `node` (no tsx, no ESM
 * loader): load node:http2, open one mTLS connection to the auth service with a joined daemon's
 * renewal certificate and key (argv: its state.json, the service's address), send one request,
 * exit when the reply ends. Nothing of Mezite's: no protobuf, no keys made, no file written, and
 * the server's certificate taken unverified (no CA given, so no public roots parsed either: as
 * src/api/client.ts). What the standalone one-shot does on top of this is its own cost.
 */
"use strict";
const { readFileSync } = require("node:fs");
const { connect } = require("node:http2");

const [stateFile, addr] = process.argv.slice(2);
const state = JSON.parse(readFileSync(stateFile, "utf8"));
const session = connect(`https://${addr}`, { cert: state.renewal_cert_pem, key: state.renewal_key_pem, ca: [], rejectUnauthorized: false, minVersion: "TLSv1.3" });
session.on("error", (e) => {
  process.stderr.write(`client-floor: ${e.message}\n`);
  process.exit(1);
});
const req = session.request({ ":method": "POST", ":path": "/mezite.bench.v1.Floor/Nothing", "content-type": "application/grpc" });
req.on("response", () => req.resume());
req.on("end", () => session.close());
req.end();

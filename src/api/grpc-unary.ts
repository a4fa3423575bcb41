/**
 * Unary gRPC calls served directly on node:http2, for the two calls every daemon makes (Join and
 * Renew, each on a new connection). connect-node's general machinery costs ~2 ms of CPU per call
 * on top of what HTTP/2 itself costs, as much as the TLS handshake (npm run bench: "Renew,
 * canned reply"). The wire format is small: one request message and one reply message, each
 * framed as flag byte + 4-byte length, and the status in the trailers (gRPC over HTTP/2,
 * PROTOCOL-HTTP2.md). Anything else, including these calls gzip-compressed or in another
 * protocol (Connect, gRPC-Web), goes to `fallback`, which is connect for the whole API.
 *
 * Server streams too, for the change streams every agent holds open (SPEC §20): connect-node's
 * per-call state is several times what the stream itself needs, and a service holds tens of
 * thousands of them.
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import type { Http2ServerRequest, Http2ServerResponse } from "node:http2";
import { fromBinary, toBinary, type DescMessage, type MessageShape } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { toConnectError } from "./errors.js";

export interface UnaryRoute<I extends DescMessage = DescMessage, O extends DescMessage = DescMessage> {
  input: I;
  output: O;
  handle(input: MessageShape<I>, req: Http2ServerRequest): Promise<MessageShape<O>>;
}

/** A server-streaming call: one request message, then every message `handle` yields, then the status. */
export interface StreamRoute<I extends DescMessage = DescMessage, O extends DescMessage = DescMessage> {
  stream: true;
  input: I;
  output: O;
  /** `signal` aborts when the client goes away. The stream's messages, once the call is accepted. */
  handle(input: MessageShape<I>, req: Http2ServerRequest, signal: AbortSignal): Promise<AsyncIterable<MessageShape<O>>>;
}

type Handler = (req: IncomingMessage | Http2ServerRequest, res: ServerResponse | Http2ServerResponse) => void;

const GRPC_TYPES = new Set(["application/grpc", "application/grpc+proto"]);

/** routes: by path, e.g. "/mezite.v1.RenewService/Renew". */
export function unaryGrpc(routes: Map<string, UnaryRoute | StreamRoute>, maxRequestBytes: number, fallback: Handler): Handler {
  return (req, res) => {
    const route = req.httpVersionMajor === 2 && req.method === "POST" ? routes.get(req.url ?? "") : undefined;
    const encoding = req.headers["grpc-encoding"];
    if (!route || !GRPC_TYPES.has(req.headers["content-type"] ?? "") || (encoding !== undefined && encoding !== "identity")) {
      fallback(req, res);
      return;
    }
    if ("stream" in route) void serveStream(route, maxRequestBytes, req as Http2ServerRequest, res as Http2ServerResponse);
    else void serve(route, maxRequestBytes, req as Http2ServerRequest, res as Http2ServerResponse);
  };
}

/**
 * Frames by message object: a change pushed to every stream is one object (watch.ts), framed once
 * rather than once per stream (a KRL of 100,000 serials is ~800 KB).
 */
const framed = new WeakMap<object, Buffer>();

async function serveStream(route: StreamRoute, maxBytes: number, req: Http2ServerRequest, res: Http2ServerResponse): Promise<void> {
  const abort = new AbortController();
  const gone = () => abort.abort();
  res.once("close", gone);
  let trailers: Record<string, string> = { "grpc-status": "0" };
  try {
    const messages = await route.handle(fromBinaryOr(route.input, await readMessage(req, maxBytes)), req, abort.signal);
    for await (const message of messages) {
      if (res.stream.destroyed) break;
      if (!res.headersSent) res.writeHead(200, { "content-type": "application/grpc" });
      let bytes = framed.get(message);
      if (!bytes) framed.set(message, (bytes = frame(toBinary(route.output, message))));
      res.write(bytes);
    }
  } catch (e) {
    trailers = errorTrailers(toConnectError(e));
  } finally {
    res.off("close", gone);
  }
  if (res.stream.destroyed) return; // the client went away
  if (!res.headersSent) res.writeHead(200, { "content-type": "application/grpc" });
  res.addTrailers(trailers);
  res.end();
}

async function serve(route: UnaryRoute, maxBytes: number, req: Http2ServerRequest, res: Http2ServerResponse): Promise<void> {
  let trailers: Record<string, string>;
  let body: Buffer | undefined;
  try {
    const input = fromBinaryOr(route.input, await readMessage(req, maxBytes));
    body = frame(toBinary(route.output, await route.handle(input, req)));
    trailers = { "grpc-status": "0" };
  } catch (e) {
    trailers = errorTrailers(toConnectError(e));
  }
  if (res.stream.destroyed) return; // the client went away
  res.writeHead(200, { "content-type": "application/grpc" });
  res.addTrailers(trailers);
  if (body) res.end(body);
  else res.end();
}

function fromBinaryOr<I extends DescMessage>(schema: I, bytes: Buffer): MessageShape<I> {
  try {
    return fromBinary(schema, bytes);
  } catch (e) {
    throw new ConnectError(`request could not be parsed as ${schema.typeName}: ${(e as Error).message}`, Code.InvalidArgument);
  }
}

/** The one length-prefixed message of a unary request. */
function readMessage(req: Http2ServerRequest, maxBytes: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let headChecked = false;
    const fail = (e: ConnectError) => {
      req.removeAllListeners("data");
      req.resume(); // drain what else comes; the reply ends the stream
      reject(e);
    };
    req.on("data", (chunk: Buffer) => {
      chunks.push(chunk);
      size += chunk.length;
      if (!headChecked && size >= 5) {
        headChecked = true;
        const head = chunks.length === 1 ? chunk : Buffer.concat(chunks);
        if (head[0] !== 0) return fail(new ConnectError("compressed message without grpc-encoding", Code.Internal));
        const length = head.readUInt32BE(1);
        if (length > maxBytes) return fail(new ConnectError(`message is larger than configured readMaxBytes ${maxBytes}`, Code.ResourceExhausted));
      }
      if (size > maxBytes + 5) fail(new ConnectError(`request is larger than ${maxBytes} bytes`, Code.ResourceExhausted));
    });
    req.on("error", (e) => reject(new ConnectError(`request stream failed: ${e.message}`, Code.Canceled)));
    // Reset before its end (by the client, or by the service's request deadline).
    req.on("close", () => reject(new ConnectError("the request was cancelled before it ended", Code.Canceled)));
    req.on("end", () => {
      const all = Buffer.concat(chunks, size);
      if (size < 5 || all.readUInt32BE(1) !== size - 5) {
        reject(new ConnectError("a unary call carries exactly one complete message", Code.InvalidArgument));
      } else resolve(all.subarray(5));
    });
  });
}

function frame(message: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(5 + message.length);
  out[0] = 0;
  out.writeUInt32BE(message.length, 1);
  out.set(message, 5);
  return out;
}

/** grpc-status, grpc-message (percent-encoded as gRPC says) and the error's metadata. */
function errorTrailers(e: ConnectError): Record<string, string> {
  const t: Record<string, string> = { "grpc-status": String(e.code), "grpc-message": percentEncode(e.rawMessage) };
  e.metadata.forEach((value, key) => (t[key] = value));
  return t;
}

function percentEncode(s: string): string {
  let out = "";
  for (const b of Buffer.from(s, "utf8")) out += b >= 0x20 && b <= 0x7e && b !== 0x25 ? String.fromCharCode(b) : `%${b.toString(16).toUpperCase().padStart(2, "0")}`;
  return out;
}

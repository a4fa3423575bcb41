/** The diagnostics endpoints every program can serve: /livez, /readyz and /metrics. */
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import type { Registry } from "./metrics.js";
import { MeziteError } from "./errors.js";

export interface DiagSource {
  /** undefined = ready; otherwise why not (served with 503). */
  notReady(): string | undefined;
  /** Prometheus text; a cluster's primary asks its workers for theirs. */
  metrics(): string | Promise<string>;
}

/** A process's own registry as a diagnostics source. */
export function diagSource(registry: Registry, notReady: () => string | undefined): DiagSource {
  return { notReady, metrics: () => registry.render() };
}

export const DIAG_PATHS = new Set(["/livez", "/readyz", "/metrics"]);

/** The part of a Node HTTP/1 or HTTP/2 compat response this needs. */
interface DiagResponse {
  writeHead(status: number, headers: Record<string, string>): { end(body: string): unknown };
}

/** Answers a diag request; false when the path is not a diag path. */
export function handleDiag(src: DiagSource, req: { url?: string | undefined }, res: DiagResponse): boolean {
  const path = (req.url ?? "").split("?")[0] ?? "";
  if (!DIAG_PATHS.has(path)) return false;
  if (path === "/livez") {
    res.writeHead(200, { "content-type": "text/plain" }).end("ok\n");
  } else if (path === "/readyz") {
    const why = src.notReady();
    res.writeHead(why ? 503 : 200, { "content-type": "text/plain" }).end(why ? `not ready: ${why}\n` : "ok\n");
  } else {
    Promise.resolve()
      .then(() => src.metrics())
      .then(
        (text) => res.writeHead(200, { "content-type": "text/plain; version=0.0.4" }).end(text),
        (e: unknown) => res.writeHead(503, { "content-type": "text/plain" }).end(`metrics unavailable: ${(e as Error).message}\n`),
      );
  }
  return true;
}

export function splitHostPort(addr: string, flag: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d{1,5})$/.exec(addr);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) throw new MeziteError("ERR_USAGE", `${flag}: "${addr}" is not HOST:PORT`);
  return { host: m[1] ?? (m[2] || "0.0.0.0"), port };
}

export async function startDiagServer(addr: string, src: DiagSource): Promise<{ server: Server; port: number }> {
  const { host, port } = splitHostPort(addr, "--diag-addr");
  const server = createServer((req, res) => {
    if (!handleDiag(src, req, res)) res.writeHead(404).end("not found\n");
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", (e) => reject(new MeziteError("ERR_USAGE", `--diag-addr ${addr}: ${(e as Error).message}`, { cause: e })));
    server.listen(port, host, resolve);
  });
  server.unref();
  return { server, port: (server.address() as AddressInfo).port };
}

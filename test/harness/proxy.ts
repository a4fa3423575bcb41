/**
 * A TCP load balancer on loopback: several auth services behind one address, as in production.
 * Each connection goes to the next backend that accepts it, so a dead one is skipped.
 */
import { createConnection, createServer, type Server, type Socket } from "node:net";
import type { AddressInfo } from "node:net";

export interface Proxy {
  addr: string;
  stop(): Promise<void>;
}

export async function startProxy(backends: () => number[]): Promise<Proxy> {
  let next = 0;
  const sockets = new Set<Socket>();
  const server: Server = createServer((client) => {
    sockets.add(client);
    client.on("close", () => sockets.delete(client));
    const ports = backends();
    const tryPort = (left: number) => {
      if (left === 0) return client.destroy();
      const port = ports[next++ % ports.length]!;
      const upstream = createConnection({ host: "127.0.0.1", port });
      upstream.once("connect", () => {
        sockets.add(upstream);
        upstream.on("close", () => sockets.delete(upstream));
        client.pipe(upstream).pipe(client);
        upstream.on("error", () => client.destroy());
        client.on("error", () => upstream.destroy());
      });
      upstream.once("error", () => {
        if (!upstream.remoteAddress) tryPort(left - 1);
      });
    };
    tryPort(ports.length);
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return {
    addr: `127.0.0.1:${(server.address() as AddressInfo).port}`,
    stop: () =>
      new Promise<void>((r) => {
        for (const s of sockets) s.destroy();
        server.close(() => r());
      }),
  };
}

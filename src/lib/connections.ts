/**
 * Connections per source address (SPEC §2, §13): besides a server's cap on all connections
 * (`server.maxConnections`), one source may hold at most so many at once, so a single host cannot
 * take every connection the service has. An IPv6 source counts by its /64 (one host's usual
 * allocation); an IPv4-mapped address counts as the IPv4 address.
 */
import { isIPv4, isIPv6, type Server, type Socket } from "node:net";
import { ipv6Groups } from "./address.js";

/** What a connection's remote address counts as. */
export function sourceOf(remoteAddress: string | undefined): string {
  if (remoteAddress === undefined) return "";
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(remoteAddress);
  if (mapped) return mapped[1]!;
  if (isIPv4(remoteAddress) || !isIPv6(remoteAddress)) return remoteAddress;
  return `${ipv6Groups(remoteAddress).slice(0, 4).map((g) => g.toString(16)).join(":")}::/64`;
}

/**
 * Closes, as soon as it is accepted, a connection whose source already holds `max`; `onRefused`
 * hears of each one (for a metric). Call before the server listens.
 */
export function capConnectionsPerSource(server: Server, max: number, onRefused: (source: string) => void = () => {}): void {
  const open = new Map<string, number>();
  server.on("connection", (socket: Socket) => {
    const source = sourceOf(socket.remoteAddress);
    const held = open.get(source) ?? 0;
    if (held >= max) {
      socket.destroy();
      onRefused(source);
      return;
    }
    open.set(source, held + 1);
    socket.once("close", () => {
      const left = (open.get(source) ?? 1) - 1;
      if (left > 0) open.set(source, left);
      else open.delete(source);
    });
  });
}

/**
 * Connections per source address (SPEC §2, §13): besides a server's cap on all connections
 * (`server.maxConnections`), one source may hold at most so many at once, so a single host cannot
 * take every connection the service has. An IPv6 source counts by its /64 (one host's usual
 * allocation); an IPv4-mapped address counts as the IPv4 address.
 */
import { isIPv4, isIPv6, type Server, type Socket } from "node:net";

/** What a connection's remote address counts as. */
export function sourceOf(remoteAddress: string | undefined): string {
  if (remoteAddress === undefined) return "";
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(remoteAddress);
  if (mapped) return mapped[1]!;
  if (isIPv4(remoteAddress) || !isIPv6(remoteAddress)) return remoteAddress;
  return `${expandIPv6(remoteAddress).slice(0, 4).join(":")}::/64`;
}

/** The eight 16-bit groups of an IPv6 address, as hex without leading zeros. */
function expandIPv6(addr: string): string[] {
  const [head, tail] = addr.split("%")[0]!.split("::") as [string, string | undefined];
  const groups = (s: string) => (s === "" ? [] : s.split(":"));
  const h = groups(head);
  const t = tail === undefined ? [] : groups(tail);
  const all = tail === undefined ? h : [...h, ...Array<string>(8 - h.length - t.length).fill("0"), ...t];
  return all.map((g) => parseInt(g, 16).toString(16));
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

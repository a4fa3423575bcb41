/**
 * Connections (SPEC §2, §13): a server holds at most `max` at once, and one source address at most
 * `perSource`, so a single host cannot take every connection the service has. An IPv6 source
 * counts by its /64 (one host's usual allocation); an IPv4-mapped address counts as the IPv4 address.
 */
import { isIPv4, isIPv6, type Socket } from "node:net";
import type { Server as TlsServer, TLSSocket } from "node:tls";
import { ipv6Groups } from "./address.js";

/** What a connection's remote address counts as. */
export function sourceOf(remoteAddress: string | undefined): string {
  if (remoteAddress === undefined) return "";
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(remoteAddress);
  if (mapped) return mapped[1]!;
  if (isIPv4(remoteAddress) || !isIPv6(remoteAddress)) return remoteAddress;
  return `${ipv6Groups(remoteAddress).slice(0, 4).map((g) => g.toString(16)).join(":")}::/64`;
}

export interface ConnectionCaps {
  max: number;
  perSource: number;
}

/**
 * The auth service's (`mezd auth start --max-connections`, `--max-connections-per-source`): room
 * for DEFAULT_WATCH_LIMITS.maxStreams (watch.ts) agents holding a stream each plus renewals and
 * admins; per source above DEFAULT_WATCH_LIMITS.maxPerSource, so a NAT'd fleet's streams fit with
 * room for its renewals. SPEC §2 says 4096 in all: too few for the change streams.
 */
export const DEFAULT_CONNECTION_CAPS: ConnectionCaps = { max: 24_576, perSource: 2_560 };

/**
 * The share of `max` that connections without a verified client certificate keep when the server
 * is full: the rest (7/8; 21,504 of the default 24,576) stays reachable for certificate holders,
 * which is room for every change stream (watch.ts) plus renewals and admins.
 */
export const ANONYMOUS_SHARE = 1 / 8;

/**
 * Caps a TLS server's connections (instead of `server.maxConnections`); call before it listens.
 * A connection over either cap is closed as soon as it is accepted (`refused` hears of those over
 * `perSource`, for a metric), with one exception that keeps the service for its certificate holders:
 *
 * A connection without a client certificate is cheap to hold (a request every few seconds keeps
 * it out of the idle timeout), and handshakes (whose certificate is not known yet) are cheaper still,
 * so a few sources together could fill every slot and lock out renewals and admins. So while the
 * server is full and such unproven connections (in their handshake, or past it without a
 * certificate the TLS layer verified) hold at least ANONYMOUS_SHARE of `max`, a new connection
 * takes the oldest one's place instead of being refused (`evicted` hears of it). Below that share,
 * and whenever the server has room, nothing changes. An absolute lifetime for anonymous
 * connections would not do: a holder reconnects as fast as it is closed.
 *
 * Returns a reader of how many connections are open and how many of those are unproven.
 */
export function capConnections(server: TlsServer, caps: ConnectionCaps, on: { refused?: (source: string) => void; evicted?: () => void } = {}): () => { open: number; unproven: number } {
  const perSource = new Map<string, number>();
  // Oldest first (a Map keeps insertion order). Keyed by remote address and port, which the raw
  // socket accepted here and the TLSSocket that 'secureConnection' gives share.
  const unproven = new Map<string, { socket: Socket; release: () => void }>();
  const anonymousFloor = Math.max(1, Math.floor(caps.max * ANONYMOUS_SHARE));
  let open = 0;
  const keyOf = (s: Socket) => `${s.remoteAddress} ${s.remotePort}`;
  server.on("connection", (socket: Socket) => {
    const source = sourceOf(socket.remoteAddress);
    const held = perSource.get(source) ?? 0;
    if (held >= caps.perSource) {
      socket.destroy();
      on.refused?.(source);
      return;
    }
    if (open >= caps.max) {
      const oldest = unproven.size >= anonymousFloor ? unproven.values().next().value : undefined;
      if (!oldest) {
        socket.destroy();
        return;
      }
      oldest.release();
      oldest.socket.destroy();
      on.evicted?.();
    }
    open++;
    perSource.set(source, held + 1);
    const key = keyOf(socket);
    let released = false;
    const release = () => {
      if (released) return;
      released = true;
      open--;
      const left = (perSource.get(source) ?? 1) - 1;
      if (left > 0) perSource.set(source, left);
      else perSource.delete(source);
      if (unproven.get(key)?.socket === socket) unproven.delete(key);
    };
    unproven.set(key, { socket, release });
    socket.once("close", release);
  });
  server.on("secureConnection", (tls: TLSSocket) => {
    if (tls.authorized) unproven.delete(keyOf(tls));
  });
  return () => ({ open, unproven: unproven.size });
}

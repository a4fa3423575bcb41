/** Host names and host:port addresses as Mezite accepts them from nodes and flags. */
import { isIP } from "node:net";

const DNS_LABEL = /^[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$/;

/** A DNS name: labels of letters, digits and inner hyphens, 253 characters at most. */
export function isDnsName(s: string): boolean {
  return s.length <= 253 && s.split(".").every((l) => DNS_LABEL.test(l));
}

/**
 * The eight 16-bit groups of an IPv6 address in any of its written forms: `::` expanded, a zone
 * (`%eth0`) dropped, an IPv4 tail (`::ffff:10.0.0.1`) read as the two groups it stands for.
 */
export function ipv6Groups(addr: string): number[] {
  let text = addr.split("%")[0]!;
  const v4 = /^(.*:)(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(text);
  if (v4) {
    const [a, b, c, d] = v4.slice(2).map(Number) as [number, number, number, number];
    text = `${v4[1]!}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
  }
  const [head = "", tail] = text.split("::");
  const groups = (s: string) => (s === "" ? [] : s.split(":").map((g) => parseInt(g, 16)));
  const h = groups(head);
  const t = tail === undefined ? [] : groups(tail);
  return tail === undefined ? h : [...h, ...Array<number>(8 - h.length - t.length).fill(0), ...t];
}

/**
 * `host:port` where host is a DNS name, an IPv4 address or a bracketed IPv6 address
 * (`[fe80::1]:22`) and port is 1-65535 in plain digits: nothing else, so an address shown to users
 * is never text of the sender's choosing.
 */
export function isHostPort(s: string): boolean {
  if (s.length > 270) return false;
  const m = /^(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9.-]+)):([1-9][0-9]{0,4})$/.exec(s);
  if (!m || Number(m[3]) > 65535) return false;
  return m[1] !== undefined ? isIP(m[1]) === 6 : isIP(m[2]!) === 4 || (!/^[0-9.]+$/.test(m[2]!) && isDnsName(m[2]!));
}

/**
 * The small subset of DER (ITU-T X.690) that Mezite's X.509 certificates use. Hand-written because
 * issuing is a hot path and @peculiar/x509 (asn1js underneath) spends ~3 ms building and ~2.8 ms
 * reading one certificate; with this, issuing takes ~0.2 ms including the ECDSA signature.
 *
 * Reading is strict: single-byte tags, definite minimal lengths, values that span their buffer
 * exactly. Every failure throws DerError, which callers turn into their own MeziteError.
 */

export const TAG = {
  BOOLEAN: 0x01,
  INTEGER: 0x02,
  BIT_STRING: 0x03,
  OCTET_STRING: 0x04,
  OID: 0x06,
  UTF8_STRING: 0x0c,
  PRINTABLE_STRING: 0x13,
  IA5_STRING: 0x16,
  UTC_TIME: 0x17,
  GENERALIZED_TIME: 0x18,
  BMP_STRING: 0x1e,
  SEQUENCE: 0x30,
  SET: 0x31,
} as const;

/** Context-specific tag [n]: constructed (EXPLICIT or structured) or primitive (IMPLICIT string). */
export const context = (n: number, constructed: boolean): number => (constructed ? 0xa0 : 0x80) | n;

export class DerError extends Error {
  override name = "DerError";
}

// ---------------------------------------------------------------------------------------------
// Writing

export function tlv(tag: number, ...content: Uint8Array[]): Buffer {
  const body = Buffer.concat(content);
  const n = body.length;
  let header: number[];
  if (n < 0x80) header = [tag, n];
  else {
    const len: number[] = [];
    for (let v = n; v > 0; v = Math.floor(v / 256)) len.unshift(v & 0xff);
    header = [tag, 0x80 | len.length, ...len];
  }
  return Buffer.concat([Buffer.from(header), body]);
}

export const seq = (...items: Uint8Array[]): Buffer => tlv(TAG.SEQUENCE, ...items);
export const set = (...items: Uint8Array[]): Buffer => tlv(TAG.SET, ...items);
export const octetString = (b: Uint8Array): Buffer => tlv(TAG.OCTET_STRING, b);
export const utf8String = (s: string): Buffer => tlv(TAG.UTF8_STRING, Buffer.from(s, "utf8"));
export const BOOLEAN_TRUE = Buffer.from([TAG.BOOLEAN, 1, 0xff]);

/** BIT STRING; unusedBits counts the zero bits padding the last byte. */
export const bitString = (b: Uint8Array, unusedBits = 0): Buffer => tlv(TAG.BIT_STRING, Buffer.from([unusedBits]), b);

/** A non-negative INTEGER in its minimal two's complement form. */
export function uint(n: bigint): Buffer {
  if (n < 0n) throw new DerError("negative INTEGER");
  const hex = n.toString(16);
  const bytes = Buffer.from(hex.length % 2 ? `0${hex}` : hex, "hex");
  return tlv(TAG.INTEGER, (bytes[0] ?? 0) & 0x80 ? Buffer.concat([Buffer.from([0]), bytes]) : bytes);
}

const oids = new Map<string, Buffer>();

/** OBJECT IDENTIFIER from dotted form; memoised, as a certificate names the same few each time. */
export function oid(dotted: string): Buffer {
  const known = oids.get(dotted);
  if (known) return known;
  const arcs = dotted.split(".").map(Number);
  const [a = 0, b = 0, ...rest] = arcs;
  const out = [a * 40 + b];
  for (const arc of rest) {
    const chunk = [arc & 0x7f];
    for (let v = Math.floor(arc / 128); v > 0; v = Math.floor(v / 128)) chunk.unshift((v & 0x7f) | 0x80);
    out.push(...chunk);
  }
  const encoded = tlv(TAG.OID, Buffer.from(out));
  oids.set(dotted, encoded);
  return encoded;
}

/** RFC 5280 §4.1.2.5: UTCTime through 2049, GeneralizedTime after; whole seconds, Zulu. */
export function time(d: Date): Buffer {
  const digits = d.toISOString().slice(0, 19).replace(/[-T:]/g, "");
  const year = d.getUTCFullYear();
  if (year < 1950 || year > 9999) throw new DerError("date out of range for a certificate");
  return year < 2050
    ? tlv(TAG.UTC_TIME, Buffer.from(`${digits.slice(2)}Z`, "latin1"))
    : tlv(TAG.GENERALIZED_TIME, Buffer.from(`${digits}Z`, "latin1"));
}

// ---------------------------------------------------------------------------------------------
// Reading

export interface Tlv {
  tag: number;
  /** The content octets. */
  value: Buffer;
  /** The whole element: tag, length and content. */
  raw: Buffer;
}

/** The consecutive elements that exactly fill buf. */
export function readAll(buf: Buffer): Tlv[] {
  const out: Tlv[] = [];
  let at = 0;
  while (at < buf.length) {
    const start = at;
    const tag = buf[at++] ?? 0;
    if ((tag & 0x1f) === 0x1f) throw new DerError("multi-byte tags are not supported");
    const first = buf[at++];
    if (first === undefined) throw new DerError("truncated length");
    let len = first;
    if (first & 0x80) {
      const n = first & 0x7f;
      if (n === 0 || n > 4) throw new DerError("indefinite or oversized length");
      if (buf[at] === 0) throw new DerError("non-minimal length");
      len = 0;
      for (let i = 0; i < n; i++) {
        const byte = buf[at++];
        if (byte === undefined) throw new DerError("truncated length");
        len = len * 256 + byte;
      }
      if (len < 0x80) throw new DerError("non-minimal length");
    }
    if (at + len > buf.length) throw new DerError("element runs past its container");
    out.push({ tag, value: buf.subarray(at, at + len), raw: buf.subarray(start, at + len) });
    at += len;
  }
  return out;
}

/** buf must be exactly one element with the given tag. */
export function readOne(buf: Buffer, tag: number): Tlv {
  const all = readAll(buf);
  const [one] = all;
  if (all.length !== 1 || !one || one.tag !== tag) throw new DerError(`expected one element with tag 0x${tag.toString(16)}`);
  return one;
}

/** The children of a constructed element, each checked against the expected tags (undefined: any). */
export function children(t: Tlv, tags?: (number | undefined)[]): Tlv[] {
  const kids = readAll(t.value);
  if (tags && (kids.length !== tags.length || kids.some((k, i) => tags[i] !== undefined && k.tag !== tags[i]))) {
    throw new DerError("unexpected structure");
  }
  return kids;
}

export function readUint(t: Tlv): bigint {
  const v = t.value;
  const [b0 = 0, b1 = 0] = v;
  if (t.tag !== TAG.INTEGER || v.length === 0) throw new DerError("expected an INTEGER");
  if (b0 & 0x80) throw new DerError("negative INTEGER");
  if (v.length > 1 && b0 === 0 && !(b1 & 0x80)) throw new DerError("non-minimal INTEGER");
  return BigInt(`0x${v.toString("hex")}`);
}

export function readOid(t: Tlv): string {
  const v = t.value;
  if (t.tag !== TAG.OID || v.length === 0 || (v[v.length - 1] ?? 0) & 0x80) throw new DerError("malformed OID");
  const first = v[0] ?? 0;
  const arcs: number[] = first < 80 ? [Math.floor(first / 40), first % 40] : [2, first - 80];
  let acc = 0;
  for (let i = 1; i < v.length; i++) {
    const byte = v[i] ?? 0;
    if (acc === 0 && byte === 0x80) throw new DerError("non-minimal OID arc");
    acc = acc * 128 + (byte & 0x7f);
    if (acc > Number.MAX_SAFE_INTEGER) throw new DerError("OID arc too large");
    if (!(byte & 0x80)) {
      arcs.push(acc);
      acc = 0;
    }
  }
  return arcs.join(".");
}

/** The character strings certificate names use. */
export function readString(t: Tlv): string {
  switch (t.tag) {
    case TAG.UTF8_STRING:
      return new TextDecoder("utf-8", { fatal: true }).decode(t.value);
    case TAG.PRINTABLE_STRING:
    case TAG.IA5_STRING:
      if (t.value.some((c) => c > 0x7f)) throw new DerError("non-ASCII byte in an ASCII string");
      return t.value.toString("latin1");
    case TAG.BMP_STRING:
      if (t.value.length % 2) throw new DerError("odd-length BMPString");
      return Buffer.from(t.value).swap16().toString("utf16le");
    default:
      throw new DerError(`unsupported string type 0x${t.tag.toString(16)}`);
  }
}

const UTC_RE = /^(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})Z$/;
const GENERALIZED_RE = /^(\d{4})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})Z$/;

export function readTime(t: Tlv): Date {
  const s = t.value.toString("latin1");
  const m = t.tag === TAG.UTC_TIME ? UTC_RE.exec(s) : t.tag === TAG.GENERALIZED_TIME ? GENERALIZED_RE.exec(s) : null;
  if (!m) throw new DerError("malformed time");
  const [, y, mo, d, h, mi, se] = m.map(Number) as [number, number, number, number, number, number, number];
  const year = t.tag === TAG.UTC_TIME ? (y < 50 ? 2000 + y : 1900 + y) : y;
  const date = new Date(Date.UTC(year, mo - 1, d, h, mi, se));
  // Date.UTC rolls 31 February over into March; a real date survives the round trip.
  const roundTrips = date.getUTCFullYear() === year && date.getUTCMonth() === mo - 1 && date.getUTCDate() === d;
  if (!roundTrips || h > 23 || mi > 59 || se > 59) {
    throw new DerError("impossible date");
  }
  return date;
}

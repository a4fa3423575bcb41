/**
 * SSH wire encoding (RFC 4251 section 5): the writer builds blobs, the reader takes them apart and
 * turns every truncation, oversized length or leftover byte into a MeziteError with the code the
 * caller chose, so parsers above it never see a RangeError or a half-read value.
 */
import { MeziteError } from "../lib/errors.js";
import type { ErrorCode } from "../lib/errors.js";

const UINT64_MAX = (1n << 64n) - 1n;
const utf8 = new TextDecoder("utf-8", { fatal: true });

export class SshWriter {
  private readonly parts: Buffer[] = [];

  byte(v: number): this {
    this.parts.push(Buffer.of(v & 0xff));
    return this;
  }

  uint32(v: number): this {
    const b = Buffer.alloc(4);
    b.writeUInt32BE(v);
    this.parts.push(b);
    return this;
  }

  uint64(v: bigint): this {
    if (v < 0n || v > UINT64_MAX) throw new RangeError("uint64 out of range");
    const b = Buffer.alloc(8);
    b.writeBigUInt64BE(v);
    this.parts.push(b);
    return this;
  }

  /** A length-prefixed string; text is written as UTF-8. */
  string(v: Uint8Array | string): this {
    const b = typeof v === "string" ? Buffer.from(v, "utf8") : Buffer.from(v);
    this.uint32(b.length);
    this.parts.push(b);
    return this;
  }

  /** Bytes with no length prefix (magic numbers, padding). */
  raw(v: Uint8Array): this {
    this.parts.push(Buffer.from(v));
    return this;
  }

  toBuffer(): Buffer {
    return Buffer.concat(this.parts);
  }
}

export class SshReader {
  private pos = 0;
  private readonly buf: Buffer;

  /** `code` and `what` name the error thrown on malformed input ("certificate", "KRL", ...). */
  constructor(
    input: Uint8Array,
    private readonly code: ErrorCode,
    private readonly what: string,
  ) {
    this.buf = Buffer.from(input.buffer, input.byteOffset, input.byteLength);
  }

  get remaining(): number {
    return this.buf.length - this.pos;
  }

  /** Offset of the next unread byte, for callers that need the bytes read so far. */
  get offset(): number {
    return this.pos;
  }

  fail(detail: string): never {
    throw new MeziteError(this.code, `malformed ${this.what}: ${detail}`);
  }

  private take(n: number, field: string): Buffer {
    if (n > this.remaining) this.fail(`${field} is truncated`);
    const out = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }

  byte(field = "byte"): number {
    return this.take(1, field)[0] as number;
  }

  uint32(field = "uint32"): number {
    return this.take(4, field).readUInt32BE(0);
  }

  uint64(field = "uint64"): bigint {
    return this.take(8, field).readBigUInt64BE(0);
  }

  raw(n: number, field = "bytes"): Buffer {
    return this.take(n, field);
  }

  /** A length-prefixed string as bytes (a view into the input: copy before keeping it). */
  string(field = "string"): Buffer {
    const len = this.uint32(`${field} length`);
    return this.take(len, field);
  }

  /** A length-prefixed string that must be UTF-8 without NUL bytes (as OpenSSH's cstrings). */
  text(field = "string"): string {
    const bytes = this.string(field);
    if (bytes.includes(0)) this.fail(`${field} contains a NUL byte`);
    try {
      return utf8.decode(bytes);
    } catch {
      return this.fail(`${field} is not UTF-8`);
    }
  }

  /** A string whose contents are parsed by a nested reader with the same error code. */
  nested(field: string): SshReader {
    return new SshReader(this.string(field), this.code, this.what);
  }

  /** Asserts the input is fully consumed. */
  end(): void {
    if (this.remaining !== 0) this.fail(`${this.remaining} trailing bytes`);
  }
}

/** Strict base64 (standard alphabet, padding optional): Buffer.from alone silently skips junk. */
export function decodeBase64Strict(text: string, code: ErrorCode, what: string): Buffer {
  const bare = text.replace(/={1,2}$/, "");
  const padded = bare.length !== text.length;
  if (!/^[A-Za-z0-9+/]+$/.test(bare) || (padded ? text.length % 4 !== 0 : bare.length % 4 === 1)) {
    throw new MeziteError(code, `malformed ${what}: not valid base64`);
  }
  return Buffer.from(text, "base64");
}

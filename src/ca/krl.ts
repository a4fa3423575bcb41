/**
 * OpenSSH key revocation lists (PROTOCOL.krl), certificate sections only: revoke by serial and by
 * key id, per CA or for every CA. sshd fails closed on a KRL it cannot load, so everything that
 * OpenSSH would reject (serial 0, NUL in a string) is refused here instead of being written.
 */
import { createHash, type KeyObject } from "node:crypto";
import { MeziteError } from "../lib/errors.js";
import { sshPublicKeyBlob } from "./sshkey.js";
import { SshWriter } from "./sshwire.js";

const KRL_MAGIC = 0x5353484b524c0a00n; // "SSHKRL\n\0"
const KRL_FORMAT_VERSION = 1;
const SECTION_CERTIFICATES = 1;
const CERT_SERIAL_LIST = 0x20;
const CERT_SERIAL_RANGE = 0x21;
const CERT_KEY_ID = 0x23;
const UINT64_MAX = (1n << 64n) - 1n;
/** Runs at least this long are cheaper as a range (16 bytes) than as list entries (8 each). */
const MIN_RANGE_RUN = 3;

export interface KrlSection {
  /** The CA whose certificates are revoked; null = certificates of any CA. */
  caKey: KeyObject | null;
  serials?: readonly bigint[] | BigUint64Array;
  keyIds?: string[];
}

function usage(message: string): MeziteError {
  return new MeziteError("ERR_USAGE", `cannot encode KRL: ${message}`);
}

function checkText(value: string, field: string): void {
  if (value.includes("\0")) throw usage(`${field} contains a NUL character`);
}

/**
 * Serials sorted (numerically, in a typed array: 100,000 take a few milliseconds, where sorting
 * bigints in an array takes over a hundred).
 */
function sortedSerials(serials: readonly bigint[] | BigUint64Array): BigUint64Array {
  const out = serials instanceof BigUint64Array ? BigUint64Array.from(serials) : new BigUint64Array(serials.length);
  if (!(serials instanceof BigUint64Array)) {
    for (let i = 0; i < serials.length; i++) {
      const s = serials[i]!;
      // OpenSSH refuses to load a KRL naming serial 0, and sshd then refuses every login.
      if (s <= 0n || s > UINT64_MAX) throw usage(`serial ${s} is outside 1..2^64-1`);
      out[i] = s;
    }
  } else if (out.includes(0n)) {
    throw usage("serial 0 is outside 1..2^64-1");
  }
  return out.sort();
}

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/**
 * The sorted serials' entries: [lo, hi] ranges for runs of at least MIN_RANGE_RUN consecutive
 * serials, and the rest as one big-endian list (duplicates once). Works on 32-bit halves and copies
 * bytes, so 100,000 serials take milliseconds.
 */
function serialEntries(sorted: BigUint64Array): { ranges: [bigint, bigint][]; list: Buffer } {
  const half = new Uint32Array(sorted.buffer, sorted.byteOffset, sorted.length * 2);
  const [L, H] = LITTLE_ENDIAN ? [0, 1] : [1, 0];
  const same = (i: number, j: number) => half[2 * i + L] === half[2 * j + L] && half[2 * i + H] === half[2 * j + H];
  const next = (i: number, j: number) =>
    half[2 * i + H] === half[2 * j + H] ? half[2 * j + L] === half[2 * i + L]! + 1 : half[2 * i + L] === 0xffffffff && half[2 * j + L] === 0 && half[2 * j + H] === half[2 * i + H]! + 1;
  const bytes = new Uint8Array(sorted.buffer, sorted.byteOffset, sorted.byteLength);
  const list = Buffer.alloc(sorted.byteLength);
  const ranges: [bigint, bigint][] = [];
  let listed = 0;
  for (let i = 0; i < sorted.length; ) {
    let j = i + 1;
    let span = 1;
    for (; j < sorted.length; j++) {
      if (next(j - 1, j)) span++;
      else if (!same(j - 1, j)) break;
    }
    if (span >= MIN_RANGE_RUN) {
      ranges.push([sorted[i]!, sorted[j - 1]!]);
    } else {
      for (let k = i; k < j; k++) if (k === i || !same(k - 1, k)) list.set(bytes.subarray(8 * k, 8 * k + 8), 8 * listed++);
    }
    i = j;
  }
  const out = list.subarray(0, 8 * listed);
  if (LITTLE_ENDIAN) out.swap64();
  return { ranges, list: out };
}

function encodeCertSection(section: KrlSection): Buffer {
  const w = new SshWriter()
    .string(section.caKey === null ? Buffer.alloc(0) : sshPublicKeyBlob(section.caKey))
    .string(""); // reserved
  const { ranges, list } = serialEntries(sortedSerials(section.serials ?? []));
  for (const [lo, hi] of ranges) w.byte(CERT_SERIAL_RANGE).string(new SshWriter().uint64(lo).uint64(hi).toBuffer());
  if (list.length > 0) w.byte(CERT_SERIAL_LIST).string(list);

  const keyIds = [...new Set(section.keyIds ?? [])].sort();
  if (keyIds.length > 0) {
    const ids = new SshWriter();
    for (const id of keyIds) {
      checkText(id, "key id");
      ids.string(id);
    }
    w.byte(CERT_KEY_ID).string(ids.toBuffer());
  }
  return w.toBuffer();
}

export function encodeKrl(opts: { version: bigint; generatedAt: number; comment?: string; sections: KrlSection[] }): Buffer {
  if (opts.version < 0n || opts.version > UINT64_MAX) throw usage("version must fit in 64 bits");
  if (!Number.isSafeInteger(opts.generatedAt) || opts.generatedAt < 0) throw usage("generatedAt must be unix seconds");
  const comment = opts.comment ?? "";
  checkText(comment, "comment");

  const w = new SshWriter()
    .uint64(KRL_MAGIC)
    .uint32(KRL_FORMAT_VERSION)
    .uint64(opts.version)
    .uint64(BigInt(opts.generatedAt))
    .uint64(0n) // flags
    .string("") // reserved
    .string(comment);
  for (const section of opts.sections) {
    if ((section.serials?.length ?? 0) === 0 && (section.keyIds?.length ?? 0) === 0) continue;
    w.byte(SECTION_CERTIFICATES).string(encodeCertSection(section));
  }
  return w.toBuffer();
}

/** Magic (8), format version (4), KRL version (8), generated date (8): what follows is the content. */
export const KRL_HEADER_BYTES = 28;

/**
 * Names what a KRL revokes, whoever encoded it and when (the header's version and date are left
 * out): equal versions mean the same revocations, so a node holding one need not fetch the other.
 */
export function krlContentVersion(krl: Uint8Array): string {
  return createHash("sha256").update(krl.subarray(KRL_HEADER_BYTES)).digest("hex").slice(0, 32);
}

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
  serials?: readonly bigint[] | BigUint64Array | SortedSerials;
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
/** Index of a serial's high and low 32-bit halves in a Uint32Array view of a BigUint64Array. */
const [HI, LO] = LITTLE_ENDIAN ? [1, 0] : [0, 1];

/** Serials in ascending order, checked: encodeKrl takes them as they are. Made by sortSerials. */
export class SortedSerials {
  private constructor(readonly values: BigUint64Array) {}
  static of(values: BigUint64Array): SortedSerials {
    return new SortedSerials(values);
  }
}

/** A growing list of serials, each checked as it is added (OpenSSH refuses a KRL naming serial 0). */
export class SerialList {
  private buf = new BigUint64Array(1024);
  length = 0;

  add(serial: bigint): void {
    if (serial <= 0n || serial > UINT64_MAX) throw usage(`serial ${serial} is outside 1..2^64-1`);
    if (this.length === this.buf.length) {
      const bigger = new BigUint64Array(this.buf.length * 2);
      bigger.set(this.buf);
      this.buf = bigger;
    }
    this.buf[this.length++] = serial;
  }

  get values(): BigUint64Array {
    return this.buf.subarray(0, this.length);
  }
}

/** Elements sorted or merged between two pauses of sortSerials. */
const SORT_STEP = 8192;

/**
 * Sorts serials in slices, then merges the slices pairwise on their 32-bit halves, calling `pause`
 * (e.g. a setImmediate) every SORT_STEP elements: 100,000 serials are sorted without holding the
 * event loop for more than a millisecond or two at a time.
 */
export async function sortSerials(serials: SerialList | BigUint64Array, pause: () => Promise<void>): Promise<SortedSerials> {
  let a = BigUint64Array.from(serials instanceof SerialList ? serials.values : serials);
  if (!(serials instanceof SerialList) && a.includes(0n)) throw usage("serial 0 is outside 1..2^64-1");
  const n = a.length;
  for (let i = 0; i < n; i += SORT_STEP) {
    a.subarray(i, i + SORT_STEP).sort();
    await pause();
  }
  let b = new BigUint64Array(n);
  let budget = 0;
  for (let width = SORT_STEP; width < n; width *= 2) {
    const x = new Uint32Array(a.buffer);
    const y = new Uint32Array(b.buffer);
    for (let lo = 0; lo < n; lo += 2 * width) {
      const mid = Math.min(lo + width, n);
      const hi = Math.min(lo + 2 * width, n);
      let i = lo;
      let j = mid;
      let k = lo;
      while (i < mid && j < hi) {
        const xi = x[2 * i + HI]!;
        const xj = x[2 * j + HI]!;
        const from = xi < xj || (xi === xj && x[2 * i + LO]! <= x[2 * j + LO]!) ? i++ : j++;
        y[2 * k + HI] = x[2 * from + HI]!;
        y[2 * k + LO] = x[2 * from + LO]!;
        k++;
        if (++budget === SORT_STEP) {
          budget = 0;
          await pause();
        }
      }
      b.set(a.subarray(i, mid), k);
      b.set(a.subarray(j, hi), k + (mid - i));
    }
    [a, b] = [b, a];
    await pause();
  }
  return SortedSerials.of(a);
}

/**
 * The sorted serials' entries: [lo, hi] ranges for runs of at least MIN_RANGE_RUN consecutive
 * serials, and the rest as one big-endian list (duplicates once). Works on 32-bit halves and copies
 * bytes, so 100,000 serials take milliseconds.
 */
function serialEntries(sorted: BigUint64Array): { ranges: [bigint, bigint][]; list: Buffer } {
  const half = new Uint32Array(sorted.buffer, sorted.byteOffset, sorted.length * 2);
  const [L, H] = [LO, HI];
  const same = (i: number, j: number) => half[2 * i + L] === half[2 * j + L] && half[2 * i + H] === half[2 * j + H];
  const next = (i: number, j: number) =>
    half[2 * i + H] === half[2 * j + H] ? half[2 * j + L] === half[2 * i + L]! + 1 : half[2 * i + L] === 0xffffffff && half[2 * j + L] === 0 && half[2 * j + H] === half[2 * i + H]! + 1;
  const bytes = new Uint8Array(sorted.buffer, sorted.byteOffset, sorted.byteLength);
  const list = Buffer.alloc(sorted.byteLength);
  const ranges: [bigint, bigint][] = [];
  let listed = 0;
  // Serials from `pending` on go to the list as they are, copied in one piece when something else comes.
  let pending = 0;
  const flush = (end: number) => {
    list.set(bytes.subarray(8 * pending, 8 * end), 8 * listed);
    listed += end - pending;
  };
  for (let i = 0; i < sorted.length; ) {
    let j = i + 1;
    let span = 1;
    for (; j < sorted.length; j++) {
      if (next(j - 1, j)) span++;
      else if (!same(j - 1, j)) break;
    }
    if (span >= MIN_RANGE_RUN) {
      flush(i);
      ranges.push([sorted[i]!, sorted[j - 1]!]);
      pending = j;
    } else if (span !== j - i) {
      flush(i); // duplicates: each serial once
      for (let k = i; k < j; k++) if (k === i || !same(k - 1, k)) list.set(bytes.subarray(8 * k, 8 * k + 8), 8 * listed++);
      pending = j;
    }
    i = j;
  }
  flush(sorted.length);
  const out = list.subarray(0, 8 * listed);
  if (LITTLE_ENDIAN) out.swap64();
  return { ranges, list: out };
}

function encodeCertSection(section: KrlSection): Buffer {
  const w = new SshWriter()
    .string(section.caKey === null ? Buffer.alloc(0) : sshPublicKeyBlob(section.caKey))
    .string(""); // reserved
  const { ranges, list } = serialEntries(section.serials instanceof SortedSerials ? section.serials.values : sortedSerials(section.serials ?? []));
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
    const serialCount = section.serials instanceof SortedSerials ? section.serials.values.length : (section.serials?.length ?? 0);
    if (serialCount === 0 && (section.keyIds?.length ?? 0) === 0) continue;
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

/**
 * OpenSSH key revocation lists (PROTOCOL.krl), certificate sections only: revoke by serial and by
 * key id, per CA or for every CA. sshd fails closed on a KRL it cannot load, so everything that
 * OpenSSH would reject (serial 0, NUL in a string) is refused here instead of being written.
 */
import type { KeyObject } from "node:crypto";
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
  serials?: bigint[];
  keyIds?: string[];
}

function usage(message: string): MeziteError {
  return new MeziteError("ERR_USAGE", `cannot encode KRL: ${message}`);
}

function checkText(value: string, field: string): void {
  if (value.includes("\0")) throw usage(`${field} contains a NUL character`);
}

/** Sorted, deduplicated serials as [lo, hi] runs of consecutive numbers. */
function serialRuns(serials: bigint[]): [bigint, bigint][] {
  for (const s of serials) {
    // OpenSSH refuses to load a KRL naming serial 0, and sshd then refuses every login.
    if (s <= 0n || s > UINT64_MAX) throw usage(`serial ${s} is outside 1..2^64-1`);
  }
  const sorted = [...new Set(serials)].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  const runs: [bigint, bigint][] = [];
  for (const s of sorted) {
    const last = runs[runs.length - 1];
    if (last !== undefined && last[1] + 1n === s) last[1] = s;
    else runs.push([s, s]);
  }
  return runs;
}

function encodeCertSection(section: KrlSection): Buffer {
  const w = new SshWriter()
    .string(section.caKey === null ? Buffer.alloc(0) : sshPublicKeyBlob(section.caKey))
    .string(""); // reserved
  const list = new SshWriter();
  let listed = 0;
  for (const [lo, hi] of serialRuns(section.serials ?? [])) {
    if (hi - lo + 1n >= MIN_RANGE_RUN) {
      w.byte(CERT_SERIAL_RANGE).string(new SshWriter().uint64(lo).uint64(hi).toBuffer());
    } else {
      for (let s = lo; s <= hi; s++, listed++) list.uint64(s);
    }
  }
  if (listed > 0) w.byte(CERT_SERIAL_LIST).string(list.toBuffer());

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

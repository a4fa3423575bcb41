/**
 * A page of brief identity statuses (ListAgentIdentitiesRequest.brief), encoded without
 * protobuf-es's reflection. At 100,000 identities the table's listing is 5.3 MB of protobuf, and
 * creating and encoding it field by field through the schema cost the service ~0.4 s of CPU, a
 * third of the whole listing. The statuses are written here into one buffer and handed to the
 * response as its field 1 in encoded form ($unknown, which toBinary writes out verbatim): on the
 * wire the same bytes as toBinary(create(...)) (test/api/brief-page.test.ts compares them).
 * A reply in JSON (the Connect protocol or gRPC-Web with +json) has no place for encoded fields:
 * it gets the statuses as messages.
 *
 * mezctl reads the pages the same way round (readBriefPages): as ListAgentIdentitiesEncodedResponse,
 * each status left encoded, decoded here; through the schema, decoding was ~0.3 s of its CPU at
 * 100,000 identities, the most of any step, and held the table back while the service waited.
 */
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { WireType } from "@bufbuild/protobuf/wire";
import type { Transport } from "@connectrpc/connect";
import {
  AdminService,
  ListAgentIdentitiesEncodedResponseSchema,
  ListAgentIdentitiesResponseSchema,
  type ListAgentIdentitiesRequestSchema,
  type ListAgentIdentitiesResponse,
} from "./gen/mezite/v1/admin_pb.js";
import { AgentIdentityStatusSchema, type AgentIdentityStatus } from "./gen/mezite/v1/common_pb.js";

/** What a listing's table shows of an identity: the fields a brief status carries. */
export type BriefStatus = Pick<AgentIdentityStatus, "name" | "roles" | "locked" | "state" | "generation" | "lastSeen" | "certExpires">;

// Field tags of AgentIdentityStatus (common.proto), in number order as toBinary writes them.
const NAME = (1 << 3) | WireType.LengthDelimited;
const ROLES = (3 << 3) | WireType.LengthDelimited;
const LOCKED = (4 << 3) | WireType.Varint;
const GENERATION = (5 << 3) | WireType.Varint;
const LAST_SEEN = (6 << 3) | WireType.Varint;
const CERT_EXPIRES = (7 << 3) | WireType.Varint;
const STATE = (15 << 3) | WireType.LengthDelimited;
/** ListAgentIdentitiesResponse.identities */
const IDENTITIES = 1;

export function briefPage(statuses: BriefStatus[], json = false): ListAgentIdentitiesResponse {
  if (json) return create(ListAgentIdentitiesResponseSchema, { identities: statuses.map((s) => create(AgentIdentityStatusSchema, s)) });
  const sizes = statuses.map(payloadSize);
  // Zeroed: a size miscounted would send zeros, never old memory. A plain Uint8Array: its
  // subarrays (one per status) cost a fraction of a Buffer's.
  const buf = new Uint8Array(sizes.reduce((sum, s) => sum + varintSize(s) + s, 0));
  const page = create(ListAgentIdentitiesResponseSchema);
  page.$unknown = [];
  let pos = 0;
  statuses.forEach((s, i) => {
    const start = pos;
    pos = varint(buf, pos, sizes[i]!);
    pos = string(buf, pos, NAME, s.name, false);
    for (const r of s.roles) pos = string(buf, pos, ROLES, r, true);
    if (s.locked) pos = varint(buf, varint(buf, pos, LOCKED), 1);
    if (s.generation !== 0n) pos = bigVarint(buf, varint(buf, pos, GENERATION), s.generation);
    if (s.lastSeen !== 0n) pos = bigVarint(buf, varint(buf, pos, LAST_SEEN), s.lastSeen);
    if (s.certExpires !== 0n) pos = bigVarint(buf, varint(buf, pos, CERT_EXPIRES), s.certExpires);
    pos = string(buf, pos, STATE, s.state, false);
    // A length-delimited unknown field's data is its length and its bytes (BinaryReader.skip).
    page.$unknown!.push({ no: IDENTITIES, wireType: WireType.LengthDelimited, data: buf.subarray(start, pos) });
  });
  return page;
}

function payloadSize(s: BriefStatus): number {
  let n = stringSize(s.name, false);
  for (const r of s.roles) n += stringSize(r, true);
  if (s.locked) n += 2;
  if (s.generation !== 0n) n += 1 + bigVarintSize(s.generation);
  if (s.lastSeen !== 0n) n += 1 + bigVarintSize(s.lastSeen);
  if (s.certExpires !== 0n) n += 1 + bigVarintSize(s.certExpires);
  return n + stringSize(s.state, false);
}

/** Tag, length and bytes of a string field: proto3 leaves out an empty one, but not a repeated field's empty element. */
function stringSize(s: string, repeated: boolean): number {
  const n = utf8Length(s);
  return n === 0 && !repeated ? 0 : 1 + varintSize(n) + n;
}

function string(buf: Uint8Array, pos: number, tag: number, s: string, repeated: boolean): number {
  if (s === "" && !repeated) return pos;
  const n = utf8Length(s);
  pos = varint(buf, varint(buf, pos, tag), n);
  if (n !== s.length) return pos + Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength).write(s, pos, n, "utf8");
  for (let i = 0; i < n; i++) buf[pos + i] = s.charCodeAt(i);
  return pos + n;
}

/**
 * Bytes of `s` in UTF-8. Names, roles and states are ASCII, whose length is their string's: found
 * in JavaScript, and copied the same way (string), without a call into C++ for each (a third of
 * the encoding's time).
 */
function utf8Length(s: string): number {
  for (let i = 0; i < s.length; i++) if (s.charCodeAt(i) >= 0x80) return Buffer.byteLength(s);
  return s.length;
}

function varintSize(n: number): number {
  let size = 1;
  while (n >= 128) {
    n = Math.floor(n / 128);
    size++;
  }
  return size;
}

/** A non-negative number below 2^53 as a varint. */
function varint(buf: Uint8Array, pos: number, n: number): number {
  while (n >= 128) {
    buf[pos++] = (n % 128) | 128;
    n = Math.floor(n / 128);
  }
  buf[pos++] = n;
  return pos;
}

const SAFE = BigInt(Number.MAX_SAFE_INTEGER);

/** int64 and uint64 as protobuf writes them: a negative int64 as its 64-bit two's complement. */
function bigVarintSize(v: bigint): number {
  if (v > 0n && v <= SAFE) return varintSize(Number(v));
  let u = BigInt.asUintN(64, v);
  let size = 1;
  while (u >= 128n) {
    u >>= 7n;
    size++;
  }
  return size;
}

function bigVarint(buf: Uint8Array, pos: number, v: bigint): number {
  if (v > 0n && v <= SAFE) return varint(buf, pos, Number(v));
  let u = BigInt.asUintN(64, v);
  while (u >= 128n) {
    buf[pos++] = Number(u & 127n) | 128;
    u >>= 7n;
  }
  buf[pos++] = Number(u);
  return pos;
}

/** A call whose messages are JSON: application/json, application/connect+json, application/grpc+json, application/grpc-web+json. */
export function isJsonContentType(contentType: string | null): boolean {
  return /json$/i.test((contentType ?? "").split(";")[0]!.trim());
}

/** ListAgentIdentities with `brief`, its statuses decoded here rather than through the schema. */
export async function* readBriefPages(transport: Transport, request: MessageInitShape<typeof ListAgentIdentitiesRequestSchema>): AsyncGenerator<BriefStatus[]> {
  // The same method (and path), read with the output type that leaves each status encoded.
  const method = { ...AdminService.method.listAgentIdentities, output: ListAgentIdentitiesEncodedResponseSchema };
  const input = (async function* () {
    yield { ...request, brief: true };
  })();
  const response = await transport.stream(method, undefined, undefined, undefined, input, undefined);
  for await (const page of response.message) yield page.identities.map(decodeBriefStatus);
}

/**
 * One AgentIdentityStatus's brief fields from its bytes, as fromBinary would read them; any other
 * field is skipped (a newer service may send more).
 */
export function decodeBriefStatus(bytes: Uint8Array): BriefStatus {
  const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const s: BriefStatus = { name: "", roles: [], locked: false, state: "", generation: 0n, lastSeen: 0n, certExpires: 0n };
  const at = { pos: 0 };
  const text = () => {
    const n = readLength(buf, at);
    if (at.pos + n > buf.length) throw malformed();
    at.pos += n;
    return buf.toString("utf8", at.pos - n, at.pos);
  };
  while (at.pos < buf.length) {
    const tag = readLength(buf, at);
    if (tag === NAME) s.name = text();
    else if (tag === ROLES) s.roles.push(text());
    else if (tag === LOCKED) s.locked = readVarint(buf, at) !== 0n;
    else if (tag === GENERATION) s.generation = BigInt.asUintN(64, readVarint(buf, at));
    else if (tag === LAST_SEEN) s.lastSeen = BigInt.asIntN(64, readVarint(buf, at));
    else if (tag === CERT_EXPIRES) s.certExpires = BigInt.asIntN(64, readVarint(buf, at));
    else if (tag === STATE) s.state = text();
    else skipField(buf, at, tag & 7);
  }
  return s;
}

const malformed = () => new Error("the auth service sent a malformed identity status: upgrade mezctl or the service so they match");

/** A tag or a length: a varint below 2^32 (five bytes at most). */
function readLength(buf: Buffer, at: { pos: number }): number {
  const n = readShortVarint(buf, at, 5);
  if (n < 0) throw malformed();
  return n;
}

/** A varint of up to 64 bits: in Number arithmetic when 7 bytes or fewer (exact below 2^53), else through BigInt. */
function readVarint(buf: Buffer, at: { pos: number }): bigint {
  const n = readShortVarint(buf, at, 7);
  if (n >= 0) return BigInt(n);
  let big = 0n;
  for (let shift = 0n; shift < 70n; shift += 7n) {
    if (at.pos >= buf.length) throw malformed();
    const byte = buf[at.pos++]!;
    big |= BigInt(byte & 0x7f) << shift;
    if (byte < 0x80) return BigInt.asUintN(64, big);
  }
  throw malformed();
}

/** A varint of at most `maxBytes` bytes; -1, and `at` left where it was, for a longer one. */
function readShortVarint(buf: Buffer, at: { pos: number }, maxBytes: number): number {
  let n = 0;
  let scale = 1;
  for (let pos = at.pos; pos < at.pos + maxBytes; pos++) {
    if (pos >= buf.length) throw malformed();
    const byte = buf[pos]!;
    n += (byte & 0x7f) * scale;
    if (byte < 0x80) {
      at.pos = pos + 1;
      return n;
    }
    scale *= 128;
  }
  return -1;
}

function skipField(buf: Buffer, at: { pos: number }, wireType: number): void {
  if (wireType === WireType.Varint) readVarint(buf, at);
  else if (wireType === WireType.Bit64) at.pos += 8;
  else if (wireType === WireType.Bit32) at.pos += 4;
  else if (wireType === WireType.LengthDelimited) {
    const n = readLength(buf, at); // read before adding: `at.pos += readLength(...)` would add to the old position
    at.pos += n;
  }
  else throw malformed(); // groups: not in proto3
  if (at.pos > buf.length) throw malformed();
}

/**
 * A page of brief identity statuses (ListAgentIdentitiesRequest.brief), encoded without
 * protobuf-es's reflection. At 100,000 identities the table's listing is 5.3 MB of protobuf, and
 * creating and encoding it field by field through the schema cost the service ~0.4 s of CPU, a
 * third of the whole listing. The statuses are written here into one buffer and handed to the
 * response as its field 1 in encoded form ($unknown, which toBinary writes out verbatim): on the
 * wire the same bytes as toBinary(create(...)) (test/api/brief-page.test.ts compares them).
 * A reply in JSON (the Connect protocol or gRPC-Web with +json) has no place for encoded fields:
 * it gets the statuses as messages.
 */
import { create } from "@bufbuild/protobuf";
import { WireType } from "@bufbuild/protobuf/wire";
import { ListAgentIdentitiesResponseSchema, type ListAgentIdentitiesResponse } from "./gen/mezite/v1/admin_pb.js";
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
  const buf = Buffer.allocUnsafe(sizes.reduce((sum, s) => sum + varintSize(s) + s, 0));
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
  const n = Buffer.byteLength(s);
  return n === 0 && !repeated ? 0 : 1 + varintSize(n) + n;
}

function string(buf: Buffer, pos: number, tag: number, s: string, repeated: boolean): number {
  if (s === "" && !repeated) return pos;
  const n = Buffer.byteLength(s);
  pos = varint(buf, varint(buf, pos, tag), n);
  return pos + buf.write(s, pos, n, "utf8");
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
function varint(buf: Buffer, pos: number, n: number): number {
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

function bigVarint(buf: Buffer, pos: number, v: bigint): number {
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

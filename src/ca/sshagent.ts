/**
 * The SSH agent protocol (draft-miller-ssh-agent), the small part an agent that only lists and
 * signs needs: framing, the requests it reads and the replies it writes. Pure: no sockets, no
 * keys held here. Every message is `uint32 length || byte type || contents`; the length counts
 * the type byte and the contents.
 *
 * The client half (encodeSignRequest, parseIdentitiesAnswer, ...) is here for tests and tools.
 */
import { sign, type KeyObject } from "node:crypto";
import { MeziteError } from "../lib/errors.js";
import { ED25519_KEY_TYPE } from "./sshkey.js";
import { SshReader, SshWriter } from "./sshwire.js";

/** Message numbers (draft-miller-ssh-agent section 6.1). */
export const AGENT = {
  FAILURE: 5,
  SUCCESS: 6,
  REQUEST_IDENTITIES: 11,
  IDENTITIES_ANSWER: 12,
  SIGN_REQUEST: 13,
  SIGN_RESPONSE: 14,
  ADD_IDENTITY: 17,
  REMOVE_IDENTITY: 18,
  REMOVE_ALL_IDENTITIES: 19,
  ADD_SMARTCARD_KEY: 20,
  REMOVE_SMARTCARD_KEY: 21,
  LOCK: 22,
  UNLOCK: 23,
  ADD_ID_CONSTRAINED: 25,
  ADD_SMARTCARD_KEY_CONSTRAINED: 26,
  EXTENSION: 27,
  EXTENSION_FAILURE: 28,
} as const;

/** Sign request flags (section 6.3): they choose RSA hashes; Ed25519 has one signature form and ignores them. */
export const SIGN_FLAGS = { RSA_SHA2_256: 0x02, RSA_SHA2_512: 0x04 } as const;

/** OpenSSH's own cap (AGENT_MAX_LEN, 256 KiB): a longer frame is not a message but an attack or a bug. */
export const MAX_AGENT_MESSAGE = 256 * 1024;

export type AgentRequest =
  | { kind: "list" }
  | { kind: "sign"; keyBlob: Buffer; data: Buffer; flags: number }
  /** Anything else: add, remove, lock, extensions, numbers we never heard of. */
  | { kind: "unsupported"; type: number };

function malformed(detail: string): MeziteError {
  return new MeziteError("ERR_MALFORMED_KEY", `malformed agent message: ${detail}`);
}

/** The most a socket read hands over at once (libuv reads 64 KiB at a time). */
const MAX_READ = 64 * 1024;

/**
 * Splits a byte stream into message bodies (type byte and contents, without the length).
 * `append` and `next` throw ERR_MALFORMED_KEY once a frame announces more than `max` bytes, or
 * more than `maxPending` bytes wait to be cut into frames (a caller that stops taking frames must
 * stop reading too): the caller must close the connection, as there is no way to go on.
 */
export class AgentFrameReader {
  private chunks: Buffer[] = [];
  private total = 0;
  /** Bytes needed before the next frame can be cut: its length field, then the whole frame. */
  private need = 4;

  /** By default, one whole frame at the cap and one more read. */
  constructor(
    private readonly max = MAX_AGENT_MESSAGE,
    private readonly maxPending = 4 + max + MAX_READ,
  ) {}

  /** Takes received bytes without cutting them: `next` does that, one frame at a time. */
  append(chunk: Buffer): void {
    if (chunk.length === 0) return;
    if (this.total + chunk.length > this.maxPending) {
      throw malformed(`${this.total + chunk.length} bytes of requests waiting, over the ${this.maxPending}-byte limit`);
    }
    this.chunks.push(chunk);
    this.total += chunk.length;
  }

  /**
   * The next whole frame's body, or undefined until more bytes come. Chunks are only joined once a
   * whole frame is there, so a frame sent a byte at a time costs one copy, not one per byte.
   */
  next(): Buffer | undefined {
    if (this.total < this.need) return undefined;
    const buf = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks);
    this.chunks = [buf];
    const len = buf.readUInt32BE(0);
    if (len > this.max) throw malformed(`a frame of ${len} bytes is over the ${this.max}-byte limit`);
    if (buf.length < 4 + len) {
      this.need = 4 + len;
      return undefined;
    }
    // A copy: the caller may keep it while the buffer moves on.
    const body = Buffer.from(buf.subarray(4, 4 + len));
    const rest = buf.subarray(4 + len);
    this.chunks = rest.length > 0 ? [rest] : [];
    this.total = rest.length;
    this.need = 4;
    return body;
  }

  /** `append`, then every whole frame there is. */
  push(chunk: Buffer): Buffer[] {
    this.append(chunk);
    const out: Buffer[] = [];
    for (let body = this.next(); body !== undefined; body = this.next()) out.push(body);
    return out;
  }

  /** Bytes received but not yet cut into frames. */
  get pending(): number {
    return this.total;
  }
}

/** Frames a message body: the uint32 length in front. */
export function frame(body: Buffer): Buffer {
  const len = Buffer.alloc(4);
  len.writeUInt32BE(body.length);
  return Buffer.concat([len, body]);
}

/** Reads one message body. Throws ERR_MALFORMED_KEY for an empty body or a list/sign request that does not parse. */
export function parseAgentRequest(body: Buffer): AgentRequest {
  if (body.length === 0) throw malformed("empty message");
  const r = new SshReader(body, "ERR_MALFORMED_KEY", "agent message");
  const type = r.byte("message type");
  switch (type) {
    case AGENT.REQUEST_IDENTITIES:
      r.end();
      return { kind: "list" };
    case AGENT.SIGN_REQUEST: {
      const keyBlob = Buffer.from(r.string("key blob"));
      const data = Buffer.from(r.string("data"));
      const flags = r.uint32("flags");
      r.end();
      return { kind: "sign", keyBlob, data, flags };
    }
    default:
      return { kind: "unsupported", type };
  }
}

export interface AgentIdentity {
  /** The public key or certificate blob, as on the wire. */
  blob: Buffer;
  comment: string;
}

export function encodeIdentitiesAnswer(ids: AgentIdentity[]): Buffer {
  const w = new SshWriter().byte(AGENT.IDENTITIES_ANSWER).uint32(ids.length);
  for (const id of ids) w.string(id.blob).string(id.comment);
  return frame(w.toBuffer());
}

/** SSH_AGENT_SIGN_RESPONSE around an already encoded signature blob. */
export function encodeSignResponse(signatureBlob: Buffer): Buffer {
  return frame(new SshWriter().byte(AGENT.SIGN_RESPONSE).string(signatureBlob).toBuffer());
}

export const FAILURE_REPLY: Buffer = frame(Buffer.of(AGENT.FAILURE));

/** An Ed25519 signature as SSH carries it (RFC 8709): string "ssh-ed25519", string 64-byte signature. */
export function ed25519SignatureBlob(privateKey: KeyObject, data: Uint8Array): Buffer {
  return new SshWriter().string(ED25519_KEY_TYPE).string(sign(null, data, privateKey)).toBuffer();
}

// The client half.

export function encodeRequestIdentities(): Buffer {
  return frame(Buffer.of(AGENT.REQUEST_IDENTITIES));
}

export function encodeSignRequest(keyBlob: Uint8Array, data: Uint8Array, flags = 0): Buffer {
  return frame(new SshWriter().byte(AGENT.SIGN_REQUEST).string(keyBlob).string(data).uint32(flags).toBuffer());
}

/** Reads an SSH_AGENT_IDENTITIES_ANSWER body; throws on anything else (FAILURE included). */
export function parseIdentitiesAnswer(body: Buffer): AgentIdentity[] {
  const r = new SshReader(body, "ERR_MALFORMED_KEY", "agent reply");
  const type = r.byte("message type");
  if (type !== AGENT.IDENTITIES_ANSWER) r.fail(`expected IDENTITIES_ANSWER (12), got ${type}`);
  const n = r.uint32("key count");
  const ids: AgentIdentity[] = [];
  for (let i = 0; i < n; i++) ids.push({ blob: Buffer.from(r.string("key blob")), comment: r.text("comment") });
  r.end();
  return ids;
}

/** Reads an SSH_AGENT_SIGN_RESPONSE body and returns the signature blob; throws on anything else. */
export function parseSignResponse(body: Buffer): Buffer {
  const r = new SshReader(body, "ERR_MALFORMED_KEY", "agent reply");
  const type = r.byte("message type");
  if (type !== AGENT.SIGN_RESPONSE) r.fail(`expected SIGN_RESPONSE (14), got ${type}`);
  const sig = Buffer.from(r.string("signature"));
  r.end();
  return sig;
}

/**
 * What a client writes from a join or renewal reply (ssh_known_hosts, user_ca.pub, x509_ca.pem,
 * node.json, the principals it logs in as) must be one well-formed value per item: a key that
 * parses, a PEM holding exactly one certificate, a login or label of the shape the service makes.
 * The reply's MAC already proves the service sent it; this keeps one odd value from becoming a
 * second line in a file that ssh or sshd reads (SPEC §4). Both clients call these before writing.
 */
import type { IssuedCertificates } from "./gen/mezite/v1/common_pb.js";
import type { NodeCredentials } from "./gen/mezite/v1/join_pb.js";
import { parseAuthorizedKey } from "../ca/sshkey.js";
import { parseCertificatePem, splitCertificateBundle } from "../ca/x509.js";
import { MeziteError } from "../lib/errors.js";
import { LABEL_KEY_PATTERN, LABEL_VALUE_PATTERN, LOGIN_PATTERN, NAME_PATTERN, isHostPrincipal } from "../rbac/names.js";


/** C0 controls, DEL and C1 controls: none belongs in a value that is written as a line. */
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const CA_STATE = /^[A-Za-z0-9_.:=+/-]{0,128}$/;

function refuse(what: string): never {
  throw new MeziteError("ERR_MALFORMED_CERT", `the auth service sent ${what}: refusing the reply, nothing was written`);
}

/** An `ssh-ed25519 BASE64` line (a comment of printable text allowed), one line, nothing else. */
function sshKeyLine(line: string, what: string): void {
  if (CONTROL.test(line) || line !== line.trim()) refuse(`a malformed ${what}`);
  try {
    parseAuthorizedKey(line);
  } catch {
    refuse(`a malformed ${what}`);
  }
}

/** A PEM text that is exactly one certificate, nothing before or after it. */
function singleCertificatePem(pem: string, what: string): void {
  let blocks: string[] = [];
  try {
    blocks = splitCertificateBundle(pem);
    parseCertificatePem(pem);
  } catch {
    refuse(`a malformed ${what}`);
  }
  if (blocks.length !== 1 || pem.trim() !== blocks[0]!.trim()) refuse(`a malformed ${what}`);
}

/** A PEM bundle of certificates and nothing else. */
function certificateBundle(bundle: string, what: string): void {
  let blocks: string[] = [];
  try {
    blocks = splitCertificateBundle(bundle);
  } catch {
    refuse(`a malformed ${what}`);
  }
  if (bundle.replace(/\s+/g, "") !== blocks.join("").replace(/\s+/g, "")) refuse(`a malformed ${what}`);
  blocks.forEach((b) => singleCertificatePem(b, what));
}

function list(values: string[], what: string, check: (v: string) => boolean): void {
  for (const v of values) if (typeof v !== "string" || CONTROL.test(v) || !check(v)) refuse(`a malformed ${what}`);
}

/** An agent's join or renewal reply. */
export function checkIssuedValues(c: IssuedCertificates): void {
  if (c.userCaSshKeys.length === 0 || c.hostCaSshKeys.length === 0 || c.userCaX509Pems.length === 0) refuse("no CA keys");
  for (const k of c.userCaSshKeys) sshKeyLine(k, "User CA key");
  for (const k of c.hostCaSshKeys) sshKeyLine(k, "Host CA key");
  for (const k of c.revokedHostKeys) sshKeyLine(k, "revoked host key");
  for (const p of c.userCaX509Pems) singleCertificatePem(p, "User CA certificate");
  certificateBundle(c.tlsCaPem, "TLS CA bundle");
  list(c.principals, "principal", (p) => LOGIN_PATTERN.test(p));
  list([c.identityName], "identity name", (n) => NAME_PATTERN.test(n));
  list([c.identityId, c.instanceId], "identity or instance id", (id) => UUID.test(id));
  list([c.caState], "CA state", (s) => CA_STATE.test(s));
}

/** A node's join or renewal reply. */
export function checkNodeValues(c: NodeCredentials): void {
  for (const k of c.userCaSshKeys) sshKeyLine(k, "User CA key");
  for (const k of c.hostCaSshKeys) sshKeyLine(k, "Host CA key");
  certificateBundle(c.tlsCaPem, "TLS CA bundle");
  list([c.nodeName], "node name", isHostPrincipal);
  list(Object.keys(c.labels), "label key", (k) => LABEL_KEY_PATTERN.test(k));
  list(Object.values(c.labels), "label value", (v) => LABEL_VALUE_PATTERN.test(v));
  list([c.caState], "CA state", (s) => CA_STATE.test(s));
}

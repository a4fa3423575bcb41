/**
 * Certificate issuance for agent identities (SPEC §5): one SSH user certificate and one X.509
 * output certificate for the machine's tools, and a renewal certificate that alone can renew.
 */
import { createHash, type KeyObject } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import { CERT_EXTENSIONS } from "../api/cert-extensions.js";
import { IssuedCertificatesSchema, type IssuedCertificates } from "../api/gen/mezite/v1/common_pb.js";
import { formatSshCertificate, signSshCertificate } from "../ca/sshcert.js";
// Random 64-bit serials: unique per cluster without a counter shared between auth services.
import { issueClientCertificate, randomSerial, type P256Point } from "../ca/x509.js";
import { MeziteError } from "../lib/errors.js";
import { principalsFor, requirePrincipals, sessionTtlMs, type RoleAccess } from "../rbac/access.js";
import { certificateOptions, type RoleOptions } from "../rbac/options.js";
import { hasLoginTemplates, resolveRoles, type JoinClaims } from "../rbac/template.js";
import { caState, caStatesOf, tlsCaBundle, trustedSshLines, trustedX509Pems, type CaStates, type ClusterCas } from "./cas.js";
import type { IdentityRecord, IssuedCertRecord } from "./records.js";

/** Certificates are valid from a minute ago, so a node with a slightly slow clock accepts them. */
export const BACKDATE_MS = 60_000;

const EXT = CERT_EXTENSIONS;

export interface PublicKeys {
  ssh: KeyObject;
  x509: P256Point;
  renewal: P256Point;
}

/** Identifies the keys of a request, for recognising a retry of the same renewal. */
export function keysHash(sshLine: string, x509Der: Uint8Array, renewalDer: Uint8Array): string {
  return createHash("sha256").update(sshLine).update("\0").update(x509Der).update("\0").update(renewalDer).digest("hex");
}

/** What a certificate tells a node about its roles, so the node decides without the auth service. */
export function roleRulesExtension(roles: RoleAccess[]): string {
  return JSON.stringify(roles.map((r) => ({ role: r.role, allow: r.allow, deny: r.deny })));
}

/** A role as issuance reads it: rules (templates unresolved) and certificate options. */
export type IssueRole = RoleAccess & { options?: RoleOptions | undefined };

/** An instance's roles as its certificates carry them, resolved once per join or renewal (instanceAccess). */
export interface InstanceAccess {
  /** As stored, templates unresolved: what tells why no login is left. */
  stored: IssueRole[];
  /** Their templates resolved from the instance's join's claims: nodes never see a template. */
  roles: IssueRole[];
  /** The logins its certificates name: the resolved allowed logins minus denied ones (empty when nothing is left). */
  principals: string[];
}

export function instanceAccess(roles: IssueRole[], claims: JoinClaims | undefined): InstanceAccess {
  const resolved = resolveRoles(roles, claims);
  return { stored: roles, roles: resolved, principals: principalsFor(resolved) };
}

export interface IssueInput {
  cas: ClusterCas;
  clusterName: string;
  identity: IdentityRecord;
  /** Its roles, resolved from what its join recorded (the claims of an ID-token join). */
  access: InstanceAccess;
  instanceId: string;
  generation: bigint;
  keys: PublicKeys;
  requestedTtlMs: number;
  now: number;
  /** Host keys of removed or replaced nodes (nodes.ts revokedHostKeys). */
  revokedHostKeys: string[];
}

export interface Issued {
  certs: IssuedCertificates;
  record: IssuedCertRecord;
  /** Fingerprint of the User CA key that signed, for `mezctl ca status`. */
  userCaKey: string;
  /** What the certificates' ca_state stands for, per CA (records.ts InstanceRecord.caStates). */
  caStates: CaStates;
}

export async function issueAgentCertificates(i: IssueInput): Promise<Issued> {
  const { roles } = i.access;
  if (i.access.principals.length === 0 && hasLoginTemplates(i.access.stored)) {
    const names = roles.map((r) => r.role).join(", ");
    throw new MeziteError("ERR_NO_LOGINS", `roles [${names}] allow this instance no SSH login: its join's claims leave no valid login in the {{claims.*}} templates (a claim missing, not a valid login name, or denied)`);
  }
  const principals = requirePrincipals(roles);
  const options = certificateOptions(roles);
  const ttl = sessionTtlMs(roles, i.requestedTtlMs);
  const notBefore = i.now - BACKDATE_MS;
  const notAfter = i.now + ttl;
  const serial = randomSerial();
  const roleNames = roles.map((r) => r.role);
  const sshBlob = signSshCertificate(
    {
      type: "user",
      publicKey: i.keys.ssh,
      serial,
      keyId: `agent-identity/${i.identity.name}`,
      principals,
      validAfter: Math.floor(notBefore / 1000),
      validBefore: Math.floor(notAfter / 1000),
      criticalOptions: options.criticalOptions,
      extensions: {
        ...options.extensions,
        [EXT.identity]: JSON.stringify({ name: i.identity.name, id: i.identity.id, instance: i.instanceId }),
        [EXT.roles]: roleNames.join(","),
        [EXT.roleRules]: roleRulesExtension(roles),
      },
    },
    i.cas.user.sshPrivate,
  );
  const validity = { notBefore: new Date(notBefore), notAfter: new Date(notAfter) };
  const ca = { caCertPem: i.cas.user.x509CertPem, caKey: i.cas.user.x509Key };
  const [x509Pem, renewalPem] = await Promise.all([
    issueClientCertificate({
      ...ca,
      ...validity,
      publicKey: i.keys.x509,
      commonName: i.identity.name,
      organization: i.clusterName,
      spiffeId: `spiffe://${i.clusterName}/agent-identity/${i.identity.name}`,
      kind: "output",
      identityId: i.identity.id,
      instanceId: i.instanceId,
    }),
    issueClientCertificate({
      ...ca,
      ...validity,
      publicKey: i.keys.renewal,
      commonName: i.identity.name,
      organization: i.clusterName,
      kind: "renewal",
      identityId: i.identity.id,
      instanceId: i.instanceId,
      generation: i.generation,
    }),
  ]);
  const certs = create(IssuedCertificatesSchema, {
    sshCertificate: formatSshCertificate(sshBlob, `agent-identity/${i.identity.name}`),
    x509CertificatePem: x509Pem,
    renewalCertificatePem: renewalPem,
    userCaSshKeys: trustedSshLines(i.cas.user),
    hostCaSshKeys: trustedSshLines(i.cas.host),
    userCaX509Pems: trustedX509Pems(i.cas.user),
    tlsCaPem: tlsCaBundle(i.cas),
    caState: caState(i.cas),
    serial,
    expires: BigInt(notAfter),
    generation: i.generation,
    identityName: i.identity.name,
    identityId: i.identity.id,
    instanceId: i.instanceId,
    principals,
    revokedHostKeys: i.revokedHostKeys,
  });
  const record: IssuedCertRecord = {
    serial: serial.toString(),
    identityId: i.identity.id,
    identityName: i.identity.name,
    instanceId: i.instanceId,
    roles: roleNames,
    principals,
    expires: notAfter,
  };
  return { certs, record, userCaKey: i.cas.user.sshFingerprint, caStates: caStatesOf(i.cas) };
}

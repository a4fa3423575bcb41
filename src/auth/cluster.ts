/**
 * The cluster's name (SPEC §2, §13): it names the CAs and the SPIFFE trust domain, so every auth
 * service of one cluster must use the same one. The first service stores it in the backend; a
 * later one with another --cluster-name refuses to start, and one without the flag uses it. A
 * backend from before the name was stored takes the name its CAs were made with.
 */
import { X509Certificate } from "node:crypto";
import { hostname } from "node:os";
import type { Backend } from "../backend/backend.js";
import { MeziteError, isMeziteError } from "../lib/errors.js";
import { encode, keys, load } from "./records.js";

/** A SPIFFE trust domain (lower case letters, digits, '.', '-', '_'), which also fits DNS. */
const CLUSTER_NAME = /^[a-z0-9]([a-z0-9._-]{0,251}[a-z0-9])?$/;

export function checkClusterName(name: string, where: string): string {
  if (!CLUSTER_NAME.test(name)) {
    throw new MeziteError("ERR_CONFIG", `${where} "${name.slice(0, 64)}" is not a valid cluster name: use lower case letters, digits, '.', '-' and '_' (it is the SPIFFE trust domain)`);
  }
  return name;
}

/** The name an existing backend's CAs were made with (their certificates' organization), if it has CAs. */
async function caClusterName(backend: Backend): Promise<string | undefined> {
  const ca = await load<{ x509_cert_pem: string }>(backend, keys.ca("user"));
  if (!ca) return undefined;
  let organization: string | undefined;
  try {
    const subject = new X509Certificate(ca.value.x509_cert_pem).subject;
    organization = /^O=(.*)$/m.exec(subject)?.[1] ?? /^CN=(\S+) user CA/m.exec(subject)?.[1];
  } catch (e) {
    throw new MeziteError("ERR_CONFIG", `the User CA's certificate in this backend cannot be read: ${(e as Error).message}; give --cluster-name`, { cause: e });
  }
  if (organization === undefined) throw new MeziteError("ERR_CONFIG", "the user CA's certificate in this backend names no cluster: give --cluster-name");
  return checkClusterName(organization, "the cluster name in the user CA's certificate,");
}

/**
 * The name this service runs with: the stored one, which `requested` (an explicit --cluster-name)
 * must match; in a backend with CAs but no stored name, the name the CAs were made with; on a new
 * cluster `requested`, else this host's name; stored for the others. `namedAfterHost` hears the
 * name when this call stored this host's name: the first start without --cluster-name, which says
 * so (defaultNameNotice) before its ready line.
 */
export async function resolveClusterName(backend: Backend, requested: string | undefined, namedAfterHost?: (name: string) => void): Promise<string> {
  if (requested !== undefined) checkClusterName(requested, "--cluster-name");
  const stored = await load<{ name: string }>(backend, keys.clusterName);
  if (stored) return matching(stored.value.name, requested);
  const fromCas = await caClusterName(backend);
  const name = fromCas !== undefined ? matching(fromCas, requested) : (requested ?? checkClusterName(hostname().toLowerCase(), "this host's name, the default cluster name,"));
  try {
    await backend.create(keys.clusterName, encode({ name }));
    if (requested === undefined) namedAfterHost?.(name);
    return name;
  } catch (e) {
    if (!isMeziteError(e, "ERR_ALREADY_EXISTS")) throw e;
    const winner = await load<{ name: string }>(backend, keys.clusterName); // another service started at the same moment
    return matching(winner!.value.name, requested);
  }
}

function matching(stored: string, requested: string | undefined): string {
  if (requested !== undefined && requested !== stored) {
    throw new MeziteError("ERR_CONFIG", `--cluster-name=${requested} does not match this backend's cluster "${stored}": leave the flag out, or give --cluster-name=${stored}`);
  }
  return stored;
}

/**
 * What the first start without --cluster-name says: the name it chose, and that it cannot change
 * later, since ID tokens are made for it (their audience) and the CAs and SPIFFE IDs carry it.
 */
export function defaultNameNotice(name: string): string {
  return `no --cluster-name given: this new cluster is named "${name}" after this host; ID tokens must be made for the audience "${name}" (mezctl status shows it) and the CAs carry it, so it cannot change later (for another name, start on a new data dir and backend with --cluster-name)`;
}

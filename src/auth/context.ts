import type { Backend } from "../backend/backend.js";
import type { ParsedCert } from "../ca/x509.js";
import type { Logger } from "../lib/log.js";
import type { Audit } from "./audit.js";
import type { CaStore, ClusterCas } from "./cas.js";

/** Everything the service's operations share; clock passed in so tests can freeze time. */
export interface AuthContext {
  backend: Backend;
  /** Replaced whenever a CA record changes (rotation.ts CaWatcher): read it afresh, never keep it. */
  cas: ClusterCas;
  caStore: CaStore;
  /** Reloads the CAs now if they changed (rotation.ts CaWatcher.refresh). */
  refreshCas: (now?: boolean) => Promise<void>;
  clusterName: string;
  publicAddrs: string[];
  now: () => number;
  audit: Audit;
  log: Logger;
}

/**
 * Who made a call: the remote address, and the client certificate, already checked to be of the
 * kind the called service takes and issued by that kind's CA (server.ts).
 */
export interface Caller {
  remoteAddr: string;
  cert: ParsedCert | undefined;
}

/** An admin call's caller, with the fields every audit event of an admin call carries. */
export interface AdminCaller extends Caller {
  audit: { actor: string; remote_addr: string };
}

import type { Backend } from "../backend/backend.js";
import type { Logger } from "../lib/log.js";
import type { Audit } from "./audit.js";
import type { ClusterCas } from "./cas.js";

/** Everything the service's operations share; clock passed in so tests can freeze time. */
export interface AuthContext {
  backend: Backend;
  cas: ClusterCas;
  clusterName: string;
  publicAddrs: string[];
  now: () => number;
  audit: Audit;
  log: Logger;
}

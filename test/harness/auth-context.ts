/** An auth service's context without the service, for unit tests of its operations. */
import { PassThrough } from "node:stream";
import type { Backend } from "../../src/backend/backend.js";
import { Audit } from "../../src/auth/audit.js";
import { openCaStore } from "../../src/auth/cas.js";
import type { AuthContext } from "../../src/auth/context.js";
import { createLogger } from "../../src/lib/log.js";

export async function unitAuthContext(o: { backend: Backend; dataDir: string; clusterName: string; now: () => number }): Promise<AuthContext> {
  const log = createLogger(new PassThrough());
  const { store, cas } = await openCaStore(o.backend, o.dataDir, o.clusterName, o.now());
  const ctx: AuthContext = {
    backend: o.backend,
    cas,
    caStore: store,
    // What the service's CaWatcher does, at once: tests see a phase change as soon as they make it.
    refreshCas: async () => {
      ctx.cas = (await store.reload(ctx.cas)) ?? ctx.cas;
    },
    clusterName: o.clusterName,
    publicAddrs: [],
    now: o.now,
    audit: new Audit(o.backend, log, o.now),
    log,
  };
  return ctx;
}

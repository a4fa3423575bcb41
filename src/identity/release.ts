/**
 * `mezd identity release` and `msh release` (SPEC §19): the job is over, so its instance ends on
 * the auth service (every certificate it holds goes into the KRL, which nodes apply within
 * seconds), then the outputs and the daemon's state are removed here. Idempotent: a dir already
 * released has nothing left and says so; an instance already ended on the service is not an error.
 *
 * The daemon's way authenticates with the renewal certificate in its storage dir; msh's with the
 * output certificate of the destination dir, which the service admits for this one call on its
 * own instance (auth/release.ts says why). Either way the local files go only once the service
 * has answered: a release that could not reach it leaves them, so running it again can still
 * revoke.
 */
import { existsSync } from "node:fs";
import { join } from "node:path";
import type { Client } from "@connectrpc/connect";
import { AgentService } from "../api/gen/mezite/v1/agent_pb.js";
import { RenewService, type ReleaseResponse } from "../api/gen/mezite/v1/renew_pb.js";
import { connect } from "../api/client.js";
import { fromConnectError } from "../api/errors.js";
import { Backoff, sleep } from "../lib/backoff.js";
import { MeziteError, isFinalError } from "../lib/errors.js";
import { readFileNoFollow } from "../lib/files.js";
import { OUTPUT_FILES, removeOutputs } from "./outputs.js";
import { Storage } from "./storage.js";

export interface ReleaseResult {
  /** released: ended now; already_ended: the service had ended it before; expired: nothing valid was left to revoke; nothing: no outputs or state here. */
  outcome: "released" | "already_ended" | "expired" | "nothing";
  identity?: string;
  instance?: string;
  revoked?: number;
  removed: string[];
}

/** How long a release retries an auth service it cannot reach (a CI job's last step should not hang). */
export const RELEASE_RETRY_MS = 20_000;

/** Calls `release` until it answers, a final error, or RELEASE_RETRY_MS. */
async function callRelease(addr: string, release: () => Promise<ReleaseResponse>, budgetMs = RELEASE_RETRY_MS): Promise<ReleaseResponse> {
  const started = Date.now();
  const backoff = new Backoff({ baseMs: 500, maxMs: 5_000, minMs: 250 });
  for (;;) {
    try {
      return await release();
    } catch (e) {
      const err = fromConnectError(e, addr);
      if (isFinalError(err) || err.code === "ERR_USAGE" || Date.now() - started + 250 > budgetMs) throw err;
      await sleep(Math.min(backoff.next(), budgetMs - (Date.now() - started)), new AbortController().signal);
    }
  }
}

function cleanUp(dest: string, storage: Storage, answer: ReleaseResponse | undefined, outcome: ReleaseResult["outcome"]): ReleaseResult {
  const removed = removeOutputs(dest);
  if (storage.removeAll()) removed.push(join(storage.dir, "state.json"));
  return {
    outcome,
    removed,
    ...(answer ? { identity: answer.identity, instance: answer.instanceId, revoked: answer.revoked } : {}),
  };
}

const hasOutputs = (dest: string) => OUTPUT_FILES.some((f) => existsSync(join(dest, f)));

/** `mezd identity release`: with the renewal certificate in the storage dir. */
export async function releaseWithState(o: { destinationDir: string; storageDir: string; now?: number }): Promise<ReleaseResult> {
  const storage = new Storage(o.storageDir);
  const state = storage.loadState();
  if (!state) {
    if (!hasOutputs(o.destinationDir)) return { outcome: "nothing", removed: [] };
    throw new MeziteError(
      "ERR_USAGE",
      `no daemon state in ${o.storageDir} to release with: pass --storage-dir, or run msh release --identity-dir=${o.destinationDir} (it uses the output certificate)`,
    );
  }
  // Certificates past their expiry are refused by every node already: nothing is left to revoke.
  if (state.expires <= (o.now ?? Date.now())) return cleanUp(o.destinationDir, storage, undefined, "expired");
  const client = connect(RenewService, state.auth_server, { certPem: state.renewal_cert_pem, keyPem: state.renewal_key_pem, caPem: state.tls_ca_pem });
  const answer = await callRelease(state.auth_server, () => client.release({}));
  return cleanUp(o.destinationDir, storage, answer, answer.alreadyEnded ? "already_ended" : "released");
}

/** `msh release`: with the destination dir's output certificate; where the service is comes from `target`. */
export async function releaseWithOutputs(
  o: { destinationDir: string; storageDir: string; validBeforeMs: number | undefined; target: () => { addr: string; caPem: string }; now?: number },
): Promise<ReleaseResult> {
  const storage = new Storage(o.storageDir);
  if (o.validBeforeMs === undefined) {
    if (!hasOutputs(o.destinationDir) && !existsSync(join(o.storageDir, "state.json"))) return { outcome: "nothing", removed: [] };
    throw new MeziteError("ERR_NOT_FOUND", `${join(o.destinationDir, "ssh_cert")} is missing: nothing to release with (mezd identity release uses the daemon's storage dir)`);
  }
  if (o.validBeforeMs <= (o.now ?? Date.now())) return cleanUp(o.destinationDir, storage, undefined, "expired");
  const { addr, caPem } = o.target();
  const certPem = readFileNoFollow(join(o.destinationDir, "x509_cert.pem"));
  const keyPem = readFileNoFollow(join(o.destinationDir, "x509_key.pem"));
  if (certPem === undefined || keyPem === undefined) throw new MeziteError("ERR_NOT_FOUND", `x509_cert.pem or x509_key.pem is missing in ${o.destinationDir}: nothing to release with`);
  const client: Client<typeof AgentService> = connect(AgentService, addr, { certPem, keyPem, caPem });
  const answer = await callRelease(addr, () => client.releaseInstance({}));
  return cleanUp(o.destinationDir, storage, answer, answer.alreadyEnded ? "already_ended" : "released");
}

/** The one line a release prints (stdout). */
export function releaseLine(r: ReleaseResult, dest: string): string {
  const who = `agent identity ${r.identity ?? "?"} instance ${r.instance ?? "?"}`;
  switch (r.outcome) {
    case "released":
      return `released ${who}: ${r.revoked} certificate${r.revoked === 1 ? "" : "s"} revoked (nodes refuse them within seconds); outputs removed from ${dest}\n`;
    case "already_ended":
      return `${who} was already released (or removed by an admin); outputs removed from ${dest}\n`;
    case "expired":
      return `the certificates in ${dest} had expired: nothing left to revoke; outputs removed\n`;
    case "nothing":
      return existsSync(dest)
        ? `nothing to release in ${dest}: already released (no certificates or daemon state left)\n`
        : `nothing to release: ${dest} does not exist (no join wrote it, or a release removed it)\n`;
  }
}


/**
 * The admin certificate in the data dir's admin.identity (SPEC §2, §13). It lives 12 hours, and
 * every auth service rewrites its own admin.identity well before that, so mezctl on that host
 * always has a valid one while a copy taken elsewhere dies within hours. `mezctl admin
 * revoke-certs` refuses every admin certificate issued until then, at once, on every auth service
 * sharing the backend; each service writes a fresh admin.identity within a minute (the one that
 * took the call at once).
 */
import { generateP256, issueClientCertificate, privateKeyToPem, type ParsedCert } from "../ca/x509.js";
import { writeAdminIdentity } from "../api/admin-identity.js";
import { MeziteError } from "../lib/errors.js";
import type { AdminCaller, AuthContext } from "./context.js";
import { tlsCaBundle } from "./cas.js";
import { BACKDATE_MS } from "./issue.js";
import { encode, keys, load } from "./records.js";

export const ADMIN_CERT_TTL_MS = 12 * 3_600_000;
/** How often a service looks whether its admin.identity is due (half its life gone, or revoked). */
const CHECK_EVERY_MS = 60_000;

/** When a certificate was issued: its notBefore (whole seconds) is backdated by BACKDATE_MS. */
const issuedAt = (cert: { notBefore: Date }) => cert.notBefore.getTime() + BACKDATE_MS;

/** Admin certificates issued before this instant are refused (0: none); dashboard sessions opened before it end. */
export async function revokedBefore(ctx: AuthContext): Promise<number> {
  return (await load<{ before: number }>(ctx.backend, keys.adminRevokedBefore))?.value.before ?? 0;
}

/** Refuses an admin certificate issued before the last `revoke-certs`. */
export async function checkAdminCert(ctx: AuthContext, cert: ParsedCert): Promise<void> {
  if (issuedAt(cert) < (await revokedBefore(ctx))) {
    throw new MeziteError("ERR_NOT_AUTHORIZED", "this admin certificate was revoked: use the admin.identity the auth service has written since into its data dir");
  }
}

/** Writes admin.identity now, and again whenever it is half way to expiry or revoked. */
export class AdminIdentityKeeper {
  private issued = 0;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly ctx: AuthContext,
    private readonly path: string,
    private readonly authAddr: string,
  ) {}

  async start(): Promise<void> {
    await this.write();
    this.timer = setInterval(() => void this.refresh().catch((e: unknown) => this.ctx.log.error("could not renew admin.identity", { error: (e as Error).message })), CHECK_EVERY_MS);
    this.timer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
  }

  /** Rewrites admin.identity if it is due, or at once with `now` (a CA's signing or trusted keys changed). */
  async refresh(now = false): Promise<void> {
    const before = await revokedBefore(this.ctx);
    if (!now && this.issued >= before && this.ctx.now() < this.issued + ADMIN_CERT_TTL_MS / 2) return;
    // A certificate's notBefore has whole seconds: one issued in the very second of a revocation
    // would read as issued before it.
    const wait = before - this.ctx.now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    await this.write();
  }

  private async write(): Promise<void> {
    const { ctx } = this;
    const now = ctx.now();
    const keys = generateP256();
    const certPem = await issueClientCertificate({
      caCertPem: ctx.cas.user.x509CertPem,
      caKey: ctx.cas.user.x509Key,
      publicKey: keys.publicKey,
      notBefore: new Date(now - BACKDATE_MS),
      notAfter: new Date(now + ADMIN_CERT_TTL_MS),
      commonName: "admin",
      organization: ctx.clusterName,
      kind: "admin",
    });
    writeAdminIdentity(this.path, {
      version: 1,
      cluster_name: ctx.clusterName,
      auth_server: this.authAddr,
      cert_pem: certPem,
      key_pem: privateKeyToPem(keys.privateKey),
      ca_pem: tlsCaBundle(ctx.cas),
    });
    this.issued = Math.floor((now - BACKDATE_MS) / 1000) * 1000 + BACKDATE_MS;
  }
}

/** `mezctl admin revoke-certs`: every admin certificate issued until now is refused from now on. */
export async function revokeAdminCertificates(ctx: AuthContext, by: AdminCaller): Promise<number> {
  const before = Math.ceil(ctx.now() / 1000) * 1000;
  await ctx.backend.put(keys.adminRevokedBefore, encode({ before }));
  await ctx.audit.emit({ type: "admin.revoke_certificates", ...by.audit, detail: `admin certificates issued before ${new Date(before).toISOString()} revoked` });
  return before;
}

/**
 * A role's max_session_ttl below --renewal-interval (SPEC §5, §6): a daemon on its defaults (1h
 * requested, every 20m) gets 1-minute certificates. It says so once, renews by 2/3 of the
 * lifetime (not 5 s before the expiry), and through an auth service outage over that point it
 * keeps trying up to the expiry, so a service back in the last seconds still renews in time; an
 * outage that outlasts the certificates ends the daemon at their expiry with what to do.
 */
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { mezctlOk, tokenFrom } from "../harness/auth.js";
import { JOINED, RENEWED, identityTestbed, logLines, startDaemon } from "./fixture.js";

const bed = identityTestbed("renewal-short-ttl");

const SHORT_ROLE = `kind: role
metadata:
  name: short-lived
spec:
  options:
    max_session_ttl: 1m
  allow:
    logins:
      - deploy
`;
const FAILED = /"msg":"issue failed; retrying"/;
const SHORT_WARNING = /"level":"warn","msg":"the roles grant certificates no longer than --renewal-interval/;

test("roles capping certificates at 1m under the default 20m interval: one warning, renewal by 2/3 of the lifetime, retries up to the expiry", async () => {
  const rolePath = join(bed.tmp, "short-lived.yaml");
  writeFileSync(rolePath, SHORT_ROLE);
  await mezctlOk(bed.auth, "create", "-f", rolePath);
  const token = tokenFrom(await mezctlOk(bed.auth, "agent-identities", "add", "--name=short", "--roles=short-lived"));
  const daemon = startDaemon(bed.auth.addr, join(bed.tmp, "certs"), [], { MEZITE_TOKEN: token });
  await daemon.waitFor(JOINED);
  await daemon.waitFor(SHORT_WARNING);
  const lines = () => logLines(daemon.output());
  const joined = lines().find((l) => l["msg"] === "agent identity joined")!;
  const joinedAt = Date.parse(joined["time"] as string);
  const expires = Date.parse(joined["expires"] as string);
  const lifetime = expires - joinedAt;
  assert.ok(lifetime > 50_000 && lifetime <= 60_000, `granted ${lifetime} ms`);

  // The service goes away before the renewal is due, and comes back only once the daemon's next
  // attempt is in the last 10 s of the lifetime.
  await bed.auth.kill9();
  const retries = () => lines().filter((l) => l["msg"] === "issue failed; retrying");
  const plannedAt = (l: Record<string, unknown>) => Date.parse(l["time"] as string) + (l["retry_in_ms"] as number);
  await daemon.waitFor(FAILED, 1, expires - Date.now());
  const firstTry = Date.parse(retries()[0]!["time"] as string) - joinedAt;
  process.stderr.write(`# granted ${lifetime} ms; first renewal attempt ${firstTry} ms after the join\n`);
  // 2/3 at the latest; the log line comes a moment after the attempt.
  assert.ok(firstTry <= (lifetime * 2) / 3 + 1_000, `the renewal was due ${firstTry} ms into a ${lifetime} ms lifetime`);
  for (let n = 2; plannedAt(retries().at(-1)!) < expires - 10_000; n++) await daemon.waitFor(FAILED, n, 30_000);
  await bed.auth.restart();
  await daemon.waitFor(RENEWED, 1, Math.max(expires - Date.now(), 0) + 5_000);

  const renewedAt = Date.parse(lines().find((l) => l["msg"] === "agent identity renewed")!["time"] as string);
  const late = retries().filter((l) => Date.parse(l["time"] as string) < expires && plannedAt(l) > expires + 250);
  process.stderr.write(`# ${retries().length} failed attempts; renewed ${expires - renewedAt} ms before the expiry\n`);
  assert.deepEqual(late, [], "a retry was put off past the expiry of the outputs");
  assert.ok(renewedAt < expires, `renewed ${renewedAt - expires} ms after the outputs expired`);
  assert.equal(await daemon.stop(), 0);
  assert.equal(daemon.count(SHORT_WARNING), 1, daemon.output());

  // Started again from its storage dir, without the token, it renews; then an outage outlasts
  // the certificates. Once they have expired no renewal can succeed: the daemon says so in one
  // line and exits 3 (SPEC §6) at the expiry, not retrying for as long as the service is away.
  const again = startDaemon(bed.auth.addr, join(bed.tmp, "certs"));
  await again.waitFor(RENEWED);
  const renewed = logLines(again.output()).find((l) => l["msg"] === "agent identity renewed")!;
  const expiresAgain = Date.parse(renewed["expires"] as string);
  await bed.auth.kill9();
  // The lifetime and a margin for a loaded machine: the last attempt before the expiry comes at
  // most 250 ms before it, the next one at most 250 ms after.
  const code = await Promise.race([again.exited, new Promise<string>((r) => setTimeout(() => r("still running"), expiresAgain - Date.now() + 10_000))]);
  assert.equal(code, 3, again.output());
  const last = again.output().trimEnd().split("\n").at(-1)!;
  assert.match(last, /^mezd: the renewal certificate in .* expired at .*: join again with a new token$/);
  process.stderr.write(`# exited ${Date.now() - expiresAgain} ms after the expiry, with the service down\n`);
  await bed.auth.restart();
});

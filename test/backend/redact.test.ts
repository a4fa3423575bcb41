/** Backend settings in log lines: a postgres:// URL never shows its password, however it is given. */
import assert from "node:assert/strict";
import { test } from "node:test";
import { redactBackend } from "../../src/backend/open.js";

test("passwords in backend URLs are redacted, in user info and as parameters", () => {
  assert.equal(redactBackend("postgres://mezite:s3cret@db:5432/mezite"), "postgres://***@db:5432/mezite");
  assert.equal(redactBackend("postgresql://db/mezite?user=mezite&password=s3cret&sslmode=require"), "postgresql://db/mezite?user=mezite&password=***&sslmode=require");
  assert.equal(redactBackend("postgres://db/mezite?sslpassword=k3y&PASSWORD=x"), "postgres://db/mezite?sslpassword=***&PASSWORD=***");
  assert.equal(redactBackend("postgres://db/mezite"), "postgres://db/mezite");
  assert.equal(redactBackend("sqlite"), "sqlite");
});

import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { cpSync, mkdtempSync, readFileSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

// The generated API code is committed; regenerating from the .proto files must change nothing.
test("buf generate leaves the committed code unchanged", () => {
  const dir = mkdtempSync(join(tmpdir(), "mezite-gen-"));
  try {
    cpSync("proto", join(dir, "proto"), { recursive: true });
    cpSync("buf.yaml", join(dir, "buf.yaml"));
    cpSync("buf.gen.yaml", join(dir, "buf.gen.yaml"));
    const bin = join(process.cwd(), "node_modules", ".bin");
    execFileSync(join(bin, "buf"), ["generate"], { cwd: dir, env: { ...process.env, PATH: `${bin}:${process.env["PATH"]}` } });
    const committed = "src/api/gen/mezite/v1";
    const files = readdirSync(committed).sort();
    assert.deepEqual(readdirSync(join(dir, committed)).sort(), files);
    for (const f of files) {
      assert.equal(readFileSync(join(dir, committed, f), "utf8"), readFileSync(join(committed, f), "utf8"), `${f} differs: run npm run generate`);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

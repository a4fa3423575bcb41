// The action's main step (action.yml): install a pinned Mezite release, checked against that
// release's SHA256SUMS before anything in it runs; join with the job's GitHub ID token; export
// the outputs. What post.mjs needs to release the job's certificates at the end is saved as
// state before the join, so the post step runs whatever the join did.
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { addPath, fail, fileCommand, input, step } from "./lib.mjs";

const RELEASE = /^[0-9]+\.[0-9]+\.[0-9]+([-+][0-9A-Za-z.-]+)?$/;

function run(cmd, args) {
  const r = spawnSync(cmd, args, { stdio: ["ignore", "inherit", "inherit"] });
  if (r.error) fail(`cannot run ${cmd}: ${r.error.message}`);
  return r.status ?? 1;
}

/** Downloads and checks the release; returns the directory holding mezd and msh. */
function install(version, baseUrl, runnerTemp) {
  if (!RELEASE.test(version)) fail(`version must be a release such as 0.1.0, not "${version}": the tarball is checked against that release's SHA256SUMS`);
  const name = `mezite-${version}-linux-amd64.tar.gz`;
  const base = `${baseUrl.replace(/\/+$/, "")}/${version}`;
  const dl = mkdtempSync(join(runnerTemp, "mezite-download."));
  try {
    // curl: https for releases, file:// for a mirror on the runner (and the tests).
    for (const [file, url] of [[name, `${base}/${name}`], ["SHA256SUMS", `${base}/SHA256SUMS`]]) {
      if (run("curl", ["-fsSL", "--retry", "3", "-o", join(dl, file), url]) !== 0) fail(`cannot download ${url}: not installed`);
    }
    const entries = readFileSync(join(dl, "SHA256SUMS"), "utf8")
      .split("\n")
      .map((l) => l.trim().split(/\s+/))
      .filter(([, n]) => n === name || n === `*${name}`);
    const want = entries.length === 1 ? entries[0][0] : "";
    if (!/^[0-9a-f]{64}$/.test(want)) fail(`the SHA256SUMS of release ${version} has no single entry for ${name}: not installed`);
    const got = createHash("sha256").update(readFileSync(join(dl, name))).digest("hex");
    if (got !== want) fail(`${name} does not match the SHA256SUMS of release ${version} (sha256 ${got}, expected ${want}): not installed`);
    const bin = join(runnerTemp, "mezite-bin");
    mkdirSync(bin, { recursive: true });
    if (run("tar", ["-xzf", join(dl, name), "-C", bin, "mezd", "msh"]) !== 0) fail(`cannot unpack ${name}: not installed`);
    return bin;
  } finally {
    rmSync(dl, { recursive: true, force: true });
  }
}

await step(() => {
  const runnerTemp = process.env["RUNNER_TEMP"];
  if (!runnerTemp) fail("RUNNER_TEMP is not set: this runs as a GitHub Actions step");
  const bin = install(input("version"), input("release-base-url"), runnerTemp);
  addPath(bin);

  const dest = input("destination-dir") || join(runnerTemp, "mezite-certs");
  // Saved before the join: a join that fails half-way still gets its release at the end.
  fileCommand("GITHUB_STATE", "mezd", join(bin, "mezd"));
  fileCommand("GITHUB_STATE", "dest", dest);
  for (const required of ["auth-server", "token", "ca-pin"]) if (!input(required)) fail(`the input ${required} is required`);
  const code = run(join(bin, "mezd"), [
    "identity", "start", "--one-shot", "--join-method=github",
    `--auth-server=${input("auth-server")}`, `--token=${input("token")}`, `--ca-pin=${input("ca-pin")}`,
    `--destination-dir=${dest}`, `--cert-ttl=${input("cert-ttl") || "1h"}`,
  ]);
  if (code !== 0) process.exit(code); // mezd said why
  fileCommand("GITHUB_OUTPUT", "destination-dir", dest);
  fileCommand("GITHUB_OUTPUT", "ssh-config", join(dest, "ssh_config"));
});

#!/usr/bin/env node
// Runs every test file under test/ with node's test runner. Node 20's --test takes no globs,
// so the files are found here. Real-component tests need sshd, PostgreSQL, Ansible, Chromium and strace: when missing and
// running as root they are installed with apt (saying so), otherwise the packages are named.
import { spawnSync } from "node:child_process";
import { existsSync, readdirSync, statSync } from "node:fs";
import { join } from "node:path";

const NEEDED = [
  ["/usr/sbin/sshd", "openssh-server"],
  ["/usr/bin/ssh", "openssh-client"],
  ["/usr/lib/postgresql", "postgresql"],
  ["/usr/bin/ansible", "ansible-core"],
  ["/usr/bin/chromium", "chromium"],
  ["/usr/bin/strace", "strace"],
];
const missing = NEEDED.filter(([path]) => !existsSync(path)).map(([, pkg]) => pkg);
if (missing.length > 0) {
  if (process.getuid?.() === 0) {
    console.log(`installing ${missing.join(" ")} with apt for the real-component tests`);
    const env = { ...process.env, DEBIAN_FRONTEND: "noninteractive" };
    const upd = spawnSync("apt-get", ["update"], { stdio: "inherit", env });
    const inst = spawnSync("apt-get", ["install", "-y", ...missing], { stdio: "inherit", env });
    if (upd.status !== 0 || inst.status !== 0) {
      console.error(`apt-get failed: install ${missing.join(" ")} by hand and run npm test again`);
      process.exit(1);
    }
  } else {
    console.error(`missing packages for the real-component tests: ${missing.join(" ")} (run as root, or apt-get install them)`);
    process.exit(1);
  }
}

function findTests(dir) {
  const out = [];
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...findTests(p));
    else if (name.endsWith(".test.ts")) out.push(p);
  }
  return out;
}

const filter = process.argv.slice(2);
let files = findTests("test").sort();
if (filter.length > 0) files = files.filter((f) => filter.some((x) => f.includes(x)));
const res = spawnSync(
  process.execPath,
  ["--import", "tsx", "--test", "--test-concurrency=2", "--test-reporter=spec", ...files],
  { stdio: "inherit", env: process.env },
);
process.exit(res.status ?? 1);

/**
 * Where a daemon gets the ID token it joins with (SPEC §14). GitHub Actions: from the runtime's
 * ID-token endpoint (ACTIONS_ID_TOKEN_REQUEST_URL with &audience= appended, bearer
 * ACTIONS_ID_TOKEN_REQUEST_TOKEN, a JSON reply {"value": JWT}); GitLab and other OIDC workloads:
 * from --id-token-file or the variable --id-token-env names. The token is never logged.
 */
import { readFileSync } from "node:fs";
import { request as httpRequest } from "node:http";
import { request as httpsRequest } from "node:https";
import { MeziteError } from "../lib/errors.js";
import type { IdTokenJoin } from "./options.js";

const FETCH_TIMEOUT_MS = 10_000;
const MAX_REPLY_BYTES = 64 * 1024;

export async function obtainIdToken(join: IdTokenJoin, audience: string, env: NodeJS.ProcessEnv = process.env): Promise<string> {
  const jwt = join.method === "github" ? await fromGithub(audience, env) : fromFileOrEnv(join, env);
  if (!/^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/.test(jwt)) {
    throw new MeziteError("ERR_CONFIG", `the ID token from ${join.method === "github" ? "the GitHub Actions runtime" : join.idTokenFile ?? `$${join.idTokenEnv}`} is not a JWT`);
  }
  return jwt;
}

function fromFileOrEnv(join: IdTokenJoin, env: NodeJS.ProcessEnv): string {
  if (join.idTokenFile !== undefined) {
    try {
      return readFileSync(join.idTokenFile, "utf8").trim();
    } catch (e) {
      throw new MeziteError("ERR_CONFIG", `--id-token-file ${join.idTokenFile}: ${(e as NodeJS.ErrnoException).code === "ENOENT" ? "no such file" : (e as Error).message}`);
    }
  }
  const v = env[join.idTokenEnv]?.trim();
  if (!v) {
    const hint = join.method === "gitlab" ? ` (in .gitlab-ci.yml: id_tokens: ${join.idTokenEnv}: aud: <cluster name>)` : "";
    throw new MeziteError("ERR_CONFIG", `no ID token: $${join.idTokenEnv} is not set${hint}; or pass --id-token-file`);
  }
  return v;
}

async function fromGithub(audience: string, env: NodeJS.ProcessEnv): Promise<string> {
  const url = env["ACTIONS_ID_TOKEN_REQUEST_URL"];
  const bearer = env["ACTIONS_ID_TOKEN_REQUEST_TOKEN"];
  if (!url || !bearer) {
    throw new MeziteError("ERR_CONFIG", "ACTIONS_ID_TOKEN_REQUEST_URL is not set: run in a GitHub Actions job with `permissions: id-token: write`");
  }
  const full = `${url}${url.includes("?") ? "&" : "?"}audience=${encodeURIComponent(audience)}`;
  let reply: { status: number; body: string };
  try {
    reply = await get(full, { authorization: `bearer ${bearer}`, accept: "application/json; api-version=2.0" });
  } catch (e) {
    throw new MeziteError("ERR_UNREACHABLE", `cannot get the GitHub Actions ID token: ${(e as Error).message}`, { cause: e });
  }
  if (reply.status !== 200) throw new MeziteError("ERR_UNREACHABLE", `the GitHub Actions ID-token endpoint answered HTTP ${reply.status} (does the job have permissions: id-token: write?)`);
  let value: unknown;
  try {
    value = (JSON.parse(reply.body) as { value?: unknown }).value;
  } catch {
    value = undefined;
  }
  if (typeof value !== "string") throw new MeziteError("ERR_UNREACHABLE", "the GitHub Actions ID-token endpoint sent no token (a JSON object with value)");
  return value;
}

function get(url: string, headers: Record<string, string>): Promise<{ status: number; body: string }> {
  const request = url.startsWith("http://") ? httpRequest : httpsRequest;
  return new Promise((resolve, reject) => {
    const req = request(url, { method: "GET", headers, timeout: FETCH_TIMEOUT_MS }, (res) => {
      const chunks: Buffer[] = [];
      let size = 0;
      res.on("data", (c: Buffer) => {
        size += c.length;
        if (size > MAX_REPLY_BYTES) req.destroy(new Error("the reply is too large"));
        else chunks.push(c);
      });
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString("utf8") }));
      res.on("error", reject);
    });
    req.on("timeout", () => req.destroy(new Error(`no answer within ${FETCH_TIMEOUT_MS / 1000} s`)));
    req.on("error", reject);
    req.end();
  });
}

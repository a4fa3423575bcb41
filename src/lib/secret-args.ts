/**
 * Arguments show in `ps` to every user of the machine, for the life of the process. mezd takes
 * its secrets from files and the environment (--token-file, $MEZITE_TOKEN, the --config file,
 * $PGPASSWORD, ~/.pgpass); one given as an argument anyway is hidden here, first thing, before
 * the command-line framework or any program loads:
 *
 * - Setting process.title on Linux rewrites the memory /proc/PID/cmdline (and so `ps -o args`)
 *   reads from, for as long as the new title is no longer than the original arguments: hiding a
 *   value only shortens them. No re-exec is needed; what remains is the ~30 ms Node takes to reach
 *   this code, which only a file or variable avoids.
 * - A password in `--backend` moves to $PGPASSWORD (node-postgres reads it when the URL has none)
 *   and leaves process.argv, so `auth start --workers` forks its workers without it either; the
 *   environment of a process is readable by its own user and root only.
 *
 * Kept free of imports: mezd.ts calls it before loading anything.
 */

/** Options whose value is a secret to hide from `ps` wherever it is given. */
const SECRET_OPTIONS = ["--token"];

/** A postgres:// URL split into the URL without its password and the password, if it has one. */
export function splitBackendPassword(spec: string): { url: string; password: string } | undefined {
  if (!/^postgres(ql)?:\/\//i.test(spec)) return undefined;
  let url = spec;
  let password: string | undefined;
  // user:password@ in the authority (URL-encoded, as node-postgres decodes it).
  const user = /^(postgres(?:ql)?:\/\/)([^@/?#]*)@/i.exec(url);
  if (user) {
    const colon = user[2]!.indexOf(":");
    if (colon >= 0) {
      password = decode(user[2]!.slice(colon + 1));
      url = `${user[1]}${user[2]!.slice(0, colon)}@${url.slice(user[0].length)}`;
    }
  }
  // ?password=… or &password=… in the query string.
  const query = /([?&])password=([^&#]*)&?/i.exec(url);
  if (query) {
    password ??= decode(query[2]!);
    const rest = url.slice(query.index + query[0].length);
    url = `${url.slice(0, query.index)}${rest === "" ? "" : query[1]}${rest}`;
  }
  return password === undefined ? undefined : { url, password };
}

function decode(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}

/**
 * A backend setting fit for a log line or the process title: a postgres:// URL without its
 * password, whether in the user-info part or as a password= parameter (in the query string or a
 * key=value string).
 */
export function redactBackend(spec: string): string {
  return spec.replace(/\/\/[^@/]*@/, "//***@").replace(/(password|sslpassword)=[^&\s]*/gi, "$1=***");
}

/**
 * Hides secrets in `argv` (process.argv: node, script, arguments...): moves a `--backend`
 * password to `env.PGPASSWORD` and out of argv, and sets the process title to the arguments with
 * every secret shown as ***. Returns the warnings to print (never the secret).
 */
export function hideSecretArgs(argv: string[], env: NodeJS.ProcessEnv = process.env, setTitle: (t: string) => void = (t) => (process.title = t)): string[] {
  const warnings: string[] = [];
  const shown = argv.slice(2);
  let hidden = false;
  for (let i = 2; i < argv.length; i++) {
    const a = argv[i]!;
    const eq = a.indexOf("=");
    const name = a.startsWith("--") ? (eq >= 0 ? a.slice(0, eq) : a) : "";
    if (!SECRET_OPTIONS.includes(name) && name !== "--backend") continue;
    const inline = eq >= 0;
    const at = inline ? i : i + 1;
    if (at >= argv.length) continue;
    const value = inline ? a.slice(eq + 1) : argv[at]!;
    const show = (v: string) => {
      shown[at - 2] = inline ? `${name}=${v}` : v;
      hidden = true;
    };
    if (SECRET_OPTIONS.includes(name)) {
      show("***");
    } else if (name === "--backend") {
      const split = splitBackendPassword(value);
      if (split) {
        argv[at] = inline ? `${name}=${split.url}` : split.url;
        env["PGPASSWORD"] = split.password;
        warnings.push("the password in --backend shows in ps to every user of this machine until mezd hides it: put it in the --config file, $PGPASSWORD or ~/.pgpass instead");
      }
      if (split || redactBackend(value) !== value) show(redactBackend(split?.url ?? value));
    }
    if (!inline) i++;
  }
  if (hidden) setTitle(["mezd", ...shown].join(" "));
  return warnings;
}

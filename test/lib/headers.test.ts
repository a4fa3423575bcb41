/**
 * LightHeaders against the oracle, Node's own (undici) Headers: each case runs the same
 * operations on both and must observe the same results and the same TypeErrors.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { LightHeaders } from "../../src/lib/headers.js";

type H = typeof Headers;
const Real = globalThis.Headers;
const Light = LightHeaders as unknown as H;

/** What a case observed: values, or the class of what it threw. */
function run(C: H, body: (C: H) => unknown): unknown {
  try {
    return body(C);
  } catch (e) {
    return { threw: (e as Error).constructor.name };
  }
}

const all = (h: Headers) => ({ entries: [...h], keys: [...h.keys()], values: [...h.values()], each: eachOf(h) });
function eachOf(h: Headers): string[][] {
  const out: string[][] = [];
  h.forEach((v, k, self) => out.push([k, v, String(self === h)]));
  return out;
}

const cases: Record<string, (C: H) => unknown> = {
  empty: (C) => [all(new C()), all(new C(undefined)), new C().get("a"), new C().has("a")],
  record: (C) => all(new C({ "Content-Type": "application/grpc", "X-B": "2", te: "trailers" })),
  pairs: (C) => all(new C([["x-a", "1"], ["X-A", "2"], ["b", "3"]])),
  "copy of another": (C) => {
    const a = new C([["x", "1"], ["x", "2"], ["set-cookie", "a=1"], ["set-cookie", "b=2"]]);
    return all(new C(a));
  },
  "case-insensitive names": (C) => {
    const h = new C();
    h.append("Grpc-Status", "0");
    h.append("grpc-STATUS", "1");
    return [h.get("GRPC-status"), h.has("grpc-status"), all(h)];
  },
  "set replaces every value": (C) => {
    const h = new C([["a", "1"], ["A", "2"]]);
    h.set("a", "3");
    return all(h);
  },
  "delete, and get of a missing name": (C) => {
    const h = new C({ a: "1", b: "2" });
    h.delete("A");
    h.delete("nope");
    return [h.get("a"), h.has("a"), all(h)];
  },
  "get joins with a comma and a space": (C) => {
    const h = new C();
    h.append("accept", "a");
    h.append("accept", "b");
    h.append("set-cookie", "c=1");
    h.append("set-cookie", "d=2");
    return [h.get("accept"), h.get("set-cookie"), h.getSetCookie(), all(h)];
  },
  "sorted by name, Set-Cookie not combined": (C) => all(new C([["zz", "1"], ["set-cookie", "x=1"], ["a", "2"], ["Set-Cookie", "y=2"], ["m", "3"]])),
  "values are trimmed of HTTP whitespace": (C) => {
    const h = new C({ a: " \t1 2\t ", b: "\r\n x \n" });
    h.set("c", "  3  ");
    return all(h);
  },
  "non-string values are strings": (C) => all(new C({ a: 1 as unknown as string, b: true as unknown as string })),
  "empty value": (C) => all(new C({ a: "" })),
  "invalid name": (C) => new C({ "bad name": "x" }),
  "invalid name in get": (C) => new C().get("a:b"),
  "invalid name in has": (C) => new C().has(""),
  "invalid name in delete": (C) => new C().delete("é"),
  "value with LF": (C) => new C().append("a", "x\ny"),
  "value with CR": (C) => new C().set("a", "x\ry"),
  "value with NUL": (C) => new C({ a: "x\0y" }),
  "value beyond Latin-1": (C) => new C({ a: "☃" }),
  "value just beyond Latin-1": (C) => new C({ a: "\u0100" }),
  "value with Latin-1": (C) => new C({ a: "é" }).get("a"),
  "pair of one": (C) => new C([["a"]] as unknown as [string, string][]),
  "pair of three": (C) => new C([["a", "b", "c"]] as unknown as [string, string][]),
  "primitive init": (C) => new C(5 as unknown as ConstructorParameters<H>[0]),
  "forEach deleting as it goes (connect's copyHeaders)": (C) => {
    const h = new C([["a", "1"], ["b", "2"], ["c", "3"], ["d", "4"]]);
    h.forEach((_, k) => h.delete(k));
    return all(h);
  },
  "forEach adding as it goes": (C) => {
    const h = new C([["b", "1"], ["d", "2"]]);
    const seen: string[] = [];
    h.forEach((_, k) => {
      seen.push(k);
      if (k === "b") h.append("c", "3");
    });
    return [seen, all(h)];
  },
  "an iterator sees changes made after it started": (C) => {
    const h = new C([["a", "1"], ["c", "3"]]);
    const it = h.entries();
    const first = it.next().value;
    h.append("b", "2");
    return [first, [...it]];
  },
  "forEach thisArg": (C) => {
    const me = { n: 0 };
    new C({ a: "1", b: "2" }).forEach(function (this: typeof me) {
      this.n++;
    }, me);
    return me.n;
  },
  "forEach without a callback": (C) => new C().forEach(undefined as unknown as () => void),
  toStringTag: (C) => Object.prototype.toString.call(new C()),
};

for (const [name, body] of Object.entries(cases)) {
  test(`LightHeaders as undici: ${name}`, () => {
    assert.deepEqual(run(Light, body), run(Real, body));
  });
}

test("a failing case is seen: LightHeaders is not compared with itself", () => {
  assert.notEqual(Light, Real);
  assert.notDeepEqual(run(Light, (C) => new C({ a: "1" }).get("a")), run(Real, (C) => new C({ a: "2" }).get("a")));
});

/** Runs a fresh node: installLightHeaders must act only while the global is Node's lazy getter. */
function install(before: string): string {
  const url = new URL("../../src/lib/headers.ts", import.meta.url).href;
  const code = `${before}; const { installLightHeaders, LightHeaders } = await import(${JSON.stringify(url)}); installLightHeaders(); console.log(globalThis.Headers === LightHeaders)`;
  const r = spawnSync(process.execPath, ["--import", "tsx", "--input-type=module", "-e", code], { encoding: "utf8" });
  assert.equal(r.status, 0, r.stderr);
  return r.stdout.trim();
}

test("installLightHeaders replaces the lazy global Headers before undici loads", () => {
  assert.equal(install(""), "true");
});

test("installLightHeaders leaves undici's Headers once it is loaded", () => {
  assert.equal(install("void globalThis.Headers"), "false");
});

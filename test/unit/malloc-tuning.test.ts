import assert from "node:assert/strict";
import { test } from "node:test";
import { MALLOC_SETTINGS, type MallocEnv, tuneMalloc } from "../../src/runtime/malloc-tuning.ts";

/** An environment where every check passes; `calls` records what mallopt was given. */
function env(over: Partial<MallocEnv> = {}, result = 1) {
  const calls: Array<[number, number]> = [];
  const e: MallocEnv = {
    platform: "linux",
    glibcVersion: "2.36",
    glibcTunables: undefined,
    mallopt: () => (param, value) => {
      calls.push([param, value]);
      return result;
    },
    ...over,
  };
  return { e, calls };
}

test("tuneMalloc: sets the mmap threshold, trim threshold and top pad on Linux with glibc", () => {
  const { e, calls } = env();
  assert.deepEqual(tuneMalloc(e), { applied: true, settings: MALLOC_SETTINGS });
  assert.deepEqual(calls, [
    [-3, 4 << 20],
    [-1, 64 << 20],
    [-2, 16 << 20],
  ]);
});

test("tuneMalloc: leaves malloc alone where it must, and says why", () => {
  const cases: Array<[string, Partial<MallocEnv>, RegExp]> = [
    ["macOS", { platform: "darwin" }, /not Linux \(darwin\)/],
    ["musl", { glibcVersion: undefined }, /not glibc/],
    ["operator's tunables", { glibcTunables: "glibc.malloc.arena_max=2" }, /GLIBC_TUNABLES/],
    [
      "no koffi",
      {
        mallopt: () => {
          throw new Error("koffi is not installed");
        },
      },
      /mallopt unavailable: koffi is not installed/,
    ],
  ];
  for (const [name, over, reason] of cases) {
    const { e, calls } = env(over);
    const r = tuneMalloc(e);
    assert.equal(r.applied, false, name);
    assert.match((r as { reason: string }).reason, reason, name);
    assert.equal(calls.length, 0, `${name}: mallopt not called`);
  }
  // Other glibc tunables (not malloc) do not count as the operator's malloc choice.
  assert.equal(tuneMalloc(env({ glibcTunables: "glibc.pthread.rseq=0" }).e).applied, true);
});

test("tuneMalloc: a mallopt that refuses is reported, not ignored", () => {
  const { e, calls } = env({}, 0);
  assert.deepEqual(tuneMalloc(e), { applied: false, reason: `mallopt(M_MMAP_THRESHOLD, ${4 << 20}) failed` });
  assert.equal(calls.length, 1);
});

test("tuneMalloc: this process's real libc accepts the settings (Linux, glibc)", (t) => {
  const header = (process.report.getReport() as { header?: { glibcVersionRuntime?: string } }).header;
  if (process.platform !== "linux" || !header?.glibcVersionRuntime) {
    return t.skip("needs Linux with glibc");
  }
  if (process.env.GLIBC_TUNABLES?.includes("glibc.malloc."))
    return t.skip("GLIBC_TUNABLES sets malloc tunables");
  assert.deepEqual(tuneMalloc(), { applied: true, settings: MALLOC_SETTINGS });
});

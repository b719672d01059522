/**
 * TCP semantics through two proxies, Weft against HAProxy and stunnel on the same inputs. One table of
 * scenarios (half-close both ways, a client that writes and closes at once, a server that speaks first,
 * resets both ways, a large response followed by close) runs against three mTLS proxy pairs from
 * bench/peers.ts, each pair two child processes with the same certificates, each scenario on its own
 * route to its own purpose-built app. Bytes are checked exactly (count and sha256).
 *
 * Weft must hold every scenario. HAProxy's and stunnel's outcomes are recorded and printed as a table
 * (see docs/tcp-semantics.md), not asserted: they are the yardstick, not the subject. Every scenario has
 * its own deadline, so a proxy that stalls is recorded as "hung" instead of stalling the test; the
 * deadline never decides a pass.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import net, { type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import {
  type PeerOptions,
  type PeerPair,
  startHaproxyPair,
  startStunnelPair,
  startWeftPair,
  writePeerCerts,
} from "../../bench/peers.ts";
import {
  eofEnd,
  errorEnd,
  PatternSource,
  type ReadOutcome,
  readOutcome,
  writePattern,
} from "../helpers/apps.ts";
import { checkLeaksAtEnd } from "../helpers/leaks.ts";

checkLeaksAtEnd();

const MiB = 1024 * 1024;
/** Per scenario and peer; generous, since a healthy run takes well under a second. */
const DEADLINE_MS = 8_000;
const TRUST_DOMAIN = "peers.local";
const OK = "ok";

/** The bytes `writePattern(stream, n)` writes, and their sha256 (it starts every source at offset 0). */
function pattern(n: number): { buf: Buffer; sha256: string } {
  const src = new PatternSource();
  const parts: Buffer[] = [];
  for (let left = n; left > 0; left -= 65_536) parts.push(Buffer.from(src.next(Math.min(65_536, left))));
  const buf = Buffer.concat(parts);
  return { buf, sha256: createHash("sha256").update(buf).digest("hex") };
}
const P4 = pattern(4 * MiB);
const P8 = pattern(8 * MiB);

/** How a read side finished: `eof` (FIN), `reset`, `error:<code>` or `close without end`. */
type ReadResult = ReadOutcome;

/** Shared by the client and the app of one scenario run: what each side has seen so far. */
interface Run {
  /** Progress notes, printed when the deadline passes ("hung: ..."). */
  readonly note: Record<string, string>;
  /** Every socket of the run, destroyed afterwards. */
  readonly sockets: Socket[];
  /** The app resolves this when it has what the client waits for before its next step. */
  readonly appReady: Deferred;
}

interface Deferred {
  readonly promise: Promise<void>;
  resolve(): void;
}
function deferred(): Deferred {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => {
    resolve = r;
  });
  return { promise, resolve };
}

/** Read to the first terminal event, counting and hashing (helpers/apps.ts `readOutcome`); never rejects. */
function readToEnd(s: Socket, run: Run, who: string): Promise<ReadResult> {
  const out = readOutcome(s, (bytes) => {
    run.note[who] = `${bytes} B read, no end yet`;
  });
  s.resume();
  return out.then((r) => {
    run.note[who] = `${r.bytes} B, ${r.end}`;
    return r;
  });
}

/** Read exactly `n` bytes (then pause), or fewer if the stream ends first. */
function readExactly(s: Socket, n: number, run: Run, who: string): Promise<{ data: Buffer; end?: string }> {
  return new Promise((resolve) => {
    const parts: Buffer[] = [];
    let got = 0;
    const stop = (end?: string): void => {
      s.off("data", onData);
      s.off("end", onEnd);
      s.off("error", onError);
      s.pause();
      const all = Buffer.concat(parts);
      if (all.length > n) s.unshift(all.subarray(n));
      run.note[who] = `${Math.min(got, n)} of ${n} B${end ? `, ${end}` : ""}`;
      resolve(end ? { data: all, end } : { data: all.subarray(0, n) });
    };
    const onData = (d: Buffer): void => {
      parts.push(d);
      got += d.length;
      run.note[who] = `${got} of ${n} B`;
      if (got >= n) stop();
    };
    const onEnd = (): void => stop(eofEnd(s));
    const onError = (err: NodeJS.ErrnoException): void => stop(errorEnd(err));
    s.on("data", onData);
    s.once("end", onEnd);
    s.once("error", onError);
    s.resume();
  });
}

/** "" if `r` is exactly `want` followed by a clean EOF, else what differs. */
function expectStream(r: ReadResult, want: { bytes: number; sha256?: string }, who: string): string {
  if (r.bytes !== want.bytes) return `${who} got ${r.bytes} of ${want.bytes} B, then ${r.end}`;
  if (want.sha256 && r.sha256 !== want.sha256) return `${who} got ${r.bytes} B but they differ`;
  if (r.end !== "eof") return `${who} got all bytes, then ${r.end} instead of EOF`;
  return "";
}

/** Write with backpressure, reporting a failed write instead of throwing. */
async function writeAll(s: Socket, n: number, run: Run, who: string): Promise<string> {
  try {
    await writePattern(s, n, {
      onProgress: (w) => {
        run.note[who] = `wrote ${w} of ${n} B`;
      },
    });
    return "";
  } catch (err) {
    return `${who} write failed: ${(err as Error).message}`;
  }
}

function clientSocket(port: number, run: Run): Socket {
  const s = net.connect({ port, host: "127.0.0.1", allowHalfOpen: true });
  s.on("error", () => {}); // every read path records errors itself
  run.sockets.push(s);
  return s;
}

/** The problems found, joined; "" when there are none. */
function problems(...found: string[]): string {
  return found.filter(Boolean).join("; ");
}

/** "ok" or the problems found. */
function verdict(...found: string[]): string {
  return problems(...found) || OK;
}

interface Scenario {
  /** Route name. */
  readonly id: string;
  readonly title: string;
  /** The app's side of the one connection; resolves with "" or what went wrong from the app's view. */
  serve(s: Socket, run: Run): Promise<string>;
  /** The client's side, given the app's verdict; resolves with "ok" or the outcome. */
  client(port: number, run: Run, app: Promise<string>): Promise<string>;
}

const N = 4 * MiB;
const M = 4 * MiB;
const BANNER = "220 peers.local ESMTP ready\r\n";

const scenarios: readonly Scenario[] = [
  {
    id: "client-half-close",
    title: "client half-close, reply after EOF (4 MiB each way)",
    async serve(s, run) {
      const got = await readToEnd(s, run, "app");
      const bad = expectStream(got, { bytes: N, sha256: P4.sha256 }, "app");
      if (bad) return bad;
      return writeAll(s, M, run, "app");
    },
    async client(port, run, app) {
      const s = clientSocket(port, run);
      const reply = readToEnd(s, run, "client");
      const w = await writeAll(s, N, run, "client");
      const r = await reply;
      return verdict(w, await app, expectStream(r, { bytes: M, sha256: P4.sha256 }, "client"));
    },
  },
  {
    id: "server-half-close",
    title: "server half-close, client sends after EOF (4 MiB each way)",
    async serve(s, run) {
      const reading = readToEnd(s, run, "app");
      const w = await writeAll(s, M, run, "app writing");
      return problems(w, expectStream(await reading, { bytes: N, sha256: P4.sha256 }, "app"));
    },
    async client(port, run, app) {
      const s = clientSocket(port, run);
      const r = await readToEnd(s, run, "client");
      const first = expectStream(r, { bytes: M, sha256: P4.sha256 }, "client");
      if (first) return first;
      const w = await writeAll(s, N, run, "client writing");
      return verdict(w, await app);
    },
  },
  {
    id: "write-and-close",
    title: "client writes 4 MiB and closes at once",
    async serve(s, run) {
      const got = await readToEnd(s, run, "app");
      s.end();
      return expectStream(got, { bytes: N, sha256: P4.sha256 }, "app");
    },
    async client(port, run, app) {
      const s = clientSocket(port, run);
      s.end(P4.buf); // same tick as connect(): the proxies have not even accepted yet
      const r = await readToEnd(s, run, "client");
      return verdict(await app, expectStream(r, { bytes: 0 }, "client"));
    },
  },
  {
    id: "request-and-close",
    title: "client writes 5 B and closes at once, reply after EOF",
    async serve(s, run) {
      const got = await readToEnd(s, run, "app");
      const bad = expectStream(got, { bytes: 5 }, "app");
      s.end(bad ? "" : "reply");
      return bad;
    },
    async client(port, run, app) {
      const s = clientSocket(port, run);
      s.end("query"); // like `printf query | nc`: FIN right behind the request
      const r = await readToEnd(s, run, "client");
      return verdict(await app, expectStream(r, { bytes: 5 }, "client"));
    },
  },
  {
    id: "server-speaks-first",
    title: "server speaks first (banner before any client byte)",
    async serve(s, run) {
      s.write(BANNER);
      const got = await readToEnd(s, run, "app");
      s.end();
      return expectStream(got, { bytes: 0 }, "app");
    },
    async client(port, run, app) {
      const s = clientSocket(port, run);
      const banner = await readExactly(s, BANNER.length, run, "client");
      if (banner.data.toString() !== BANNER)
        return `client got ${JSON.stringify(banner.data.toString())}${banner.end ? `, then ${banner.end}` : ""}`;
      s.end();
      const rest = await readToEnd(s, run, "client");
      return verdict(await app, expectStream(rest, { bytes: 0 }, "client"));
    },
  },
  {
    id: "client-reset",
    title: "client resets after 64 KiB",
    async serve(s, run) {
      const first = await readExactly(s, 65_536, run, "app");
      if (first.end) return `app got ${first.data.length} of 65536 B, then ${first.end}`;
      const rest = readToEnd(s, run, "app");
      run.appReady.resolve();
      const r = await rest;
      return r.end === "reset" ? "" : `app saw ${r.end} after ${r.bytes} more B, not a reset`;
    },
    async client(port, run, app) {
      const s = clientSocket(port, run);
      s.write(P4.buf.subarray(0, 65_536));
      await Promise.race([run.appReady.promise, app]);
      s.resetAndDestroy();
      return verdict(await app);
    },
  },
  {
    id: "server-reset",
    title: "server resets after the request",
    async serve(s, run) {
      const req = await readExactly(s, 7, run, "app");
      if (req.end) return `app got ${req.data.length} of 7 B, then ${req.end}`;
      s.resetAndDestroy();
      return "";
    },
    async client(port, run, app) {
      const s = clientSocket(port, run);
      const r = readToEnd(s, run, "client");
      s.write("trigger");
      const got = await r;
      return verdict(
        await app,
        got.end === "reset" ? "" : `client saw ${got.end} after ${got.bytes} B, not a reset`,
      );
    },
  },
  {
    id: "server-reset-mid-transfer",
    title: "server resets in the middle of a 4 MiB response",
    async serve(s, run) {
      s.write(P4.buf.subarray(0, MiB), () => {
        run.note.app = "wrote 1 MiB, resetting";
        s.resetAndDestroy();
      });
      return "";
    },
    async client(port, run, app) {
      const s = clientSocket(port, run);
      const got = await readToEnd(s, run, "client");
      return verdict(
        await app,
        got.end === "reset" ? "" : `client saw ${got.end} after ${got.bytes} of ${4 * MiB} B, not a reset`,
      );
    },
  },
  {
    id: "large-response-close",
    title: "server writes 8 MiB, ends and closes at once",
    async serve(s) {
      s.end(P8.buf);
      s.once("finish", () => s.destroy()); // a full close, not just a half-close
      return "";
    },
    async client(port, run, app) {
      const s = clientSocket(port, run);
      const r = await readToEnd(s, run, "client");
      s.end();
      return verdict(await app, expectStream(r, { bytes: 8 * MiB, sha256: P8.sha256 }, "client"));
    },
  },
];

interface ScenarioApp {
  readonly port: number;
  /** Set before each run: which run the next connection belongs to. */
  current?: { run: Run; result: Deferred & { value?: string }; accepted: number };
  close(): Promise<void>;
}

/** A loopback app (allowHalfOpen) that hands each accepted socket to the scenario's `serve`. */
async function startScenarioApp(sc: Scenario): Promise<ScenarioApp> {
  const sockets = new Set<Socket>();
  const app: ScenarioApp = {
    port: 0,
    close: () =>
      new Promise<void>((r) => {
        for (const s of sockets) s.destroy();
        server.close(() => r());
      }),
  };
  const server = net.createServer({ allowHalfOpen: true }, (s) => {
    s.on("error", () => {});
    sockets.add(s);
    s.once("close", () => sockets.delete(s));
    const cur = app.current;
    if (!cur) return void s.destroy();
    cur.run.sockets.push(s);
    cur.accepted++;
    if (cur.accepted > 1) {
      // A proxy retried or reconnected: serve it the same way (as a real app would), but only the first
      // connection's verdict counts; the extra ones are reported with the outcome.
      sc.serve(s, { note: {}, sockets: cur.run.sockets, appReady: deferred() }).catch(() => {});
      return;
    }
    sc.serve(s, cur.run).then(
      (v) => {
        cur.result.value = v;
        cur.result.resolve();
      },
      (err: Error) => {
        cur.result.value = `app threw: ${err.message}`;
        cur.result.resolve();
      },
    );
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  (app as { port: number }).port = (server.address() as net.AddressInfo).port;
  return app;
}

/** One scenario through one pair, bounded by its deadline; resolves with the outcome text. */
async function runScenario(sc: Scenario, app: ScenarioApp, listenPort: number): Promise<string> {
  const run: Run = { note: {}, sockets: [], appReady: deferred() };
  const result: Deferred & { value?: string } = deferred();
  const cur = { run, result, accepted: 0 };
  app.current = cur;
  const appVerdict = result.promise.then(() => result.value ?? "");
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<string>((r) => {
    timer = setTimeout(() => {
      const seen = Object.entries(run.note)
        .map(([k, v]) => `${k}: ${v}`)
        .join(", ");
      r(`hung (${seen || "nothing moved"})`);
    }, DEADLINE_MS);
  });
  let outcome: string;
  try {
    outcome = await Promise.race([sc.client(listenPort, run, appVerdict), deadline]);
  } catch (err) {
    outcome = `client threw: ${(err as Error).message}`;
  } finally {
    clearTimeout(timer);
    for (const s of run.sockets) s.destroy();
    app.current = undefined;
  }
  if (cur.accepted > 1) outcome = `${outcome}; app saw ${cur.accepted} connections`;
  return outcome;
}

interface Column {
  readonly name: string;
  readonly version: string;
  /** Scenario id -> outcome; absent when the peer did not start. */
  readonly outcomes: Map<string, string>;
  readonly missing?: string;
}

/** Start a pair's apps and the pair, run every scenario in order, stop everything. */
async function runPeer(
  name: string,
  start: (o: PeerOptions) => Promise<PeerPair | undefined>,
  workDir: string,
): Promise<Column> {
  const apps = new Map<string, ScenarioApp>();
  for (const sc of scenarios) apps.set(sc.id, await startScenarioApp(sc));
  const messages: string[] = [];
  let pair: PeerPair | undefined;
  try {
    try {
      pair = await start({
        workDir,
        routes: scenarios.map((sc) => ({ name: sc.id, appPort: apps.get(sc.id)!.port })),
        onMessage: (m) => messages.push(m),
      });
    } catch (err) {
      return { name, version: "?", outcomes: new Map(), missing: `did not start: ${(err as Error).message}` };
    }
    if (!pair) return { name, version: "?", outcomes: new Map(), missing: messages.join("; ") || "missing" };
    const outcomes = new Map<string, string>();
    for (const sc of scenarios)
      outcomes.set(sc.id, await runScenario(sc, apps.get(sc.id)!, pair.listenPorts[sc.id]!));
    return { name, version: pair.version, outcomes };
  } finally {
    await pair?.stop(5_000);
    for (const a of apps.values()) await a.close();
  }
}

function table(columns: readonly Column[]): string[] {
  const head = `| scenario | ${columns.map((c) => c.version).join(" | ")} |`;
  const sep = `|---|${columns.map(() => "---").join("|")}|`;
  const rows = scenarios.map(
    (sc) => `| ${sc.title} | ${columns.map((c) => c.outcomes.get(sc.id) ?? "not run").join(" | ")} |`,
  );
  return [head, sep, ...rows];
}

test("TCP semantics through two proxies: Weft (both transports) holds every scenario; HAProxy and stunnel are recorded", async (t) => {
  const work = await mkdtemp(join(tmpdir(), "weft-peers-"));
  t.after(() => rm(work, { recursive: true, force: true }));
  await writePeerCerts(work, TRUST_DOMAIN);

  const weft = await runPeer(
    "Weft (per-connection)",
    async (o) => {
      const p = await startWeftPair({ ...o, trustDomain: TRUST_DOMAIN, transport: "per-connection" });
      return { ...p, version: `${p.version} per-connection` };
    },
    work,
  );
  assert.equal(weft.missing, undefined, `the Weft pair did not start: ${weft.missing}`);
  const pooled = await runPeer(
    "Weft (pooled)",
    async (o) => {
      const p = await startWeftPair({ ...o, trustDomain: TRUST_DOMAIN, transport: "pooled" });
      return { ...p, version: `${p.version} pooled` };
    },
    work,
  );
  assert.equal(pooled.missing, undefined, `the pooled Weft pair did not start: ${pooled.missing}`);
  const peers = [
    await runPeer("HAProxy", startHaproxyPair, work),
    await runPeer("stunnel", startStunnelPair, work),
  ];
  const columns = [weft, pooled, ...peers];
  for (const line of table(columns)) t.diagnostic(line);
  for (const p of peers) {
    if (!p.missing) continue;
    t.diagnostic(`${p.name} not run: ${p.missing}`);
    if (process.env.CI === "true")
      assert.fail(`${p.name} must run under CI (installed by .ci/run): ${p.missing}`);
  }

  for (const sc of scenarios) {
    await t.test(`Weft: ${sc.title}`, () => {
      assert.equal(weft.outcomes.get(sc.id), OK);
    });
    await t.test(`Weft, pooled tunnel: ${sc.title}`, () => {
      assert.equal(pooled.outcomes.get(sc.id), OK);
    });
  }
});

/**
 * V8's moderate memory-pressure signal, `v8::Isolate::MemoryPressureNotification(kModerate)`: what
 * Chrome sends when the operating system reports memory pressure. V8 answers with one incremental,
 * memory-reducing collection at its next safe point, which also returns its page pool to the OS (the
 * pages a plain full collection keeps for reuse: after a burst, the young generation's 27-48 MiB).
 * Unlike the last-resort collection (`memory.idleReclaim: deep`) it is one collection, not a series
 * that also flushes compiled code. Figures: docs/benchmarks.md, "Where a sidecar's memory goes".
 *
 * Node has no JavaScript API for it; the method is part of the V8 API that the node binary exports for
 * addons, called through koffi. The call is made from a libuv worker thread (koffi's async call), as V8
 * expects of an embedder's monitor thread: V8 then posts the work to the main thread. A synchronous call
 * from the main thread would run V8's collector on koffi's call stack, which V8 refuses by aborting the
 * process (checked with the critical level: "Check failed: isolate_->IsOnCentralStack()").
 */
import { loadKoffi } from "./libc.ts";

const GET_CURRENT = "_ZN2v87Isolate10GetCurrentEv";
const PRESSURE = "_ZN2v87Isolate26MemoryPressureNotificationENS_19MemoryPressureLevelE";
/** v8::MemoryPressureLevel::kModerate. */
const MODERATE = 1;

type AsyncCall = { async: (...args: unknown[]) => void };

let signal: (() => Promise<void>) | null | undefined;

/**
 * A function that sends V8 the moderate-pressure signal (resolving once the worker thread made the call;
 * V8 collects a moment later on the main thread), or null where it cannot: no koffi, or a node binary
 * without those symbols. Loaded once.
 */
export function v8PressureSignal(): (() => Promise<void>) | null {
  if (signal !== undefined) return signal;
  signal = null;
  try {
    const koffi = loadKoffi();
    // The program itself (dlopen of no file): the node binary and the V8 API it exports.
    const self = koffi.load(null as unknown as string);
    const isolate = (self.func(`void* ${GET_CURRENT}()`) as () => unknown)();
    const notify = self.func(`void ${PRESSURE}(void*, int)`) as unknown as AsyncCall;
    if (isolate) {
      signal = () =>
        new Promise<void>((resolve, reject) =>
          notify.async(isolate, MODERATE, (err: unknown) => (err ? reject(err) : resolve())),
        );
    }
  } catch {
    signal = null;
  }
  return signal;
}

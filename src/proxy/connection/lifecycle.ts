/**
 * What every connection handler would otherwise repeat. `ConnectionCloser`: what `rec.abort(reason)` (drain deadline, shutdown) does at each stage of a connection: before the splice
 * the handler's own step (abandon the connect, or refuse at once), after it the splice ends; either way
 * the reason is kept as `forced`, the reason the record finishes with.
 */
import { type CloseReason, type ConnectionRecord, type SpliceDeps, spliceConnection } from "./record.ts";
import type { Splice, SpliceSide } from "./splice.ts";

export class ConnectionCloser {
  /** The reason an abort gave, which the record finishes with. */
  forced: CloseReason | undefined;
  private spliced: Splice | undefined;

  /** Takes `rec.closer`; `beforeSplice` is what an abort does until the bytes flow. */
  constructor(
    private readonly rec: ConnectionRecord,
    private readonly beforeSplice: (reason: CloseReason) => void,
  ) {
    rec.closer = (reason) => this.abort(reason);
  }

  abort(reason: CloseReason): void {
    this.forced = reason;
    if (this.spliced) this.spliced.abort("aborted");
    else this.beforeSplice(reason);
  }

  /** Start the record's splice; from now on an abort ends it (see `spliceConnection`). */
  splice(down: SpliceSide, up: SpliceSide, deps: SpliceDeps, beforeFinish?: () => void): Splice {
    this.spliced = spliceConnection(this.rec, down, up, deps, () => this.forced, beforeFinish);
    return this.spliced;
  }
}

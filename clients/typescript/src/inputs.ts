/**
 * The inputs waiting for their `InputResult`, across connections, and what the protocol lets
 * the client say of each when the session ends: applied or not, or unknown (docs/protocol.md
 * §4). `GaiaClient` writes the frames; this file only keeps the books.
 */
import { GaiaError, InputLost, InputRejected } from "./errors.js";
import type { InputOutcome } from "./protocol.js";

export interface Accepted {
  seq: number;
  /** The tick that applied the input. */
  tick: number;
}

/** The result a resume gives an awaited input the server never got (docs/protocol.md §4). */
export const NEVER_REACHED = "never reached the server: send it again";

/** The result every input of a spectator gets (a spectate token; docs/protocol.md §4, "Spectators"). */
export const SPECTATORS_CANNOT_ACT = "spectators cannot act";

interface Entry<A> {
  action: A;
  resolve(accepted: Accepted): void;
  reject(error: GaiaError): void;
  /** Written where the server answers for it; false: to be written after the next Welcome. */
  sent: boolean;
  /** Written on a connection that broke, and no server has answered for it since. */
  unsure: boolean;
}

export class Inputs<A> {
  private nextSeq = 1;
  private readonly waiting = new Map<number, Entry<A>>();
  /** Seqs the last resume listed as awaiting: a `NEVER_REACHED` refusal of one means "write it again". */
  private retryable = new Set<number>();

  get size(): number {
    return this.waiting.size;
  }

  /** A new input, not written yet: its seq and the promise its result settles. */
  add(action: A): { seq: number; result: Promise<Accepted> } {
    const seq = this.nextSeq;
    this.nextSeq = seq >= 0xffff_ffff ? 1 : seq + 1;
    const result = new Promise<Accepted>((resolve, reject) => {
      this.waiting.set(seq, { action, resolve, reject, sent: false, unsure: false });
    });
    return { seq, result };
  }

  markSent(seq: number): void {
    const entry = this.waiting.get(seq);
    if (entry) entry.sent = true;
  }

  /** It could not be written (it does not encode): it fails now. */
  fail(seq: number, error: GaiaError): void {
    this.waiting.get(seq)?.reject(error);
    this.waiting.delete(seq);
  }

  /** The inputs to write after a Welcome, in the order they were sent. */
  unsent(): Array<[seq: number, action: A]> {
    return [...this.waiting].filter(([, e]) => !e.sent).map(([seq, e]) => [seq, e.action]);
  }

  /** A `Resume`'s `awaiting`: the seqs written that have had no result. */
  awaiting(): number[] {
    return [...this.waiting].filter(([, e]) => e.sent).map(([seq]) => seq);
  }

  /**
   * Settles the input `seq` by its result. `"again"`: the server says a resumed input never
   * reached it, so it is to be written again under the same seq (its promise stays pending).
   * `"unknown"`: no input waits under that seq.
   */
  settle(seq: number, tick: number, outcome: InputOutcome): "settled" | "again" | "unknown" {
    const entry = this.waiting.get(seq);
    if (!entry) return "unknown";
    const retry = this.retryable.delete(seq);
    if (outcome.type === "rejected" && retry && tick === 0 && outcome.reason === NEVER_REACHED) {
      entry.sent = false;
      return "again";
    }
    this.waiting.delete(seq);
    if (outcome.type === "ok") entry.resolve({ seq, tick });
    else entry.reject(new InputRejected(seq, outcome.reason, tick));
    return "settled";
  }

  /** The connection broke (no close frame): what was written may be applied without our hearing. */
  broke(): void {
    for (const entry of this.waiting.values()) if (entry.sent) entry.unsure = true;
  }

  /** A resume was welcomed: the server answers again for the `awaiting` it was sent. */
  resumed(awaiting: readonly number[]): void {
    for (const entry of this.waiting.values()) entry.unsure = false;
    this.retryable = new Set(awaiting);
  }

  /** `Migrate`: every applied input has had its result, so all that wait go again to the new server. */
  migrated(): void {
    for (const entry of this.waiting.values()) {
      entry.sent = false;
      entry.unsure = false;
    }
    this.retryable.clear();
  }

  /**
   * The session ended: every input left rejects with `InputLost`. `closeFrame`: the server
   * closed with a frame (not 1006, and not after ours), so an input it answers for that has no
   * result was not applied; one never written was not applied either.
   */
  lose(event: { code: number; reason: string }, closeFrame: boolean): void {
    for (const [seq, entry] of this.waiting) {
      const applied = !entry.sent || (closeFrame && !entry.unsure) ? false : "unknown";
      entry.reject(new InputLost(seq, applied, event.code, event.reason));
    }
    this.waiting.clear();
    this.retryable.clear();
  }
}

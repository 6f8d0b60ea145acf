/**
 * Every error this package throws or rejects with. Decoders throw only `DecodeError`;
 * encoders only `EncodeError`; a pending `send` rejects with `InputRejected` or `InputLost`.
 */

/** Base class, so callers can tell this package's errors from anything else. */
export class GaiaError extends Error {
  override name = "GaiaError";
}

/** A frame (or part of one) that does not follow docs/protocol.md. */
export class DecodeError extends GaiaError {
  override name = "DecodeError";
  constructor(
    message: string,
    /** Where it went wrong: a byte offset (bincode) or a JSON path such as `changes[2].x`. */
    readonly at: string,
  ) {
    super(`${message} (at ${at})`);
  }
}

/** A value that cannot be written: out of range, too long, or a frame over the 4096-byte limit. */
export class EncodeError extends GaiaError {
  override name = "EncodeError";
}

/** The world refused the input: `InputResult` with outcome `Rejected`. */
export class InputRejected extends GaiaError {
  override name = "InputRejected";
  constructor(
    readonly seq: number,
    readonly reason: string,
    readonly tick: number,
  ) {
    super(`input ${seq} rejected: ${reason}`);
  }
}

/**
 * The session ended before the input's result came.
 * `applied` is `false` after a close frame from the server (the protocol promises every applied
 * input had its result before it) and for an input never sent; `"unknown"` for one sent before
 * the connection broke (1006) and was not resumed, or before we closed.
 */
export class InputLost extends GaiaError {
  override name = "InputLost";
  constructor(
    readonly seq: number,
    readonly applied: false | "unknown",
    readonly code: number,
    readonly reason: string,
  ) {
    super(
      `input ${seq} has no result: connection closed (${code}${reason ? `: ${reason}` : ""}); ` +
        (applied === false ? "it was not applied" : "it may or may not have been applied"),
    );
  }
}

/** `connect` failed: the socket closed, errored or timed out before `Welcome`. */
export class ConnectError extends GaiaError {
  override name = "ConnectError";
  constructor(
    message: string,
    /** The close code, when the server sent one (4001 bad token, 4004 world full, ...). */
    readonly code?: number,
  ) {
    super(message);
  }
}

/**
 * `GaiaClient`: one player's session with a world (docs/protocol.md §3-5). It joins, numbers
 * inputs and settles each `send` by its `InputResult`, keeps the snapshot current, pings,
 * follows `Migrate` to the world's new server, and resumes the session when the connection
 * breaks (§4, "Resume"). Start with `connect`, then `attempt` (one socket), then `dropped`.
 * The codecs do the bytes (protocol.ts), inputs.ts keeps the books of inputs waiting for a
 * result, and backoff.ts says when to try again; this file only moves messages and keeps state.
 */
import { CONNECT_RETRY, DEFAULT_RESUME_GRACE_MS, RESUME_RETRY, nextPause, type RetryPolicy } from "./backoff.js";
import { Emitter } from "./emitter.js";
import { ConnectError, DecodeError, GaiaError } from "./errors.js";
import { Inputs, type Accepted } from "./inputs.js";
import {
  BINCODE,
  JSON_ENCODING,
  decodeServer,
  encodeClient,
  type ClientMsg,
  type Encoding,
  type ServerMsg,
  type WorldCodec,
  type WorldMessage,
} from "./protocol.js";
import { defaultSocket, frameData, type SocketFactory, type SocketLike } from "./socket.js";
import { applyChanges, townCodec, type Action, type Change, type Snapshot } from "./town.js";

export type { Accepted } from "./inputs.js";

/** A world as the client needs it: its codecs, and how its changes update its view. */
export interface World<A, V, C> {
  codec: WorldCodec<A, V, C>;
  apply(view: V, changes: readonly C[]): V;
}

export const town: World<Action, Snapshot, Change> = { codec: townCodec, apply: applyChanges };

export interface ClientOptions {
  /** How often to ping; the server closes a client silent for 30 s (4010). Default 5 s. */
  pingIntervalMs?: number;
  /** How long to wait for the socket to open, and then for `Welcome`. Default 10 s. */
  joinTimeoutMs?: number;
  /**
   * How long after a broken connection (1006) to keep trying to resume: the server's
   * `GAIA_RESUME_GRACE`. Default 10 s; 0 turns resume off (the session ends at once).
   */
  resumeGraceMs?: number;
  /** Pauses before the resume attempts; the last repeats while the grace lasts. Default 250, 500, 1000, 2000 ms. */
  resumeDelaysMs?: readonly number[];
  /**
   * Pauses before connecting again when a connect (`connect`, or after `Migrate`) fails before
   * the socket opens: HTTP 503, or the 1006 a browser shows for it. Default 500, 1000, 2000 ms.
   */
  connectRetryDelaysMs?: readonly number[];
  /** Opens sockets; the default uses the global `WebSocket`, or `ws` in Node. */
  socket?: SocketFactory;
}

export interface ConnectOptions {
  /** Default `gaia.v1.bincode`. */
  encoding?: Encoding;
}

export interface Welcome<V> {
  worldId: string;
  you: number;
  tick: number;
  snapshot: V;
  /** The last lines said in the world as of the Welcome, oldest first: the conversation so far. */
  messages: WorldMessage[];
}

export interface ClientEvents<V, C> {
  /** Joined, or back after a migration or a resume: the whole world, and `you`. */
  welcome: Welcome<V>;
  /** A delta, and the snapshot after it. */
  delta: { tick: number; serverUs: number; changes: C[]; snapshot: V };
  /** The client fell behind: the whole world again, and the last lines said (some may be new to it). */
  resync: { tick: number; snapshot: V; messages: WorldMessage[] };
  /** The world moved; the client is connecting to `address`. A `welcome` follows. */
  migrate: { address: string };
  /**
   * The connection broke without a close frame (`code` 1006); resume attempt `attempt` starts
   * in `delayMs`. Pending `send`s stay pending. `resumed` or `close` follows.
   */
  reconnecting: { attempt: number; delayMs: number; code: number };
  /** The session is back after a broken connection: the same `you`; `welcome` came just before. */
  resumed: Welcome<V>;
  pong: { nonce: number; rttMs: number };
  /** The session ended (not emitted for the old connection of a migration, nor for one that was resumed). */
  close: { code: number; reason: string; wasClean: boolean };
  /** A frame that did not decode, or a server `Error` message; the connection is closed after a bad frame. */
  error: GaiaError;
}

type CloseEvent = ClientEvents<unknown, unknown>["close"];

const CLIENT_CLOSE_BAD_FRAME = 4002;
/** No close frame came: the connection broke (docs/protocol.md §4). */
const BROKEN = 1006;
const CLOSED_BY_US: CloseEvent = { code: 1000, reason: "client closed", wasClean: true };

/** One socket that ended before its Welcome. */
class AttemptFailed extends Error {
  constructor(
    /** The socket opened (the upgrade succeeded) before it ended. */
    readonly opened: boolean,
    readonly event: CloseEvent,
    /** Trying again cannot help: the socket could not be made, or we gave up on it. */
    readonly final = false,
  ) {
    super(`connection closed before Welcome (${event.code}${event.reason ? `: ${event.reason}` : ""})`);
  }
  /** The server closed it with a frame: it refused us, with `event.code`. */
  get closeFrame(): boolean {
    return !this.final && this.event.code !== BROKEN;
  }
}

export class GaiaClient<A = Action, V = Snapshot, C = Change> extends Emitter<ClientEvents<V, C>> {
  private readonly world: World<A, V, C>;
  private readonly pingIntervalMs: number;
  private readonly joinTimeoutMs: number;
  private readonly resumeRetry: RetryPolicy;
  private readonly connectRetry: RetryPolicy;
  private readonly openSocket: SocketFactory;

  /** From `connect` until `close` is emitted. */
  private active = false;
  /** The app called `close` (or we closed on a bad frame): no more connections. */
  private closing = false;
  /** The current connection, or the one being opened. */
  private socket: SocketLike | null = null;
  /** `socket` had its Welcome. */
  private joined = false;
  private encoding: Encoding = BINCODE;
  /** Where the current session's server is, and the token to resume there. */
  private address = "";
  private resumeToken = "";
  private readonly inputs = new Inputs<A>();
  private nextNonce = 1;
  private readonly pings = new Map<number, number>();
  private pingTimer: ReturnType<typeof setInterval> | undefined;
  /** Ends the current pause between attempts early (on `close`). */
  private wake: (() => void) | undefined;
  private state: Welcome<V> | undefined;

  constructor(world?: World<A, V, C>, options: ClientOptions = {}) {
    super();
    this.world = world ?? (town as unknown as World<A, V, C>);
    this.pingIntervalMs = options.pingIntervalMs ?? 5_000;
    this.joinTimeoutMs = options.joinTimeoutMs ?? 10_000;
    this.resumeRetry = {
      delaysMs: options.resumeDelaysMs ?? RESUME_RETRY.delaysMs,
      withinMs: options.resumeGraceMs ?? DEFAULT_RESUME_GRACE_MS,
    };
    this.connectRetry = { delaysMs: options.connectRetryDelaysMs ?? CONNECT_RETRY.delaysMs };
    this.openSocket = options.socket ?? defaultSocket;
  }

  /** The world as of the last delta or resync; undefined before the first `Welcome`. */
  get snapshot(): V | undefined {
    return this.state?.snapshot;
  }
  /** The id of your entity (it changes on a migration, not on a resume). */
  get you(): number | undefined {
    return this.state?.you;
  }
  get worldId(): string | undefined {
    return this.state?.worldId;
  }
  get tick(): number | undefined {
    return this.state?.tick;
  }
  /** The encoding the server picked. */
  get encodingInUse(): Encoding {
    return this.encoding;
  }
  /** Inputs sent that have no result yet. */
  get inFlight(): number {
    return this.inputs.size;
  }

  /**
   * Opens the WebSocket, sends `Join`, resolves on `Welcome`. A connect that fails before the
   * socket opens (HTTP 503) is tried again a few times. Rejects with `ConnectError`.
   */
  connect(address: string, joinToken: string, options: ConnectOptions = {}): Promise<Welcome<V>> {
    if (this.active) return Promise.reject(new GaiaError("already connected"));
    this.active = true;
    this.closing = false;
    this.encoding = options.encoding ?? BINCODE;
    return this.join(address, joinToken);
  }

  /**
   * Sends `action` as the next `Input`. Resolves when the world applied it; rejects with
   * `InputRejected` (its reason), `InputLost` (the session ended first) or `EncodeError`.
   * While the client connects, migrates or resumes, the input waits and goes after the Welcome.
   */
  send(action: A): Promise<Accepted> {
    if (!this.active || this.closing) return Promise.reject(new GaiaError("not connected"));
    const { seq, result } = this.inputs.add(action);
    if (this.joined) this.writeInput(seq, action);
    return result;
  }

  /**
   * Leaves: closes with 1000 (no resume), or stops trying to reconnect. Inputs without a
   * result reject with `InputLost` (applied unknown, unless never sent).
   */
  close(): void {
    this.closing = true;
    this.wake?.();
    this.socket?.close(1000, "client closed");
  }

  /** `Join` at `address`, trying again while the connect fails before open; on failure the session ends. */
  private async join(address: string, token: string): Promise<Welcome<V>> {
    for (let retry = 1; ; retry++) {
      try {
        return await this.attempt(address, () => ({ type: "join", token }));
      } catch (error) {
        const failure = error as AttemptFailed;
        const again = !failure.opened && !failure.final && !this.closing;
        const pause = again ? nextPause(this.connectRetry, retry) : undefined;
        if (pause !== undefined && (await this.pause(pause))) continue;
        this.end(this.closing ? this.ours(failure.event) : failure.event, failure.closeFrame && !this.closing);
        const tries = retry > 1 ? ` (${retry} attempts)` : "";
        throw new ConnectError(`${address}: ${failure.message}${tries}`, failure.event.code);
      }
    }
  }

  /**
   * One socket to `address`: opens it, writes `first()` (Join or Resume), and on `Welcome`
   * makes it the session's connection, at once, so the frames right behind the Welcome are
   * handled in order. Rejects with `AttemptFailed`.
   */
  private attempt(address: string, first: () => ClientMsg<A>): Promise<Welcome<V>> {
    return new Promise<Welcome<V>>((resolve, reject) => {
      let opened = false;
      let settled = false;
      let timer: ReturnType<typeof setTimeout> | undefined;
      const fail = (socket: SocketLike | null, failure: AttemptFailed) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        if (socket && socket === this.socket) this.socket = null;
        reject(failure);
      };
      /** Fails with `failure` unless the next step comes within the join timeout. */
      const wait = (socket: SocketLike, failure: AttemptFailed) => {
        clearTimeout(timer);
        timer = setTimeout(() => {
          fail(socket, failure);
          socket.close(1000, "no welcome");
        }, this.joinTimeoutMs);
      };
      this.openSocket(address, [this.encoding]).then(
        (socket) => {
          let welcomed = false;
          let sent: ClientMsg<A> | undefined;
          // Nothing is sent before open, so a socket that does not open in time counts as refused.
          wait(socket, new AttemptFailed(false, { code: BROKEN, reason: `not open within ${this.joinTimeoutMs} ms`, wasClean: false }));
          socket.onerror = () => {}; // a close event follows, with the code
          socket.onopen = () => {
            opened = true;
            if (socket.protocol === BINCODE || socket.protocol === JSON_ENCODING) this.encoding = socket.protocol;
            const reason = `no Welcome within ${this.joinTimeoutMs} ms`;
            wait(socket, new AttemptFailed(true, { code: 1000, reason, wasClean: true }, true));
            sent = first();
            this.write(sent);
          };
          socket.onclose = (event) => {
            if (!welcomed) return fail(socket, new AttemptFailed(opened, event));
            if (socket === this.socket) this.dropped(event); // else: the old connection of a migration
          };
          socket.onmessage = (event) => {
            if (socket !== this.socket) return;
            const msg = this.decode(event.data);
            if (!msg) return;
            if (msg.type === "welcome" && !welcomed && sent) {
              welcomed = settled = true;
              clearTimeout(timer);
              this.welcomed(msg, address, sent);
              resolve(this.state!);
              return;
            }
            this.handle(msg);
          };
          this.socket = socket;
          this.joined = false;
          if (this.closing) socket.close(1000, "client closed");
        },
        (error: unknown) => fail(null, new AttemptFailed(false, { code: BROKEN, reason: `cannot open: ${String(error)}`, wasClean: false }, true)),
      );
    });
  }

  /**
   * The session's connection closed. A close frame from the server (whatever its code) or
   * our own close ends the session; a broken connection (1006) is resumed, when the server
   * gave a resume token.
   */
  private dropped(event: CloseEvent): void {
    this.stopPings();
    this.socket = null;
    this.joined = false;
    const closeFrame = event.code !== BROKEN;
    if (this.closing || closeFrame || !this.resumeToken || !this.resumeRetry.withinMs) {
      return this.end(event, closeFrame && !this.closing);
    }
    this.inputs.broke();
    void this.resume(event);
  }

  /**
   * `Resume` at the same server, same encoding, with the token of the last Welcome, retrying
   * at growing pauses within the grace. A close frame refuses it (4012 too late, 4001 bad
   * token, ...): the session ends.
   */
  private async resume(broken: CloseEvent): Promise<void> {
    const started = Date.now();
    const { address, resumeToken: token } = this;
    for (let attempt = 1; ; attempt++) {
      const delayMs = nextPause(this.resumeRetry, attempt, Date.now() - started);
      if (delayMs === undefined) {
        const reason = `no resume within ${this.resumeRetry.withinMs} ms`;
        return this.end({ code: broken.code, reason, wasClean: false }, false);
      }
      this.emit("reconnecting", { attempt, delayMs, code: broken.code });
      if (!(await this.pause(delayMs))) return this.end(CLOSED_BY_US, false);
      try {
        await this.attempt(address, () => ({ type: "resume", token, awaiting: this.inputs.awaiting() }));
        return;
      } catch (error) {
        const failure = error as AttemptFailed;
        if (this.closing) return this.end(this.ours(failure.event), false);
        if (failure.closeFrame || failure.final) return this.end(failure.event, failure.closeFrame);
      }
    }
  }

  /** How a connection we closed ended: as its close event says, unless it only says it broke. */
  private ours(event: CloseEvent): CloseEvent {
    return event.code === BROKEN ? CLOSED_BY_US : event;
  }

  /** Resolves true after `ms`, or false at once when the app closes meanwhile. */
  private pause(ms: number): Promise<boolean> {
    if (this.closing) return Promise.resolve(false);
    return new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => {
        this.wake = undefined;
        resolve(!this.closing);
      }, ms);
      this.wake = () => {
        clearTimeout(timer);
        this.wake = undefined;
        resolve(false);
      };
    });
  }

  private decode(data: unknown): ServerMsg<V, C> | undefined {
    try {
      const frame = frameData(data);
      if (frame === undefined) throw new DecodeError("a frame that is neither text nor binary", "frame");
      return decodeServer(this.world.codec, frame, this.encoding);
    } catch (error) {
      const e = error instanceof GaiaError ? error : new GaiaError(String(error));
      this.emit("error", e);
      // We close, so what is pending may or may not have been applied.
      this.closing = true;
      this.socket?.close(CLIENT_CLOSE_BAD_FRAME, e.message.slice(0, 120));
      return undefined;
    }
  }

  private welcomed(msg: Extract<ServerMsg<V, C>, { type: "welcome" }>, address: string, sent: ClientMsg<A>): void {
    this.joined = true;
    this.address = address;
    this.resumeToken = msg.resume;
    this.state = { worldId: msg.worldId, you: msg.you, tick: msg.tick, snapshot: msg.snapshot, messages: msg.messages };
    this.startPings();
    if (sent.type === "resume") this.inputs.resumed(sent.awaiting);
    // After a migration, the inputs that had no result; after a resume, those sent while away.
    this.writeUnsent();
    this.emit("welcome", this.state);
    if (sent.type === "resume") this.emit("resumed", this.state);
  }

  private handle(msg: ServerMsg<V, C>): void {
    const state = this.state;
    switch (msg.type) {
      case "welcome":
        // A second Welcome on one connection is not in the protocol; take it as the truth.
        this.state = { worldId: msg.worldId, you: msg.you, tick: msg.tick, snapshot: msg.snapshot, messages: msg.messages };
        this.resumeToken = msg.resume;
        return this.emit("welcome", this.state);
      case "delta":
        if (!state) return;
        state.snapshot = this.world.apply(state.snapshot, msg.changes);
        state.tick = msg.tick;
        return this.emit("delta", { tick: msg.tick, serverUs: msg.serverUs, changes: msg.changes, snapshot: state.snapshot });
      case "resync":
        if (!state) return;
        state.snapshot = msg.snapshot;
        state.tick = msg.tick;
        return this.emit("resync", { tick: msg.tick, snapshot: msg.snapshot, messages: msg.messages });
      case "inputResult":
        // Unknown seqs are ignored; a resumed input the server never got goes again.
        if (this.inputs.settle(msg.seq, msg.tick, msg.outcome) === "again") this.writeUnsent();
        return;
      case "migrate":
        return this.migrate(msg.address, msg.token);
      case "pong": {
        const sentAt = this.pings.get(msg.nonce);
        this.pings.delete(msg.nonce);
        if (sentAt !== undefined) this.emit("pong", { nonce: msg.nonce, rttMs: Date.now() - sentAt });
        return;
      }
      case "error":
        return this.emit("error", new GaiaError(`server error ${msg.code}: ${msg.message}`));
    }
  }

  /**
   * Every input the world applied has had its result by now, so what is pending was not
   * applied: it goes again on the new connection, after its Welcome.
   */
  private migrate(address: string, token: string): void {
    const old = this.socket;
    this.stopPings();
    this.joined = false;
    this.inputs.migrated();
    this.socket = null;
    this.resumeToken = "";
    old?.close(1000, "migrating");
    this.emit("migrate", { address });
    this.join(address, token).catch(() => {
      // `join` already rejected the inputs and emitted `close` with the new server's code.
    });
  }

  /** The session is over: what waits for a result is lost, and the app hears `close`. */
  private end(event: CloseEvent, closeFrame: boolean): void {
    this.stopPings();
    this.socket = null;
    this.joined = false;
    this.active = false;
    this.resumeToken = "";
    this.inputs.lose(event, closeFrame);
    this.emit("close", event);
  }

  private writeUnsent(): void {
    for (const [seq, action] of this.inputs.unsent()) this.writeInput(seq, action);
  }

  private writeInput(seq: number, action: A): void {
    try {
      this.write({ type: "input", seq, action });
      this.inputs.markSent(seq);
    } catch (error) {
      this.inputs.fail(seq, error instanceof GaiaError ? error : new GaiaError(String(error)));
    }
  }

  private write(msg: ClientMsg<A>): void {
    this.socket?.send(encodeClient(this.world.codec, msg, this.encoding));
  }

  private startPings(): void {
    this.stopPings();
    this.pingTimer = setInterval(() => {
      const nonce = this.nextNonce++;
      this.pings.set(nonce, Date.now());
      if (this.pings.size > 16) this.pings.delete(this.pings.keys().next().value!);
      this.write({ type: "ping", nonce });
    }, this.pingIntervalMs);
  }

  private stopPings(): void {
    clearInterval(this.pingTimer);
    this.pingTimer = undefined;
    this.pings.clear();
  }
}

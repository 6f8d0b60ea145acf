/**
 * `GaiaClient`: one player's session with a world (docs/protocol.md §3-5). It joins, numbers
 * inputs and settles each `send` by its `InputResult`, keeps the snapshot current, pings,
 * and follows `Migrate` to the world's new server, sending again what had no result.
 * The codecs do the bytes (protocol.ts); this file only moves messages and keeps state.
 */
import { Emitter } from "./emitter.js";
import { ConnectError, DecodeError, GaiaError, InputLost, InputRejected } from "./errors.js";
import {
  BINCODE,
  JSON_ENCODING,
  decodeServer,
  encodeClient,
  type ClientMsg,
  type Encoding,
  type ServerMsg,
  type WorldCodec,
} from "./protocol.js";
import { defaultSocket, frameData, type SocketFactory, type SocketLike } from "./socket.js";
import { applyChanges, townCodec, type Action, type Change, type Snapshot } from "./town.js";

/** A world as the client needs it: its codecs, and how its changes update its view. */
export interface World<A, V, C> {
  codec: WorldCodec<A, V, C>;
  apply(view: V, changes: readonly C[]): V;
}

export const town: World<Action, Snapshot, Change> = { codec: townCodec, apply: applyChanges };

export interface ClientOptions {
  /** How often to ping; the server closes a client silent for 30 s (4010). Default 5 s. */
  pingIntervalMs?: number;
  /** How long to wait for `Welcome` after the socket opens. Default 10 s. */
  joinTimeoutMs?: number;
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
}

export interface Accepted {
  seq: number;
  /** The tick that applied the input. */
  tick: number;
}

export interface ClientEvents<V, C> {
  welcome: Welcome<V>;
  /** A delta, and the snapshot after it. */
  delta: { tick: number; serverUs: number; changes: C[]; snapshot: V };
  resync: { tick: number; snapshot: V };
  /** The world moved; the client is connecting to `address`. A `welcome` follows. */
  migrate: { address: string };
  pong: { nonce: number; rttMs: number };
  /** The session ended (not emitted for the old connection of a migration). */
  close: { code: number; reason: string; wasClean: boolean };
  /** A frame that did not decode, or a server `Error` message; the connection is closed after a bad frame. */
  error: GaiaError;
}

interface Pending<A> {
  action: A;
  resolve(accepted: Accepted): void;
  reject(error: GaiaError): void;
  /** Sent on the current connection (false while joining, or after a migration, until resent). */
  sent: boolean;
}

const CLIENT_CLOSE_BAD_FRAME = 4002;

export class GaiaClient<A = Action, V = Snapshot, C = Change> extends Emitter<ClientEvents<V, C>> {
  private readonly world: World<A, V, C>;
  private readonly pingIntervalMs: number;
  private readonly joinTimeoutMs: number;
  private readonly openSocket: SocketFactory;

  private socket: SocketLike | null = null;
  private encoding: Encoding = BINCODE;
  private joined = false;
  private closing = false;
  private nextSeq = 1;
  private nextNonce = 1;
  private readonly pending = new Map<number, Pending<A>>();
  private readonly pings = new Map<number, number>();
  private pingTimer: ReturnType<typeof setInterval> | undefined;
  private state: Welcome<V> | undefined;

  constructor(world?: World<A, V, C>, options: ClientOptions = {}) {
    super();
    this.world = world ?? (town as unknown as World<A, V, C>);
    this.pingIntervalMs = options.pingIntervalMs ?? 5_000;
    this.joinTimeoutMs = options.joinTimeoutMs ?? 10_000;
    this.openSocket = options.socket ?? defaultSocket;
  }

  /** The world as of the last delta or resync; undefined before the first `Welcome`. */
  get snapshot(): V | undefined {
    return this.state?.snapshot;
  }
  /** The id of your entity (it changes on a migration). */
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
    return this.pending.size;
  }

  /** Opens the WebSocket, sends `Join`, resolves on `Welcome`. Rejects with `ConnectError`. */
  connect(address: string, joinToken: string, options: ConnectOptions = {}): Promise<Welcome<V>> {
    if (this.socket) return Promise.reject(new GaiaError("already connected"));
    this.encoding = options.encoding ?? BINCODE;
    this.closing = false;
    return this.open(address, joinToken);
  }

  /**
   * Sends `action` as the next `Input`. Resolves when the world applied it; rejects with
   * `InputRejected` (its reason), `InputLost` (the connection ended first) or `EncodeError`.
   */
  send(action: A): Promise<Accepted> {
    if (!this.socket || this.closing) return Promise.reject(new GaiaError("not connected"));
    const seq = this.nextSeq;
    this.nextSeq = seq >= 0xffff_ffff ? 1 : seq + 1;
    return new Promise<Accepted>((resolve, reject) => {
      const pending: Pending<A> = { action, resolve, reject, sent: false };
      if (this.joined) {
        try {
          this.write({ type: "input", seq, action });
        } catch (error) {
          return reject(error);
        }
        pending.sent = true;
      }
      this.pending.set(seq, pending);
    });
  }

  /** Closes the session. Inputs without a result reject with `InputLost` (applied unknown). */
  close(): void {
    this.closing = true;
    this.socket?.close(1000, "client closed");
  }

  private open(address: string, token: string): Promise<Welcome<V>> {
    return new Promise<Welcome<V>>((resolve, reject) => {
      let welcomed = false;
      let timer: ReturnType<typeof setTimeout> | undefined;
      const fail = (error: GaiaError) => {
        clearTimeout(timer);
        reject(error);
      };
      this.openSocket(address, [this.encoding]).then((socket) => {
        this.socket = socket;
        this.joined = false;
        socket.onopen = () => {
          if (socket.protocol === BINCODE || socket.protocol === JSON_ENCODING) this.encoding = socket.protocol;
          timer = setTimeout(() => {
            fail(new ConnectError(`no Welcome within ${this.joinTimeoutMs} ms`));
            socket.close(1000, "no welcome");
          }, this.joinTimeoutMs);
          this.write({ type: "join", token });
        };
        socket.onerror = () => {}; // a close event follows, with the code
        socket.onclose = (event) => {
          if (socket !== this.socket) return; // the old connection of a migration
          this.ended(event);
          if (!welcomed) {
            fail(new ConnectError(`connection closed before Welcome (${event.code}${event.reason ? `: ${event.reason}` : ""})`, event.code));
          }
        };
        socket.onmessage = (event) => {
          if (socket !== this.socket) return;
          const msg = this.decode(event.data);
          if (!msg) return;
          if (msg.type === "welcome" && !welcomed) {
            welcomed = true;
            clearTimeout(timer);
            this.welcomed(msg);
            resolve(this.state!);
            return;
          }
          this.handle(msg);
        };
      }, (error: unknown) => fail(new ConnectError(`cannot open ${address}: ${String(error)}`)));
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

  private welcomed(msg: Extract<ServerMsg<V, C>, { type: "welcome" }>): void {
    this.joined = true;
    this.state = { worldId: msg.worldId, you: msg.you, tick: msg.tick, snapshot: msg.snapshot };
    this.startPings();
    this.emit("welcome", this.state);
    // After a migration: the inputs that had no result go again, under the same seq.
    for (const [seq, pending] of this.pending) {
      if (pending.sent) continue;
      try {
        this.write({ type: "input", seq, action: pending.action });
        pending.sent = true;
      } catch (error) {
        this.pending.delete(seq);
        pending.reject(error as GaiaError);
      }
    }
  }

  private handle(msg: ServerMsg<V, C>): void {
    const state = this.state;
    switch (msg.type) {
      case "welcome":
        // A second Welcome on one connection is not in the protocol; take it as the truth.
        this.state = { worldId: msg.worldId, you: msg.you, tick: msg.tick, snapshot: msg.snapshot };
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
        return this.emit("resync", { tick: msg.tick, snapshot: msg.snapshot });
      case "inputResult": {
        const pending = this.pending.get(msg.seq);
        if (!pending) return; // rejected at once (tick 0) may race nothing; unknown seqs are ignored
        this.pending.delete(msg.seq);
        if (msg.outcome.type === "ok") pending.resolve({ seq: msg.seq, tick: msg.tick });
        else pending.reject(new InputRejected(msg.seq, msg.outcome.reason, msg.tick));
        return;
      }
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
    for (const pending of this.pending.values()) pending.sent = false;
    this.socket = null;
    old?.close(1000, "migrating");
    this.emit("migrate", { address });
    this.open(address, token).catch(() => {
      // `ended` already rejected the inputs and emitted `close` with the new server's code.
    });
  }

  private ended(event: { code: number; reason: string; wasClean: boolean }): void {
    this.stopPings();
    this.socket = null;
    this.joined = false;
    // A close frame from the server comes after the result of every input the world applied.
    const serverClosed = !this.closing && event.wasClean && event.code !== 1006;
    for (const [seq, pending] of this.pending) {
      pending.reject(new InputLost(seq, serverClosed && !pending.sent ? false : serverClosed ? false : "unknown", event.code, event.reason));
    }
    this.pending.clear();
    this.emit("close", event);
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
  }
}

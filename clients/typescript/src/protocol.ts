/**
 * The envelope every world shares (docs/protocol.md §6-7): `ClientMsg` and `ServerMsg`,
 * generic over the world's action, view and change, in both encodings. A world plugs in
 * through `WorldCodec` (see `town.ts`). Start with `encodeClient` / `decodeServer`.
 *
 * The message types are generated from the Rust ones (src/generated/protocol.ts); the codecs
 * here are written by hand, and type-checked against them.
 */
import { Reader, Writer } from "./bincode.js";
import { DecodeError, EncodeError } from "./errors.js";
import type { WorldMessage } from "./generated/activity.js";
import type { ClientMsg, InputOutcome, ServerMsg } from "./generated/protocol.js";
import { Fields, int, parse, tags, type Json } from "./json.js";

export type { ClientMsg, InputOutcome, ServerMsg, WorldMessage };

export const PROTOCOL_VERSION = 1;
/** A client frame is at most this many bytes (the WebSocket payload); larger ones close with 4011. */
export const MAX_CLIENT_FRAME = 4096;

export const BINCODE = "gaia.v1.bincode";
export const JSON_ENCODING = "gaia.v1.json";
export type Encoding = typeof BINCODE | typeof JSON_ENCODING;
export type Frame = Uint8Array | string;

/** One type in both encodings. `fromJson` gets the value and its path, for errors. */
export interface TypeCodec<T> {
  write(w: Writer, value: T): void;
  read(r: Reader): T;
  toJson(value: T): Json;
  fromJson(value: unknown, path: string): T;
}

export interface WorldCodec<A, V, C> {
  action: TypeCodec<A>;
  view: TypeCodec<V>;
  change: TypeCodec<C>;
}

const CLIENT_TYPES = tags<ClientMsg<unknown>["type"]>()(["join", "input", "ping", "resume"]);
const SERVER_TYPES = tags<ServerMsg<unknown, unknown>["type"]>()([
  "welcome",
  "delta",
  "resync",
  "inputResult",
  "migrate",
  "error",
  "pong",
]);
const OUTCOME_TYPES = tags<InputOutcome["type"]>()(["ok", "rejected"]);

// ---- bincode ----

function frame(write: (w: Writer) => void): Uint8Array {
  const w = new Writer();
  w.uint(PROTOCOL_VERSION, "u16");
  write(w);
  return w.finish();
}

function unframe<T>(bytes: Uint8Array, read: (r: Reader) => T): T {
  const r = new Reader(bytes);
  const version = r.uint("u16");
  if (version !== PROTOCOL_VERSION) throw new DecodeError(`unsupported protocol version ${version}`, "byte 0");
  const msg = read(r);
  r.end();
  return msg;
}

/** A line said, as `welcome` and `resync` carry the last ones. */
function writeMessage(w: Writer, m: WorldMessage): void {
  w.uint(m.epoch, "u64");
  w.uint(m.tick, "u64");
  w.uint(m.seq, "u32");
  w.uint(m.atMs, "u64");
  w.uint(m.authorId, "u32");
  w.string(m.author);
  w.string(m.text);
}

function readMessage(r: Reader): WorldMessage {
  return {
    epoch: r.uint("u64"),
    tick: r.uint("u64"),
    seq: r.uint("u32"),
    atMs: r.uint("u64"),
    authorId: r.uint("u32"),
    author: r.string(),
    text: r.string(),
  };
}

function writeClient<A>(world: WorldCodec<A, unknown, unknown>, w: Writer, m: ClientMsg<A>): void {
  w.variant(CLIENT_TYPES.indexOf(m.type));
  switch (m.type) {
    case "join":
      return w.string(m.token);
    case "input":
      w.uint(m.seq, "u32");
      return world.action.write(w, m.action);
    case "ping":
      return w.uint(m.nonce, "u64");
    case "resume":
      w.string(m.token);
      return w.list(m.awaiting, (w, seq) => w.uint(seq, "u32"));
  }
}

function readClient<A>(world: WorldCodec<A, unknown, unknown>, r: Reader): ClientMsg<A> {
  switch (CLIENT_TYPES[r.variant("ClientMsg", CLIENT_TYPES.length)]!) {
    case "join":
      return { type: "join", token: r.string() };
    case "input":
      return { type: "input", seq: r.uint("u32"), action: world.action.read(r) };
    case "ping":
      return { type: "ping", nonce: r.uint("u64") };
    case "resume":
      return { type: "resume", token: r.string(), awaiting: r.list((r) => r.uint("u32")) };
  }
}

function writeServer<V, C>(world: WorldCodec<unknown, V, C>, w: Writer, m: ServerMsg<V, C>): void {
  w.variant(SERVER_TYPES.indexOf(m.type));
  switch (m.type) {
    case "welcome":
      w.string(m.worldId);
      w.uint(m.you, "u32");
      w.uint(m.tick, "u64");
      world.view.write(w, m.snapshot);
      w.string(m.resume);
      return w.list(m.messages, writeMessage);
    case "delta":
      w.uint(m.tick, "u64");
      w.uint(m.serverUs, "u64");
      return w.list(m.changes, (w, c) => world.change.write(w, c));
    case "resync":
      w.uint(m.tick, "u64");
      world.view.write(w, m.snapshot);
      return w.list(m.messages, writeMessage);
    case "inputResult":
      w.uint(m.seq, "u32");
      w.uint(m.tick, "u64");
      w.variant(OUTCOME_TYPES.indexOf(m.outcome.type));
      if (m.outcome.type === "rejected") w.string(m.outcome.reason);
      return;
    case "migrate":
      w.string(m.address);
      return w.string(m.token);
    case "error":
      w.uint(m.code, "u16");
      return w.string(m.message);
    case "pong":
      return w.uint(m.nonce, "u64");
  }
}

function readServer<V, C>(world: WorldCodec<unknown, V, C>, r: Reader): ServerMsg<V, C> {
  switch (SERVER_TYPES[r.variant("ServerMsg", SERVER_TYPES.length)]!) {
    case "welcome":
      return {
        type: "welcome",
        worldId: r.string(),
        you: r.uint("u32"),
        tick: r.uint("u64"),
        snapshot: world.view.read(r),
        resume: r.string(),
        messages: r.list(readMessage),
      };
    case "delta":
      return { type: "delta", tick: r.uint("u64"), serverUs: r.uint("u64"), changes: r.list((r) => world.change.read(r)) };
    case "resync":
      return { type: "resync", tick: r.uint("u64"), snapshot: world.view.read(r), messages: r.list(readMessage) };
    case "inputResult": {
      const seq = r.uint("u32");
      const tick = r.uint("u64");
      const outcome: InputOutcome =
        r.variant("InputOutcome", OUTCOME_TYPES.length) === 0 ? { type: "ok" } : { type: "rejected", reason: r.string() };
      return { type: "inputResult", seq, tick, outcome };
    }
    case "migrate":
      return { type: "migrate", address: r.string(), token: r.string() };
    case "error":
      return { type: "error", code: r.uint("u16"), message: r.string() };
    case "pong":
      return { type: "pong", nonce: r.uint("u64") };
  }
}

// ---- JSON ----

function clientToJson<A>(world: WorldCodec<A, unknown, unknown>, m: ClientMsg<A>): ClientMsg<Json> {
  switch (m.type) {
    case "join":
      return { type: "join", token: m.token };
    case "input":
      return { type: "input", seq: m.seq, action: world.action.toJson(m.action) };
    case "ping":
      return { type: "ping", nonce: m.nonce };
    case "resume":
      return { type: "resume", token: m.token, awaiting: [...m.awaiting] };
  }
}

function clientFromJson<A>(world: WorldCodec<A, unknown, unknown>, v: unknown): ClientMsg<A> {
  const f = Fields.of<ClientMsg<unknown>>(v, "");
  let m: ClientMsg<A>;
  switch (f.tag(CLIENT_TYPES, "client message")) {
    case "join":
      m = { type: "join", token: f.string("token") };
      break;
    case "input":
      m = { type: "input", seq: f.int("seq", "u32"), action: world.action.fromJson(f.get("action"), "action") };
      break;
    case "ping":
      m = { type: "ping", nonce: f.int("nonce", "u64") };
      break;
    case "resume":
      m = {
        type: "resume",
        token: f.string("token"),
        awaiting: f.array("awaiting").map((seq, i) => int(seq, "u32", `awaiting[${i}]`)),
      };
      break;
  }
  f.done();
  return m;
}

function serverToJson<V, C>(world: WorldCodec<unknown, V, C>, m: ServerMsg<V, C>): ServerMsg<Json, Json> {
  switch (m.type) {
    case "welcome":
      return {
        type: m.type,
        worldId: m.worldId,
        you: m.you,
        tick: m.tick,
        snapshot: world.view.toJson(m.snapshot),
        resume: m.resume,
        messages: m.messages.map((line) => ({ ...line })),
      };
    case "delta":
      return { type: m.type, tick: m.tick, serverUs: m.serverUs, changes: m.changes.map((c) => world.change.toJson(c)) };
    case "resync":
      return {
        type: m.type,
        tick: m.tick,
        snapshot: world.view.toJson(m.snapshot),
        messages: m.messages.map((line) => ({ ...line })),
      };
    case "inputResult":
      return { type: m.type, seq: m.seq, tick: m.tick, outcome: { ...m.outcome } };
    case "migrate":
      return { type: m.type, address: m.address, token: m.token };
    case "error":
      return { type: m.type, code: m.code, message: m.message };
    case "pong":
      return { type: m.type, nonce: m.nonce };
  }
}

function outcomeFromJson(v: unknown, path: string): InputOutcome {
  const f = Fields.of<InputOutcome>(v, path);
  const o: InputOutcome =
    f.tag(OUTCOME_TYPES, "outcome") === "ok" ? { type: "ok" } : { type: "rejected", reason: f.string("reason") };
  f.done();
  return o;
}

function messageFromJson(v: unknown, path: string): WorldMessage {
  const f = Fields.of<WorldMessage>(v, path);
  const m: WorldMessage = {
    epoch: f.int("epoch", "u64"),
    tick: f.int("tick", "u64"),
    seq: f.int("seq", "u32"),
    atMs: f.int("atMs", "u64"),
    authorId: f.int("authorId", "u32"),
    author: f.string("author"),
    text: f.string("text"),
  };
  f.done();
  return m;
}

function messagesFromJson(f: Fields<ServerMsg<unknown, unknown>>): WorldMessage[] {
  return f.array("messages").map((line, i) => messageFromJson(line, `messages[${i}]`));
}

function serverFromJson<V, C>(world: WorldCodec<unknown, V, C>, v: unknown): ServerMsg<V, C> {
  const f = Fields.of<ServerMsg<unknown, unknown>>(v, "");
  let m: ServerMsg<V, C>;
  switch (f.tag(SERVER_TYPES, "server message")) {
    case "welcome":
      m = {
        type: "welcome",
        worldId: f.string("worldId"),
        you: f.int("you", "u32"),
        tick: f.int("tick", "u64"),
        snapshot: world.view.fromJson(f.get("snapshot"), "snapshot"),
        resume: f.string("resume"),
        messages: messagesFromJson(f),
      };
      break;
    case "delta":
      m = {
        type: "delta",
        tick: f.int("tick", "u64"),
        serverUs: f.int("serverUs", "u64"),
        changes: f.array("changes").map((c, i) => world.change.fromJson(c, `changes[${i}]`)),
      };
      break;
    case "resync":
      m = {
        type: "resync",
        tick: f.int("tick", "u64"),
        snapshot: world.view.fromJson(f.get("snapshot"), "snapshot"),
        messages: messagesFromJson(f),
      };
      break;
    case "inputResult":
      m = {
        type: "inputResult",
        seq: f.int("seq", "u32"),
        tick: f.int("tick", "u64"),
        outcome: outcomeFromJson(f.get("outcome"), "outcome"),
      };
      break;
    case "migrate":
      m = { type: "migrate", address: f.string("address"), token: f.string("token") };
      break;
    case "error":
      m = { type: "error", code: f.int("code", "u16"), message: f.string("message") };
      break;
    case "pong":
      m = { type: "pong", nonce: f.int("nonce", "u64") };
      break;
  }
  f.done();
  return m;
}

// ---- the entry points ----

const utf8 = new TextEncoder();

/** A client frame in `encoding`. Throws `EncodeError` for a bad value or a frame over 4096 bytes. */
export function encodeClient<A>(world: WorldCodec<A, unknown, unknown>, m: ClientMsg<A>, encoding: Encoding): Frame {
  const out: Frame =
    encoding === BINCODE ? frame((w) => writeClient(world, w, m)) : JSON.stringify(clientToJson(world, m));
  const size = typeof out === "string" ? utf8.encode(out).length : out.length;
  if (size > MAX_CLIENT_FRAME) {
    throw new EncodeError(`frame of ${size} bytes exceeds the limit of ${MAX_CLIENT_FRAME} bytes`);
  }
  return out;
}

/** A server frame. Throws only `DecodeError`, also for a frame of the wrong kind. */
export function decodeServer<V, C>(world: WorldCodec<unknown, V, C>, data: Frame, encoding: Encoding): ServerMsg<V, C> {
  return decode(data, encoding, (r) => readServer(world, r), (v) => serverFromJson(world, v));
}

/** The server's side, for tests and tools: a client frame decoded. */
export function decodeClient<A>(world: WorldCodec<A, unknown, unknown>, data: Frame, encoding: Encoding): ClientMsg<A> {
  return decode(data, encoding, (r) => readClient(world, r), (v) => clientFromJson(world, v));
}

/** The server's side, for tests and tools: a server frame encoded. */
export function encodeServer<V, C>(world: WorldCodec<unknown, V, C>, m: ServerMsg<V, C>, encoding: Encoding): Frame {
  return encoding === BINCODE ? frame((w) => writeServer(world, w, m)) : JSON.stringify(serverToJson(world, m));
}

/** The JSON value of a message, without stringifying: what `gaia.v1.json` frames hold. */
export function clientJson<A>(world: WorldCodec<A, unknown, unknown>, m: ClientMsg<A>): Json {
  return clientToJson(world, m);
}
export function serverJson<V, C>(world: WorldCodec<unknown, V, C>, m: ServerMsg<V, C>): Json {
  return serverToJson(world, m);
}

function decode<T>(data: Frame, encoding: Encoding, bin: (r: Reader) => T, json: (v: unknown) => T): T {
  if (encoding === BINCODE) {
    if (typeof data === "string") throw new DecodeError("text frame on gaia.v1.bincode", "frame");
    return unframe(data, bin);
  }
  if (typeof data !== "string") throw new DecodeError("binary frame on gaia.v1.json", "frame");
  return json(parse(data));
}

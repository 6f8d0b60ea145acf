/**
 * `@gaia-fleet/client`: a client for Gaia Fleet game servers, written from docs/protocol.md.
 * Start with `GaiaClient` (client.ts); the codecs are in protocol.ts (the envelope) and
 * town.ts (the reference world); `PlaybackClock` and `Track` (interpolation.ts) smooth movement.
 * The message types, and the allocator's request and response types for a matchmaker, are
 * generated from the Rust ones (generated/).
 */
export * from "./errors.js";
export { Reader, Writer, fromHex, toHex } from "./bincode.js";
export type { Json } from "./json.js";
export * from "./protocol.js";
export * from "./town.js";
export * from "./client.js";
export { NEVER_REACHED, SPECTATORS_CANNOT_ACT } from "./inputs.js";
export { Emitter } from "./emitter.js";
export { defaultSocket, type SocketFactory, type SocketLike } from "./socket.js";
export * from "./interpolation.js";
export type * from "./generated/activity.js";
export type * from "./generated/allocation.js";
export type * from "./generated/gameserver.js";

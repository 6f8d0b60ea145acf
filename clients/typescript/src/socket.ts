/**
 * The little of the WebSocket API the client uses, so it runs on the browser's `WebSocket`,
 * on the `ws` package in Node 20 (which has no global one without a flag), and on a fake in tests.
 */
export interface SocketLike {
  binaryType: string;
  /** The subprotocol the server picked ("" when it named none). */
  readonly protocol: string;
  send(data: Uint8Array | string): void;
  close(code?: number, reason?: string): void;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string; wasClean: boolean }) => void) | null;
  onerror: ((event: unknown) => void) | null;
}

export type SocketFactory = (url: string, protocols: string[]) => Promise<SocketLike>;

type WebSocketCtor = new (url: string, protocols: string[]) => SocketLike;

let nodeWebSocket: Promise<WebSocketCtor> | undefined;

/** The global `WebSocket` where there is one, else `ws` (loaded only then). */
export const defaultSocket: SocketFactory = async (url, protocols) => {
  const global = (globalThis as { WebSocket?: WebSocketCtor }).WebSocket;
  const Ctor = global ?? (await (nodeWebSocket ??= import("ws").then((m) => m.WebSocket as unknown as WebSocketCtor)));
  const socket = new Ctor(url, protocols);
  socket.binaryType = "arraybuffer";
  return socket;
};

/** A message's data as the codecs take it: text as a string, binary as bytes. */
export function frameData(data: unknown): Uint8Array | string | undefined {
  if (typeof data === "string") return data;
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  return undefined;
}

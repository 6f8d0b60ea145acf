// A socket factory that records every frame a client sends and receives, decoded, on every
// connection it opens: what the protocol saw, as opposed to what GaiaClient made of it.
import { decodeClient, decodeServer, defaultSocket, townCodec, type Action, type Change, type ClientMsg, type Encoding, type ServerMsg, type SocketFactory, type SocketLike, type Snapshot } from "../../src/index.js";
import { frameData } from "../../src/socket.js";

export interface Tap {
  socket: SocketFactory;
  /** Per connection, in order: the frames sent and received. */
  connections: Array<{ sent: ClientMsg<Action>[]; received: ServerMsg<Snapshot, Change>[] }>;
}

export function tap(inner: SocketFactory = defaultSocket): Tap {
  const connections: Tap["connections"] = [];
  const socket: SocketFactory = async (url, protocols) => {
    const real = await inner(url, protocols);
    const log = { sent: [] as ClientMsg<Action>[], received: [] as ServerMsg<Snapshot, Change>[] };
    connections.push(log);
    const encoding = () => (real.protocol || protocols[0]) as Encoding;
    const outer: SocketLike = {
      get binaryType() {
        return real.binaryType;
      },
      set binaryType(value: string) {
        real.binaryType = value;
      },
      get protocol() {
        return real.protocol;
      },
      send(data) {
        log.sent.push(decodeClient(townCodec, data, encoding()));
        real.send(data);
      },
      close(code, reason) {
        real.close(code, reason);
      },
      onopen: null,
      onmessage: null,
      onclose: null,
      onerror: null,
    };
    real.onopen = (e) => outer.onopen?.(e);
    real.onerror = (e) => outer.onerror?.(e);
    real.onclose = (e) => outer.onclose?.(e);
    real.onmessage = (e) => {
      const frame = frameData(e.data);
      if (frame !== undefined) log.received.push(decodeServer(townCodec, frame, encoding()));
      outer.onmessage?.(e);
    };
    return outer;
  };
  return { socket, connections };
}

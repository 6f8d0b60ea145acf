// A TCP proxy for fleet tests: it forwards each connection to one server; `stall()` stops
// passing on what the server sends (so results are sent that never arrive), and `cut()` resets
// every connection at once, both ways, as a network failure would (no WebSocket close frame).
import { connect, createServer, type Server, type Socket } from "node:net";

export class CutProxy {
  private readonly sockets = new Set<Socket>();
  private readonly pairs = new Set<{ client: Socket; upstream: Socket }>();
  private refusing = 0;
  /** Connections accepted so far (refused ones included). */
  accepted = 0;

  private constructor(
    private readonly server: Server,
    readonly port: number,
  ) {}

  /** Listens on a free port of 127.0.0.1 and forwards to `host:port`. */
  static async start(host: string, port: number): Promise<CutProxy> {
    const server = createServer();
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(0, "127.0.0.1", () => resolve());
    });
    const address = server.address();
    if (!address || typeof address !== "object") throw new Error("proxy: no port");
    const proxy = new CutProxy(server, address.port);
    server.on("connection", (client) => proxy.forward(client, host, port));
    return proxy;
  }

  /** The proxy's address for a server address `ws://host:port/path`: the same path, through us. */
  static for(address: string): Promise<CutProxy> {
    const url = new URL(address);
    return CutProxy.start(url.hostname, Number(url.port));
  }

  /** `address` with its host and port replaced by ours. */
  via(address: string): string {
    const url = new URL(address);
    url.host = `127.0.0.1:${this.port}`;
    return url.toString();
  }

  /** Resets every connection now, both sides; returns how many there were. */
  cut(): number {
    const pairs = this.pairs.size;
    for (const socket of this.sockets) socket.resetAndDestroy();
    this.sockets.clear();
    this.pairs.clear();
    return pairs;
  }

  /** From now on, what the server sends on the open connections is held back, not passed on. */
  stall(): void {
    for (const { client, upstream } of this.pairs) {
      upstream.unpipe(client);
      upstream.pause();
    }
  }

  /** The next `n` connections are reset as they come, before anything reaches the server. */
  refuseNext(n: number): void {
    this.refusing += n;
  }

  async close(): Promise<void> {
    this.cut();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private forward(client: Socket, host: string, port: number): void {
    this.accepted++;
    if (this.refusing > 0) {
      this.refusing--;
      client.resetAndDestroy();
      return;
    }
    const upstream = connect(port, host);
    const pair = { client, upstream };
    this.pairs.add(pair);
    client.on("close", () => this.pairs.delete(pair));
    for (const [socket, other] of [
      [client, upstream],
      [upstream, client],
    ] as const) {
      this.sockets.add(socket);
      socket.setNoDelay(true);
      socket.pipe(other);
      // An end on one side ends the other (pipe does that); a reset is passed on as an abrupt
      // end, and is the point here, not a failure.
      socket.on("error", () => other.destroy());
      socket.on("close", () => this.sockets.delete(socket));
    }
  }
}

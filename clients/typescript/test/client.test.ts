// GaiaClient against a scripted server: fake sockets, the real codecs, vitest's fake clock.
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import {
  BINCODE,
  GaiaClient,
  InputLost,
  InputRejected,
  JSON_ENCODING,
  decodeClient,
  encodeServer,
  townCodec,
  type Action,
  type ClientMsg,
  type Encoding,
  type ServerMsg,
  type SocketLike,
  type Snapshot,
  type Change,
} from "../src/index.js";

class FakeSocket implements SocketLike {
  binaryType = "blob";
  protocol = "";
  sent: ClientMsg<Action>[] = [];
  closedWith: number | undefined;
  onopen: ((event: unknown) => void) | null = null;
  onmessage: ((event: { data: unknown }) => void) | null = null;
  onclose: ((event: { code: number; reason: string; wasClean: boolean }) => void) | null = null;
  onerror: ((event: unknown) => void) | null = null;

  constructor(
    readonly url: string,
    readonly protocols: string[],
  ) {}

  get encoding(): Encoding {
    return this.protocols[0] as Encoding;
  }
  send(data: Uint8Array | string): void {
    this.sent.push(decodeClient(townCodec, data, this.encoding));
  }
  close(code = 1005, reason = ""): void {
    this.closedWith = code;
    this.serverClose(code, reason);
  }
  // The server's side.
  open(): void {
    this.protocol = this.encoding;
    this.onopen?.({});
  }
  push(msg: ServerMsg<Snapshot, Change>): void {
    const frame = encodeServer(townCodec, msg, this.encoding);
    this.onmessage?.({ data: typeof frame === "string" ? frame : frame.buffer });
  }
  serverClose(code: number, reason = "", wasClean = code !== 1006): void {
    this.onclose?.({ code, reason, wasClean });
  }
}

const snapshot: Snapshot = {
  width: 3,
  height: 1,
  walls: new Uint8Array([0]),
  entities: [{ id: 7, kind: "player", name: "p-1", x: 0, y: 0 }],
};
const welcome = (you = 7): ServerMsg<Snapshot, Change> => ({ type: "welcome", worldId: "w1", you, tick: 10, snapshot, resume: "r" });
const move: Action = { type: "move", dx: 1, dy: 0 };

let sockets: FakeSocket[];
const flush = () => vi.advanceTimersByTimeAsync(0);

function client(): GaiaClient {
  return new GaiaClient(undefined, {
    pingIntervalMs: 5_000,
    socket: async (url, protocols) => {
      const s = new FakeSocket(url, protocols);
      sockets.push(s);
      return s;
    },
  });
}

async function joined(encoding: Encoding = JSON_ENCODING): Promise<{ c: GaiaClient; s: FakeSocket }> {
  const c = client();
  const welcomed = c.connect("ws://a/ws", "tok", { encoding });
  await flush();
  const s = sockets.at(-1)!;
  s.open();
  s.push(welcome());
  await welcomed;
  return { c, s };
}

beforeEach(() => {
  sockets = [];
  vi.useFakeTimers();
});
afterEach(() => {
  vi.useRealTimers();
});

describe("GaiaClient", () => {
  for (const encoding of [BINCODE, JSON_ENCODING] as const) {
    it(`joins over ${encoding}: subprotocol, Join first, resolves on Welcome`, async () => {
      const { c, s } = await joined(encoding);
      expect(s.protocols).toEqual([encoding]);
      expect(s.sent).toEqual([{ type: "join", token: "tok" }]);
      expect(c.you).toBe(7);
      expect(c.snapshot).toEqual(snapshot);
    });
  }

  it("settles each send by its InputResult, in any order", async () => {
    const { c, s } = await joined();
    const first = c.send(move);
    const second = c.send({ type: "say", text: "hi" });
    expect(s.sent.slice(1)).toEqual([
      { type: "input", seq: 1, action: move },
      { type: "input", seq: 2, action: { type: "say", text: "hi" } },
    ]);
    s.push({ type: "inputResult", seq: 2, tick: 0, outcome: { type: "rejected", reason: "slow down: 20/s" } });
    s.push({ type: "inputResult", seq: 1, tick: 11, outcome: { type: "ok" } });
    await expect(first).resolves.toEqual({ seq: 1, tick: 11 });
    await expect(second).rejects.toEqual(new InputRejected(2, "slow down: 20/s", 0));
  });

  it("applies deltas to the snapshot and replaces it on resync", async () => {
    const { c, s } = await joined();
    const deltas: number[] = [];
    c.on("delta", (d) => deltas.push(d.tick));
    s.push({ type: "delta", tick: 11, serverUs: 1, changes: [{ type: "moved", id: 7, x: 1, y: 0 }] });
    expect(c.snapshot!.entities[0]).toMatchObject({ x: 1, y: 0 });
    s.push({ type: "resync", tick: 20, snapshot });
    expect(c.snapshot).toEqual(snapshot);
    expect(c.tick).toBe(20);
    expect(deltas).toEqual([11]);
  });

  it("after a server close frame, inputs without a result were not applied", async () => {
    const { c, s } = await joined();
    const pending = c.send(move);
    const closes: number[] = [];
    c.on("close", (e) => closes.push(e.code));
    s.serverClose(4012, "world unavailable here");
    const error = await pending.catch((e: unknown) => e);
    expect(error).toBeInstanceOf(InputLost);
    expect((error as InputLost).applied).toBe(false);
    expect(closes).toEqual([4012]);
    await expect(c.send(move)).rejects.toThrow(/not connected/);
  });

  it("after a broken connection (1006), or our own close, they may have been applied", async () => {
    const { c, s } = await joined();
    const pending = c.send(move);
    s.serverClose(1006, "", false);
    await expect(pending).rejects.toMatchObject({ applied: "unknown", code: 1006 });

    const again = await joined();
    const mine = again.c.send(move);
    again.c.close();
    await expect(mine).rejects.toMatchObject({ applied: "unknown" });
    expect(again.s.closedWith).toBe(1000);
  });

  it("follows Migrate: the new address and token, then the inputs without a result again", async () => {
    const { c, s } = await joined(BINCODE);
    const done = c.send(move);
    const waiting = c.send({ type: "say", text: "hello" });
    s.push({ type: "inputResult", seq: 1, tick: 11, outcome: { type: "ok" } });
    const events: string[] = [];
    c.on("migrate", (m) => events.push(`migrate ${m.address}`));
    c.on("welcome", (w) => events.push(`welcome ${w.you}`));
    c.on("close", (e) => events.push(`close ${e.code}`));
    s.push({ type: "migrate", address: "ws://b/ws", token: "tok2" });
    s.serverClose(1001, "moved"); // the old connection: ignored
    await flush();
    const next = sockets.at(-1)!;
    expect(next.url).toBe("ws://b/ws");
    expect(next.protocols).toEqual([BINCODE]);
    // Sent while migrating: held until the new Welcome.
    const later = c.send(move);
    next.open();
    expect(next.sent).toEqual([{ type: "join", token: "tok2" }]);
    next.push(welcome(9));
    expect(next.sent.slice(1)).toEqual([
      { type: "input", seq: 2, action: { type: "say", text: "hello" } },
      { type: "input", seq: 3, action: move },
    ]);
    next.push({ type: "inputResult", seq: 2, tick: 30, outcome: { type: "ok" } });
    next.push({ type: "inputResult", seq: 3, tick: 30, outcome: { type: "ok" } });
    await expect(done).resolves.toMatchObject({ seq: 1 });
    await expect(waiting).resolves.toMatchObject({ seq: 2, tick: 30 });
    await expect(later).resolves.toMatchObject({ seq: 3 });
    expect(c.you).toBe(9);
    expect(events).toEqual(["migrate ws://b/ws", "welcome 9"]);
  });

  it("a migration refused by the new server ends the session: nothing was applied there", async () => {
    const { c, s } = await joined();
    const pending = c.send(move);
    s.push({ type: "migrate", address: "ws://b/ws", token: "bad" });
    await flush();
    const next = sockets.at(-1)!;
    next.open();
    next.serverClose(4001, "bad token");
    await expect(pending).rejects.toMatchObject({ applied: false, code: 4001 });
  });

  it("pings every interval and reports the round trip", async () => {
    const { c, s } = await joined();
    const rtts: number[] = [];
    c.on("pong", (p) => rtts.push(p.rttMs));
    await vi.advanceTimersByTimeAsync(5_000);
    expect(s.sent.at(-1)).toEqual({ type: "ping", nonce: 1 });
    await vi.advanceTimersByTimeAsync(40);
    s.push({ type: "pong", nonce: 1 });
    expect(rtts).toEqual([40]);
    await vi.advanceTimersByTimeAsync(5_000);
    expect(s.sent.filter((m) => m.type === "ping")).toHaveLength(2);
  });

  it("rejects connect when the server closes before Welcome", async () => {
    const c = client();
    const welcomed = c.connect("ws://a/ws", "expired");
    await flush();
    sockets[0]!.open();
    sockets[0]!.serverClose(4001, "token expired");
    await expect(welcomed).rejects.toMatchObject({ name: "ConnectError", code: 4001 });
  });

  it("rejects connect when no Welcome comes in time", async () => {
    const c = client();
    const welcomed = c.connect("ws://a/ws", "tok");
    const settled = welcomed.catch((e: unknown) => e);
    await flush();
    sockets[0]!.open();
    await vi.advanceTimersByTimeAsync(10_000);
    expect(await settled).toMatchObject({ name: "ConnectError" });
  });

  it("closes with 4002 on a frame that does not decode, and reports it", async () => {
    const { c, s } = await joined();
    const errors: string[] = [];
    c.on("error", (e) => errors.push(e.name));
    s.onmessage?.({ data: '{"type":"delta"}' });
    expect(errors).toEqual(["DecodeError"]);
    expect(s.closedWith).toBe(4002);
  });
});

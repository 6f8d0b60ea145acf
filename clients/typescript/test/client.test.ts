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
  type WorldMessage,
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
const said: WorldMessage = { epoch: 1, tick: 9, seq: 0, atMs: 5, authorId: 7, author: "p-1", text: "hi" };
const welcome = (you = 7, resume = "r"): ServerMsg<Snapshot, Change> => ({
  type: "welcome",
  worldId: "w1",
  you,
  tick: 10,
  snapshot,
  resume,
  messages: [said],
});
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
  // The conversation so far comes with the Welcome.
  expect((await welcomed).messages).toEqual([said]);
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
    const resyncs: WorldMessage[][] = [];
    c.on("delta", (d) => deltas.push(d.tick));
    c.on("resync", (r) => resyncs.push(r.messages));
    s.push({ type: "delta", tick: 11, serverUs: 1, changes: [{ type: "moved", id: 7, x: 1, y: 0 }] });
    expect(c.snapshot!.entities[0]).toMatchObject({ x: 1, y: 0 });
    const later = { ...said, tick: 15, text: "missed while behind" };
    s.push({ type: "resync", tick: 20, snapshot, messages: [said, later] });
    expect(c.snapshot).toEqual(snapshot);
    expect(c.tick).toBe(20);
    expect(deltas).toEqual([11]);
    expect(resyncs).toEqual([[said, later]]);
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
    // A close frame ends the session: no resume.
    await vi.advanceTimersByTimeAsync(30_000);
    expect(sockets).toHaveLength(1);
  });

  it("after our own close, or a broken connection it cannot resume, they may have been applied", async () => {
    const { c, s } = await joined();
    const mine = c.send(move);
    c.close();
    await expect(mine).rejects.toMatchObject({ applied: "unknown" });
    expect(s.closedWith).toBe(1000);
    await vi.advanceTimersByTimeAsync(30_000);
    expect(sockets).toHaveLength(1); // no reconnect after close()

    // A server with resume off sends an empty token.
    const c2 = client();
    const welcomed = c2.connect("ws://a/ws", "tok");
    await flush();
    const s2 = sockets.at(-1)!;
    s2.open();
    s2.push(welcome(7, ""));
    await welcomed;
    const pending = c2.send(move);
    s2.serverClose(1006, "", false);
    await expect(pending).rejects.toMatchObject({ applied: "unknown", code: 1006 });
    await vi.advanceTimersByTimeAsync(30_000);
    expect(sockets).toHaveLength(2);
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
    // The server answered: a close after open is not retried.
    await vi.advanceTimersByTimeAsync(10_000);
    expect(sockets).toHaveLength(1);
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

/** What `ws` does on HTTP 503 (an `unexpected-response` error, then 1006), and a browser on any refused upgrade. */
function refuseUpgrade(s: FakeSocket): void {
  s.onerror?.({});
  s.serverClose(1006, "", false);
}

function record(c: GaiaClient): string[] {
  const events: string[] = [];
  c.on("reconnecting", (r) => events.push(`reconnecting ${r.attempt} in ${r.delayMs}`));
  c.on("welcome", (w) => events.push(`welcome ${w.you}`));
  c.on("resumed", (w) => events.push(`resumed ${w.you}`));
  c.on("close", (e) => events.push(`close ${e.code}`));
  return events;
}

describe("GaiaClient resume (docs/protocol.md §4)", () => {
  it("after 1006, resumes with the token and the seqs without a result; pending sends settle from what comes", async () => {
    const { c, s } = await joined();
    const events = record(c);
    const answered = c.send(move); // 1: its result comes before the drop
    const applied = c.send(move); // 2: applied while away
    const lost = c.send({ type: "say", text: "lost" }); // 3: never reached the server
    s.push({ type: "inputResult", seq: 1, tick: 11, outcome: { type: "ok" } });
    s.serverClose(1006, "", false);
    const whileAway = c.send({ type: "say", text: "later" }); // 4: held until the Welcome
    expect(events).toEqual(["reconnecting 1 in 250"]);

    // The first attempt is refused before open; the next waits longer.
    await vi.advanceTimersByTimeAsync(250);
    expect(sockets).toHaveLength(2);
    refuseUpgrade(sockets[1]!);
    await flush();
    expect(events.at(-1)).toBe("reconnecting 2 in 500");
    await vi.advanceTimersByTimeAsync(499);
    expect(sockets).toHaveLength(2);
    await vi.advanceTimersByTimeAsync(1);
    const next = sockets[2]!;
    expect(next.url).toBe("ws://a/ws");
    expect(next.protocols).toEqual([JSON_ENCODING]);
    next.open();
    expect(next.sent).toEqual([{ type: "resume", token: "r", awaiting: [2, 3] }]);

    next.push(welcome(7, "r2"));
    expect(next.sent.slice(1)).toEqual([{ type: "input", seq: 4, action: { type: "say", text: "later" } }]);
    expect(events.slice(-2)).toEqual(["welcome 7", "resumed 7"]);
    next.push({ type: "inputResult", seq: 2, tick: 12, outcome: { type: "ok" } });
    next.push({ type: "inputResult", seq: 3, tick: 0, outcome: { type: "rejected", reason: "never reached the server: send it again" } });
    // "send it again": under the same seq, and its promise still waits.
    expect(next.sent.at(-1)).toEqual({ type: "input", seq: 3, action: { type: "say", text: "lost" } });
    next.push({ type: "inputResult", seq: 3, tick: 14, outcome: { type: "ok" } });
    next.push({ type: "inputResult", seq: 4, tick: 14, outcome: { type: "ok" } });
    next.push({ type: "inputResult", seq: 2, tick: 12, outcome: { type: "ok" } }); // a duplicate: ignored

    await expect(answered).resolves.toEqual({ seq: 1, tick: 11 });
    await expect(applied).resolves.toEqual({ seq: 2, tick: 12 });
    await expect(lost).resolves.toEqual({ seq: 3, tick: 14 });
    await expect(whileAway).resolves.toEqual({ seq: 4, tick: 14 });
    expect(c.inFlight).toBe(0);
    expect(c.you).toBe(7);
    expect(events).not.toContain("close 1006");

    // The next drop resumes with the newest token.
    next.serverClose(1006, "", false);
    await vi.advanceTimersByTimeAsync(250);
    sockets[3]!.open();
    expect(sockets[3]!.sent).toEqual([{ type: "resume", token: "r2", awaiting: [] }]);
  });

  it("a refused resume (4012) ends the session: sent inputs may have been applied, unsent ones were not", async () => {
    const { c, s } = await joined();
    const events = record(c);
    const sent = c.send(move);
    s.serverClose(1006, "", false);
    const unsent = c.send(move);
    await vi.advanceTimersByTimeAsync(250);
    const next = sockets[1]!;
    next.open();
    next.serverClose(4012, "too late to resume: the member has left");
    await expect(sent).rejects.toMatchObject({ name: "InputLost", applied: "unknown", code: 4012 });
    await expect(unsent).rejects.toMatchObject({ name: "InputLost", applied: false, code: 4012 });
    expect(events).toEqual(["reconnecting 1 in 250", "close 4012"]);
    await vi.advanceTimersByTimeAsync(30_000);
    expect(sockets).toHaveLength(2);
    await expect(c.send(move)).rejects.toThrow(/not connected/);
  });

  it("gives up when the grace passes, with the inputs lost and close 1006", async () => {
    sockets = [];
    const c = new GaiaClient(undefined, {
      resumeGraceMs: 1_000,
      socket: async (url, protocols) => {
        const s = new FakeSocket(url, protocols);
        sockets.push(s);
        return s;
      },
    });
    const welcomed = c.connect("ws://a/ws", "tok");
    await flush();
    sockets[0]!.open();
    sockets[0]!.push(welcome());
    await welcomed;
    const events = record(c);
    const pending = c.send(move).catch((e: unknown) => e);
    sockets[0]!.serverClose(1006, "", false);
    // Attempts after 250 and 500 ms; a third, 1000 ms later, would start past the grace.
    for (const pause of [250, 500]) {
      await vi.advanceTimersByTimeAsync(pause);
      refuseUpgrade(sockets.at(-1)!);
      await flush();
    }
    expect(await pending).toMatchObject({ name: "InputLost", applied: "unknown", code: 1006 });
    expect(events).toEqual(["reconnecting 1 in 250", "reconnecting 2 in 500", "close 1006"]);
    await vi.advanceTimersByTimeAsync(30_000);
    expect(sockets).toHaveLength(3);
  });

  it("close() while reconnecting stops at once: no more attempts", async () => {
    const { c, s } = await joined();
    const events = record(c);
    const pending = c.send(move);
    s.serverClose(1006, "", false);
    c.close();
    await expect(pending).rejects.toMatchObject({ name: "InputLost", applied: "unknown" });
    expect(events).toEqual(["reconnecting 1 in 250", "close 1000"]);
    await vi.advanceTimersByTimeAsync(30_000);
    expect(sockets).toHaveLength(1);
  });
});

describe("GaiaClient connect retries (docs/protocol.md §2)", () => {
  it("a connect refused before open (503) is tried again at growing pauses", async () => {
    const c = client();
    const welcomed = c.connect("ws://a/ws", "tok");
    await flush();
    refuseUpgrade(sockets[0]!);
    await vi.advanceTimersByTimeAsync(499);
    expect(sockets).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(1);
    refuseUpgrade(sockets[1]!);
    await vi.advanceTimersByTimeAsync(1_000);
    const third = sockets[2]!;
    third.open();
    expect(third.sent).toEqual([{ type: "join", token: "tok" }]);
    third.push(welcome());
    await expect(welcomed).resolves.toMatchObject({ you: 7 });
  });

  it("rejects with ConnectError after the last retry", async () => {
    const c = client();
    const closes: number[] = [];
    c.on("close", (e) => closes.push(e.code));
    const welcomed = c.connect("ws://a/ws", "tok");
    const settled = welcomed.catch((e: unknown) => e);
    await flush();
    for (const pause of [500, 1_000, 2_000]) {
      refuseUpgrade(sockets.at(-1)!);
      await vi.advanceTimersByTimeAsync(pause);
    }
    refuseUpgrade(sockets.at(-1)!);
    expect(await settled).toMatchObject({ name: "ConnectError", code: 1006, message: expect.stringMatching(/4 attempts/) });
    expect(sockets).toHaveLength(4);
    expect(closes).toEqual([1006]);
  });

  it("the connect after Migrate is retried too", async () => {
    const { c, s } = await joined();
    const pending = c.send(move);
    s.push({ type: "migrate", address: "ws://b/ws", token: "tok2" });
    await flush();
    refuseUpgrade(sockets[1]!);
    await vi.advanceTimersByTimeAsync(500);
    const next = sockets[2]!;
    expect(next.url).toBe("ws://b/ws");
    next.open();
    expect(next.sent).toEqual([{ type: "join", token: "tok2" }]);
    next.push(welcome(9));
    next.push({ type: "inputResult", seq: 1, tick: 30, outcome: { type: "ok" } });
    await expect(pending).resolves.toMatchObject({ seq: 1, tick: 30 });
  });
});

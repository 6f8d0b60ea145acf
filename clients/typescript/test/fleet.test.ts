// Against a real fleet: two players in one world, one over JSON and one over bincode, each
// seeing the other's moves; a drained server's client follows Migrate; a client whose socket is
// cut resumes (through a TCP proxy that resets its connections). Skipped, with the reason printed, when target/debug/gaia is missing
// (unless REQUIRE_SERVICES=1).
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { GaiaClient, InputRejected, legalMoves, BINCODE, JSON_ENCODING, NEVER_REACHED, type Snapshot, type Change } from "../src/index.js";
import { Fleet, missingServices } from "./support/fleet.js";
import { CutProxy } from "./support/proxy.js";
import { tap } from "./support/tap.js";

const missing = missingServices();
if (missing) console.warn(`skipping the fleet tests: ${missing}`);

/** A step onto a cell that is no wall and holds nobody (now). */
function step(c: GaiaClient): { dx: number; dy: number } {
  const s = c.snapshot!;
  const me = s.entities.find((e) => e.id === c.you)!;
  const taken = new Set(s.entities.map((e) => `${e.x},${e.y}`));
  const moves = legalMoves(s, me.x, me.y).filter(({ dx, dy }) => !taken.has(`${me.x + dx},${me.y + dy}`));
  if (!moves[0]) throw new Error(`no free step from (${me.x}, ${me.y})`);
  return moves[0];
}

function position(s: Snapshot | undefined, id: number | undefined) {
  const e = s?.entities.find((e) => e.id === id);
  return e && { x: e.x, y: e.y };
}

async function until(what: string, ok: () => boolean, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!ok()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe.skipIf(missing !== undefined)("against gaia run", () => {
  let fleet: Fleet;
  const clients: GaiaClient[] = [];
  const proxies: CutProxy[] = [];

  beforeAll(async () => {
    fleet = await Fleet.start();
  });
  afterAll(async () => {
    for (const c of clients) c.close();
    for (const p of proxies) await p.close();
    await fleet?.stop();
  });

  it("two players in one world, over JSON and bincode, see each other's moves", async () => {
    const worldId = `ts-client-${process.pid}-${Date.now()}`;
    const first = await fleet.allocate({ worldId });
    const second = await fleet.allocate({ worldId });
    expect(second.worldId).toBe(worldId);
    expect(second.address).toBe(first.address);

    const a = new GaiaClient(undefined, { pingIntervalMs: 300 });
    const b = new GaiaClient();
    clients.push(a, b);
    const movedSeen = { a: new Set<number>(), b: new Set<number>() };
    const watch = (c: GaiaClient, seen: Set<number>) =>
      c.on("delta", (d) => d.changes.forEach((ch: Change) => ch.type === "moved" && seen.add(ch.id)));
    watch(a, movedSeen.a);
    watch(b, movedSeen.b);

    const wa = await a.connect(first.address, first.joinToken, { encoding: JSON_ENCODING });
    const wb = await b.connect(second.address, second.joinToken, { encoding: BINCODE });
    expect(a.encodingInUse).toBe(JSON_ENCODING);
    expect(b.encodingInUse).toBe(BINCODE);
    expect(wa.worldId).toBe(worldId);
    expect(wb.worldId).toBe(worldId);
    expect(wa.you).not.toBe(wb.you);
    expect(wb.snapshot.entities.find((e) => e.id === wb.you)?.name).toBe(second.playerId);
    // A learns of B through a Joined change.
    await until("A to see B join", () => position(a.snapshot, b.you) !== undefined);

    for (let i = 0; i < 3; i++) {
      for (const c of [a, b]) {
        const before = JSON.stringify(position(c.snapshot, c.you));
        const accepted = await c.send({ type: "move", ...step(c) });
        expect(accepted.tick).toBeGreaterThan(0);
        // The result comes before the delta that moves us: the next step starts from
        // where this one ends.
        await until("the move to show", () => JSON.stringify(position(c.snapshot, c.you)) !== before);
      }
    }
    // Every input has its result: none is left waiting.
    expect(a.inFlight + b.inFlight).toBe(0);
    await expect(a.send({ type: "move", dx: 0, dy: 0 })).rejects.toBeInstanceOf(InputRejected);

    // Each sees where the other ended up, through deltas applied to its own snapshot.
    await until("the snapshots to agree", () => {
      const pa = position(b.snapshot, a.you);
      const pb = position(a.snapshot, b.you);
      return (
        JSON.stringify(pa) === JSON.stringify(position(a.snapshot, a.you)) &&
        JSON.stringify(pb) === JSON.stringify(position(b.snapshot, b.you))
      );
    });
    expect(movedSeen.a.has(b.you!)).toBe(true);
    expect(movedSeen.b.has(a.you!)).toBe(true);

    const pong = new Promise<number>((r) => a.once("pong", (p) => r(p.rttMs)));
    expect(await pong).toBeGreaterThanOrEqual(0);
  }, 30_000);

  it("follows Migrate when its server drains, and plays on", async () => {
    const worldId = `ts-client-move-${process.pid}-${Date.now()}`;
    const alloc = await fleet.allocate({ worldId });
    const c = new GaiaClient();
    clients.push(c);
    const events: string[] = [];
    c.on("migrate", (m) => events.push(`migrate ${m.address}`));
    c.on("welcome", () => events.push("welcome"));
    c.on("close", (e) => events.push(`close ${e.code}`));
    const first = await c.connect(alloc.address, alloc.joinToken, { encoding: JSON_ENCODING });
    expect((await c.send({ type: "move", ...step(c) })).tick).toBeGreaterThan(0);
    events.length = 0;

    await fleet.drain((alloc as unknown as { server: string }).server);
    await until("the migration", () => events.includes("welcome"), 20_000);
    expect(events[0]).toMatch(/^migrate ws:\/\//);
    expect(events).not.toContain("close 1001");
    expect(c.worldId).toBe(first.worldId);
    expect(position(c.snapshot, c.you)).toBeDefined();
    expect((await c.send({ type: "move", ...step(c) })).tick).toBeGreaterThan(0);
  }, 40_000);

  it("resume after the socket is cut: the same entity, no new join, every input answered once", async () => {
    const worldId = `ts-client-cut-${process.pid}-${Date.now()}`;
    const alloc = await fleet.allocate({ worldId });
    const watcherAlloc = await fleet.allocate({ worldId });
    const proxy = await CutProxy.for(alloc.address);
    proxies.push(proxy);
    const frames = tap();
    const c = new GaiaClient(undefined, { socket: frames.socket });
    // Another player, connected directly, sees what the world saw of us.
    const watcher = new GaiaClient();
    clients.push(c, watcher);
    const events: string[] = [];
    c.on("reconnecting", (r) => events.push(`reconnecting ${r.attempt}`));
    c.on("resumed", () => events.push("resumed"));
    c.on("close", (e) => events.push(`close ${e.code}`));

    const welcome = await c.connect(proxy.via(alloc.address), alloc.joinToken, { encoding: JSON_ENCODING });
    await watcher.connect(watcherAlloc.address, watcherAlloc.joinToken, { encoding: BINCODE });
    const seen: Change[] = [];
    watcher.on("delta", (d) => seen.push(...d.changes));
    await until("the watcher to see us", () => position(watcher.snapshot, welcome.you) !== undefined);

    // Inputs of four kinds: answered before the cut; applied, but their results held back by
    // the proxy and lost in the cut; sent just before the cut (they never reach the server);
    // sent while the client reconnects.
    const settled = new Map<number, number>();
    const send = (text: string) =>
      c.send({ type: "say", text }).then(
        (accepted) => {
          settled.set(accepted.seq, (settled.get(accepted.seq) ?? 0) + 1);
          return accepted;
        },
        (error: unknown) => Promise.reject(new Error(`"${text}" failed: ${String(error)}`)),
      );
    const sends = [send("answered")];
    await sends[0];
    proxy.stall();
    for (let i = 0; i < 4; i++) sends.push(send(`applied ${i}`));
    const said = () => seen.filter((ch) => ch.type === "said" && ch.id === welcome.you).map((ch) => ch.type === "said" && ch.text);
    await until("the world to apply the stalled inputs", () => said().length === 5);
    expect(c.inFlight).toBe(4); // their results did not come through
    for (let i = 0; i < 2; i++) sends.push(send(`cut off ${i}`));
    proxy.refuseNext(1); // the first resume attempt is reset too: the client tries again
    expect(proxy.cut()).toBe(1);
    await until("the client to notice the cut", () => events.includes("reconnecting 1"));
    for (let i = 0; i < 3; i++) sends.push(send(`while away ${i}`));

    const results = await Promise.all(sends);
    expect(events).toContain("resumed");
    expect(events.filter((e) => e.startsWith("reconnecting")).length).toBeGreaterThanOrEqual(2);
    expect(events.some((e) => e.startsWith("close"))).toBe(false);
    expect(c.you).toBe(welcome.you);
    expect(c.worldId).toBe(worldId);
    // Each promise settled once, each with its own seq.
    const seqs = Array.from({ length: 10 }, (_, i) => i + 1);
    expect(results.map((r) => r.seq)).toEqual(seqs);
    expect([...settled.values()]).toEqual(Array(10).fill(1));

    // What went over the wire: one Join ever, then Resumes only (no new join, so no new
    // allocation was needed); and each seq had exactly one result that was not "never reached
    // the server" (the client sent those again), across all the connections.
    const firsts = frames.connections.filter((k) => k.sent.length > 0).map((k) => k.sent[0]!.type);
    expect(firsts[0]).toBe("join");
    expect(firsts.slice(1).length).toBeGreaterThanOrEqual(1);
    expect(new Set(firsts.slice(1))).toEqual(new Set(["resume"]));
    const answers = new Map<number, number>();
    const neverReached: number[] = [];
    for (const k of frames.connections) {
      for (const m of k.received) {
        if (m.type !== "inputResult") continue;
        if (m.outcome.type === "ok") answers.set(m.seq, (answers.get(m.seq) ?? 0) + 1);
        else if (m.outcome.reason === NEVER_REACHED) neverReached.push(m.seq);
        else throw new Error(`input ${m.seq} rejected: ${m.outcome.reason}`);
      }
    }
    expect(neverReached).toEqual([6, 7]); // the proxy had not passed them on when it cut
    expect([...answers.keys()].sort((a, b) => a - b)).toEqual(seqs);
    expect([...answers.values()]).toEqual(Array(10).fill(1));
    // The resume listed what had no result: the applied ones and those cut off.
    const resume = frames.connections.map((k) => k.sent[0]).find((m) => m?.type === "resume");
    expect(resume).toMatchObject({ type: "resume", awaiting: [2, 3, 4, 5, 6, 7] });
    // The world applied each input once: one Said per text.
    await until("every Say to show", () => said().length === 10);
    expect(new Set(said()).size).toBe(10);

    // The world never saw us leave: no Left, no second entity of our player, and the Welcome
    // of the resume named the same entity.
    const resumedWelcomes = frames.connections.flatMap((k) => k.received.filter((m) => m.type === "welcome")).slice(1);
    expect(resumedWelcomes.map((w) => w.type === "welcome" && w.you)).toEqual([welcome.you]);
    expect(seen.filter((ch) => ch.type === "left" && ch.id === welcome.you)).toEqual([]);
    expect(seen.filter((ch) => ch.type === "joined" && ch.entity.name === alloc.playerId)).toEqual([]);
    const ours = () => c.snapshot!.entities.filter((e) => e.name === alloc.playerId);
    expect(ours().map((e) => e.id)).toEqual([welcome.you]);
    expect(watcher.snapshot!.entities.filter((e) => e.name === alloc.playerId).map((e) => e.id)).toEqual([welcome.you]);

    // And it plays on, on the new connection.
    const before = JSON.stringify(position(c.snapshot, c.you));
    expect((await c.send({ type: "move", ...step(c) })).tick).toBeGreaterThan(0);
    await until("the move to show", () => JSON.stringify(position(c.snapshot, c.you)) !== before);
  }, 40_000);
});

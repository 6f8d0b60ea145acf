// Against a real fleet: two players in one world, one over JSON and one over bincode, each
// seeing the other's moves. Skipped, with the reason printed, when target/debug/gaia is missing
// (unless REQUIRE_SERVICES=1).
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { GaiaClient, InputRejected, legalMoves, BINCODE, JSON_ENCODING, type Snapshot, type Change } from "../src/index.js";
import { Fleet, missingServices } from "./support/fleet.js";

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

  beforeAll(async () => {
    fleet = await Fleet.start();
  });
  afterAll(async () => {
    for (const c of clients) c.close();
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
});

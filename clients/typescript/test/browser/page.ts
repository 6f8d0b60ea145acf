// The page of the browser test (test/browser.test.ts), bundled by vite: GaiaClient on the
// browser's own WebSocket. `window.gaiaPage.run` joins, moves one step and waits for the
// delta that shows it, and reports what it saw.
import { GaiaClient, legalMoves, type Change, type Encoding, type Snapshot } from "../../src/index.js";

export interface PageReport {
  /** `WebSocket`s the page constructed: the client used the browser's, not a bundled one. */
  nativeSockets: number;
  encodingInUse: string;
  you: number;
  /** The tick of the move's result. */
  resultTick: number;
  /** The first delta that moved us: its tick, and our cell after it. */
  deltaTick: number;
  from: { x: number; y: number };
  to: { x: number; y: number };
  step: { dx: number; dy: number };
}

// Count constructions of the page's WebSocket, so the test knows the client used it.
const Native = globalThis.WebSocket;
let nativeSockets = 0;
globalThis.WebSocket = class extends Native {
  constructor(url: string | URL, protocols?: string | string[]) {
    super(url, protocols);
    nativeSockets++;
  }
};

function cell(s: Snapshot, id: number): { x: number; y: number } {
  const e = s.entities.find((e) => e.id === id);
  if (!e) throw new Error(`entity ${id} is not in the snapshot`);
  return { x: e.x, y: e.y };
}

async function run(address: string, token: string, encoding: Encoding): Promise<PageReport> {
  const client = new GaiaClient();
  let moved: ((tick: number) => void) | undefined;
  const delta = new Promise<number>((resolve, reject) => {
    moved = resolve;
    setTimeout(() => reject(new Error("no delta moved us within 10 s")), 10_000);
  });
  client.on("delta", (d) => {
    if (d.changes.some((ch: Change) => ch.type === "moved" && ch.id === client.you)) moved?.(d.tick);
  });
  try {
    const welcome = await client.connect(address, token, { encoding });
    const from = cell(welcome.snapshot, welcome.you);
    const taken = new Set(welcome.snapshot.entities.map((e) => `${e.x},${e.y}`));
    const step = legalMoves(welcome.snapshot, from.x, from.y).find(({ dx, dy }) => !taken.has(`${from.x + dx},${from.y + dy}`));
    if (!step) throw new Error(`no free step from (${from.x}, ${from.y})`);
    const accepted = await client.send({ type: "move", ...step });
    const deltaTick = await delta;
    return {
      nativeSockets,
      encodingInUse: client.encodingInUse,
      you: welcome.you,
      resultTick: accepted.tick,
      deltaTick,
      from,
      to: cell(client.snapshot!, welcome.you),
      step,
    };
  } finally {
    client.close();
  }
}

(globalThis as unknown as { gaiaPage: { run: typeof run } }).gaiaPage = { run };

// The golden frames (protocol/frames.json), as the server's own tests read them.
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import {
  BINCODE,
  JSON_ENCODING,
  clientJson,
  decodeClient,
  decodeServer,
  encodeClient,
  encodeServer,
  fromHex,
  serverJson,
  toHex,
  townCodec,
} from "../src/index.js";

interface Golden {
  name: string;
  direction: "client" | "server";
  bincode: string;
  json: unknown;
}

const path = fileURLToPath(new URL("../../../protocol/frames.json", import.meta.url));
const frames: Golden[] = JSON.parse(readFileSync(path, "utf8"));

describe("protocol/frames.json", () => {
  it("has a frame of every message", () => {
    const kinds = new Set(frames.map((f) => `${f.direction}:${(f.json as { type: string }).type}`));
    for (const t of ["join", "input", "ping"]) expect(kinds).toContain(`client:${t}`);
    for (const t of ["welcome", "delta", "resync", "inputResult", "migrate", "error", "pong"]) {
      expect(kinds).toContain(`server:${t}`);
    }
  });

  for (const f of frames) {
    it(f.name, () => {
      const bytes = fromHex(f.bincode);
      const text = JSON.stringify(f.json);
      if (f.direction === "client") {
        const value = decodeClient(townCodec, bytes, BINCODE);
        expect(value).toEqual(decodeClient(townCodec, text, JSON_ENCODING));
        expect(toHex(encodeClient(townCodec, value, BINCODE) as Uint8Array)).toBe(toHex(bytes));
        expect(clientJson(townCodec, value)).toEqual(f.json);
        expect(JSON.parse(encodeClient(townCodec, value, JSON_ENCODING) as string)).toEqual(f.json);
      } else {
        const value = decodeServer(townCodec, bytes, BINCODE);
        expect(value).toEqual(decodeServer(townCodec, text, JSON_ENCODING));
        expect(toHex(encodeServer(townCodec, value, BINCODE) as Uint8Array)).toBe(toHex(bytes));
        expect(serverJson(townCodec, value)).toEqual(f.json);
        expect(JSON.parse(encodeServer(townCodec, value, JSON_ENCODING) as string)).toEqual(f.json);
      }
    });
  }
});

describe("docs/protocol.md examples", () => {
  // The ```frame blocks on the page, read the way a reader would.
  const page = readFileSync(fileURLToPath(new URL("../../../docs/protocol.md", import.meta.url)), "utf8");
  const blocks = [...page.matchAll(/```frame\n([\s\S]*?)```/g)].map((m) => {
    const get = (k: string) => new RegExp(`^${k}: (.*)$`, "m").exec(m[1]!)![1]!;
    return { name: get("name"), bincode: get("bincode"), json: JSON.parse(get("json")) };
  });

  it("agree with protocol/frames.json", () => {
    expect(blocks.length).toBeGreaterThan(0);
    for (const b of blocks) {
      const golden = frames.find((f) => f.name === b.name);
      expect(golden, b.name).toBeDefined();
      expect(b.bincode).toBe(golden!.bincode);
      expect(b.json).toEqual(golden!.json);
    }
  });
});

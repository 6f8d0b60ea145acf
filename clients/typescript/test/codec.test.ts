// Bad input: decoders throw only DecodeError and never build more than the frame holds.
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import {
  BINCODE,
  DecodeError,
  EncodeError,
  JSON_ENCODING,
  Reader,
  Writer,
  decodeServer,
  encodeClient,
  fromHex,
  toHex,
  townCodec,
  type Action,
} from "../src/index.js";

const server = (hex: string) => decodeServer(townCodec, fromHex(hex), BINCODE);
const serverJson = (text: string) => decodeServer(townCodec, text, JSON_ENCODING);

describe("varints", () => {
  const cases: Array<[number, "u16" | "u32" | "u64", string]> = [
    [0, "u16", "00"],
    [250, "u16", "fa"],
    [251, "u16", "fb fb 00"],
    [300, "u16", "fb 2c 01"],
    [65535, "u32", "fb ff ff"],
    [65536, "u32", "fc 00 00 01 00"],
    [1_000_000, "u64", "fc 40 42 0f 00"],
    [2 ** 32, "u64", "fd 00 00 00 00 01 00 00 00"],
    [Number.MAX_SAFE_INTEGER, "u64", "fd ff ff ff ff ff ff 1f 00"],
  ];
  for (const [value, width, hex] of cases) {
    it(`${value} as ${width} is ${hex}`, () => {
      const w = new Writer();
      w.uint(value, width);
      expect(toHex(w.finish())).toBe(hex);
      const r = new Reader(fromHex(hex));
      expect(r.uint(width)).toBe(value);
      r.end();
    });
  }

  it("refuses markers wider than the type, 0xfe, 0xff and u64s a number cannot hold", () => {
    for (const [hex, width] of [
      ["fc 00 00 01 00", "u16"],
      ["fd 00 00 00 00 01 00 00 00", "u32"],
      ["fe", "u64"],
      ["ff", "u64"],
      ["fd 00 00 00 00 00 00 20 00", "u64"],
    ] as const) {
      expect(() => new Reader(fromHex(hex)).uint(width), hex).toThrow(DecodeError);
    }
  });

  it("i8 is two's complement", () => {
    const w = new Writer();
    w.i8(-1);
    w.i8(-128);
    w.i8(127);
    expect(toHex(w.finish())).toBe("ff 80 7f");
    expect(() => new Writer().i8(128)).toThrow(EncodeError);
  });
});

describe("bad server frames", () => {
  const bad: Record<string, string> = {
    empty: "",
    "version only": "01",
    "version 2": "02 06 00",
    "unknown message": "01 07",
    "truncated u64": "01 06 fd 00",
    "trailing byte": "01 06 00 00",
    "string longer than the frame": "01 04 ff",
    "list length of 2^53-1 with nothing after it": "01 01 00 00 fd ff ff ff ff ff ff 1f 00",
    "list length larger than the bytes left": "01 01 00 00 05 02 01",
    "invalid UTF-8": "01 04 01 ff 00",
    "unknown change": "01 01 00 00 01 06",
    "unknown entity kind": "01 01 00 00 01 00 01 02 00 00 00",
    "unknown outcome": "01 03 01 01 02",
  };
  for (const [name, hex] of Object.entries(bad)) {
    it(name, () => expect(() => server(hex)).toThrow(DecodeError));
  }

  it("refuses a frame of the wrong kind", () => {
    expect(() => decodeServer(townCodec, '{"type":"pong","nonce":1}', BINCODE)).toThrow(/text frame/);
    expect(() => decodeServer(townCodec, fromHex("01 06 01"), JSON_ENCODING)).toThrow(/binary frame/);
  });

  it("refuses bad JSON the way the server does", () => {
    for (const text of [
      "{",
      "[]",
      '{"type":"pong"}',
      '{"type":"pong","nonce":1,"extra":0}',
      '{"type":"pong","nonce":-1}',
      '{"type":"pong","nonce":1.5}',
      '{"type":"pong","nonce":"1"}',
      '{"type":"pang","nonce":1}',
      '{"type":"delta","tick":1,"serverUs":1,"changes":[{"type":"moved","id":1,"x":70000,"y":0}]}',
      '{"type":"delta","tick":1,"serverUs":1,"changes":[{"type":"joined","id":1,"kind":"dog","name":"a","x":0,"y":0}]}',
      '{"type":"resync","tick":1,"snapshot":{"width":1,"height":1,"walls":[256],"entities":[]}}',
    ]) {
      expect(() => serverJson(text), text).toThrow(DecodeError);
    }
  });

  it("names where a JSON value went wrong", () => {
    expect(() =>
      serverJson('{"type":"delta","tick":1,"serverUs":1,"changes":[{"type":"left","id":1},{"type":"left","id":-2}]}'),
    ).toThrow(/changes\[1\]\.id/);
  });

  it("mutated golden frames throw DecodeError or decode, never anything else", () => {
    const path = fileURLToPath(new URL("../../../protocol/frames.json", import.meta.url));
    const frames = (JSON.parse(readFileSync(path, "utf8")) as Array<{ direction: string; bincode: string }>)
      .filter((f) => f.direction === "server")
      .map((f) => fromHex(f.bincode));
    let seed = 42;
    const rand = (n: number) => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) % n);
    for (let i = 0; i < 20_000; i++) {
      const base = frames[rand(frames.length)]!;
      const bytes = base.slice(0, rand(base.length + 1) + (rand(4) === 0 ? 0 : base.length));
      for (let k = rand(3); k >= 0 && bytes.length > 0; k--) bytes[rand(bytes.length)] = rand(256);
      try {
        server(toHex(bytes));
      } catch (e) {
        expect(e).toBeInstanceOf(DecodeError);
      }
    }
  });
});

describe("client frames", () => {
  const input = (action: Action) => ({ type: "input" as const, seq: 1, action });

  it("refuses a Say over 200 bytes and a frame over 4096 bytes", () => {
    expect(() => encodeClient(townCodec, input({ type: "say", text: "é".repeat(101) }), BINCODE)).toThrow(EncodeError);
    expect(encodeClient(townCodec, input({ type: "say", text: "é".repeat(100) }), JSON_ENCODING)).toBeTypeOf("string");
    expect(() => encodeClient(townCodec, { type: "join", token: "t".repeat(5000) }, JSON_ENCODING)).toThrow(/4096/);
  });

  it("refuses values out of range", () => {
    expect(() => encodeClient(townCodec, input({ type: "move", dx: 200, dy: 0 }), BINCODE)).toThrow(EncodeError);
    expect(() => encodeClient(townCodec, input({ type: "move", dx: 200, dy: 0 }), JSON_ENCODING)).toThrow(EncodeError);
    expect(() => encodeClient(townCodec, { type: "ping", nonce: -1 }, BINCODE)).toThrow(EncodeError);
    expect(() => encodeClient(townCodec, { type: "ping", nonce: 2 ** 53 }, BINCODE)).toThrow(EncodeError);
  });
});

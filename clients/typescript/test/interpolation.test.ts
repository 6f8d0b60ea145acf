import { describe, expect, it } from "vitest";
import { Tracks, advancePlayback, positionAt } from "../src/index.js";

const MS = 1000;

describe("advancePlayback", () => {
  it("starts 250 ms behind the newest frame", () => {
    expect(advancePlayback(undefined, 10_000 * MS, 16)).toBe(9_750 * MS);
  });

  it("plays at real speed with between 250 ms and 1.25 s buffered", () => {
    expect(advancePlayback(9_500 * MS, 10_000 * MS, 100)).toBe(9_600 * MS);
  });

  it("plays slower under 250 ms, faster over 1.25 s", () => {
    expect(advancePlayback(9_900 * MS, 10_000 * MS, 50)).toBe(9_940 * MS); // 0.8x
    expect(advancePlayback(8_000 * MS, 10_000 * MS, 100)).toBe(8_120 * MS); // 1.2x
  });

  it("never passes the newest frame, and jumps when far behind", () => {
    expect(advancePlayback(9_990 * MS, 10_000 * MS, 1_000)).toBe(10_000 * MS);
    expect(advancePlayback(0, 10_000 * MS, 16)).toBe(8_750 * MS);
  });

  it("drifts back into the band when frames stop and resume", () => {
    // Deltas every 100 ms, rendered at 60 fps: the buffer settles between the bounds.
    let playback: number | undefined;
    let newest = 0;
    for (let frame = 0; frame < 600; frame++) {
      const now = frame * 16;
      if (now >= newest / MS + 100 && !(now > 3000 && now < 4500)) newest = Math.floor(now / 100) * 100 * MS;
      playback = advancePlayback(playback, newest, 16);
      expect(playback).toBeLessThanOrEqual(newest);
    }
    expect((newest - playback!) / MS).toBeLessThan(1250);
  });
});

describe("positionAt", () => {
  const samples = [
    { us: 0, x: 0, y: 0 },
    { us: 100, x: 1, y: 0 },
    { us: 200, x: 1, y: 1 },
  ];
  it("interpolates between samples and clamps at the ends", () => {
    expect(positionAt(samples, -5)).toEqual({ x: 0, y: 0 });
    expect(positionAt(samples, 50)).toEqual({ x: 0.5, y: 0 });
    expect(positionAt(samples, 150)).toEqual({ x: 1, y: 0.5 });
    expect(positionAt(samples, 500)).toEqual({ x: 1, y: 1 });
    expect(positionAt([], 0)).toBeUndefined();
  });
});

describe("Tracks", () => {
  it("plays a step over the delta interval that brought it", () => {
    const t = new Tracks();
    t.observe(0, [{ id: 1, x: 0, y: 0 }]);
    t.observe(100, [{ id: 1, x: 0, y: 0 }]);
    t.observe(200, [{ id: 1, x: 1, y: 0 }]);
    expect(t.at(1, 100)).toEqual({ x: 0, y: 0 });
    expect(t.at(1, 150)).toEqual({ x: 0.5, y: 0 });
    expect(t.at(1, 250)).toEqual({ x: 1, y: 0 });
    t.prune(200);
    expect(t.at(1, 0)).toEqual({ x: 1, y: 0 });
  });

  it("forgets entities that left", () => {
    const t = new Tracks();
    t.observe(0, [{ id: 1, x: 0, y: 0 }]);
    t.observe(100, []);
    expect(t.at(1, 100)).toBeUndefined();
  });
});

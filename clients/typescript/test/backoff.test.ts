// The retry policy is a plain function: a table of (retry, elapsed) -> pause.
import { describe, expect, it } from "vitest";
import { CONNECT_RETRY, RESUME_RETRY, nextPause } from "../src/backoff.js";

describe("nextPause", () => {
  it("a counted policy gives each pause once, then none", () => {
    expect([1, 2, 3, 4].map((n) => nextPause(CONNECT_RETRY, n))).toEqual([500, 1_000, 2_000, undefined]);
    expect(nextPause(CONNECT_RETRY, 0)).toBeUndefined();
  });

  it("a policy with a window repeats its last pause, and starts nothing at or past the window", () => {
    const table: Array<[retry: number, elapsedMs: number, pause: number | undefined]> = [
      [1, 0, 250],
      [2, 250, 500],
      [3, 750, 1_000],
      [4, 1_750, 2_000],
      [5, 3_750, 2_000],
      [8, 7_999, 2_000],
      [9, 8_000, undefined], // 8 s + 2 s is the 10 s grace
      [2, 9_600, undefined],
      [1, 9_749, 250],
    ];
    for (const [retry, elapsed, pause] of table) expect([retry, elapsed, nextPause(RESUME_RETRY, retry, elapsed)]).toEqual([retry, elapsed, pause]);
  });

  it("no pauses, no retries", () => {
    expect(nextPause({ delaysMs: [] }, 1)).toBeUndefined();
    expect(nextPause({ delaysMs: [], withinMs: 10_000 }, 1)).toBeUndefined();
  });
});

// The console in a real browser against a real embedded fleet: Debian's Chromium (headless,
// driven by playwright-core, which downloads no browser) opens the page that `gaia run`
// serves, while `gaia loadgen` keeps 20 bots playing. The fleet page lists both regions and
// their servers; a world's page draws its entities moving, between cells (interpolated); a
// server drained from the fleet page goes Draining then leaves, its worlds reappear on
// other servers, and the world page that watched one of them follows it there.
// GAIA_SCREENSHOTS=1 saves each page to docs/ (the README shows them).
// Skipped, with the reason printed, without chromium or target/debug/gaia, unless
// REQUIRE_SERVICES=1 (then it fails).
import { spawn, type ChildProcess } from "node:child_process";
import { fileURLToPath } from "node:url";
import { chromium, type Browser, type Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { findChromium, missingChromium } from "../../clients/typescript/test/support/chromium.js";
import { Fleet, GAIA_BIN, missingServices } from "../../clients/typescript/test/support/fleet.js";
import type { FleetState } from "../src/feed.js";
import type { WorldReport } from "../src/world.js";

const missing = missingChromium() ?? missingServices();
if (missing) console.warn(`skipping the console's browser test: ${missing}`);
const screenshots = process.env.GAIA_SCREENSHOTS === "1";
const docs = (name: string) => fileURLToPath(new URL(`../../docs/${name}`, import.meta.url));

type Gaia = { feed: { state: FleetState; subscribe(f: (s: FleetState) => void): () => void }; world(): WorldReport | undefined };
/** `window.__gaia`, what the page shows (src/main.ts). Only called inside the page: `open` defines it there. */
declare function gaia(): Gaia;

/** A new tab on the console, with `gaia()` defined in it, and its errors collected. */
async function open(browser: Browser, url: string, errors: string[]): Promise<Page> {
  const tab = await browser.newPage({ viewport: { width: 1280, height: 860 } });
  await tab.addInitScript(() => {
    (globalThis as unknown as { gaia: () => unknown }).gaia = () => (globalThis as unknown as { __gaia: unknown }).__gaia;
  });
  tab.on("pageerror", (e) => errors.push(e.message));
  tab.on("dialog", (d) => void d.accept()); // the drain's confirm()
  await tab.goto(url);
  return tab;
}

/** The feed's state as plain data: servers (name, region, state) and worlds. */
async function fleetState(tab: Page): Promise<{ servers: Array<{ name: string; region: string; state: string }>; worlds: Array<{ worldId: string; server: string }> }> {
  return tab.evaluate(() => {
    const s = gaia().feed.state;
    return { servers: [...s.servers.values()].map(({ name, region, state }) => ({ name, region, state })), worlds: s.worlds };
  });
}

describe.skipIf(missing !== undefined)("the console in Chromium, against gaia run under load", () => {
  let fleet: Fleet;
  let browser: Browser;
  let loadgen: ChildProcess | undefined;
  let loadgenLog = "";

  beforeAll(async () => {
    [fleet, browser] = await Promise.all([
      Fleet.start(),
      // --no-sandbox: CI runs as root, where Chromium's sandbox will not start.
      chromium.launch({ executablePath: findChromium()!, headless: true, args: ["--no-sandbox"] }),
    ]);
    // 20 bots in 4 worlds across both regions, for longer than the test takes (killed after).
    loadgen = spawn(GAIA_BIN, ["loadgen", "--allocator", fleet.url, "--bots", "20", "--world-size", "5", "--duration", "300s"], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    loadgen.stdout?.on("data", (d: Buffer) => (loadgenLog += d.toString()));
    loadgen.stderr?.on("data", (d: Buffer) => (loadgenLog = (loadgenLog + d.toString()).slice(-20_000)));
  });
  afterAll(async () => {
    loadgen?.kill("SIGINT");
    await browser?.close();
    await fleet?.stop();
  });

  it("lists both regions, draws a world moving, and drains a server", async () => {
    const errors: string[] = [];
    const tab = await open(browser, `${fleet.url}/`, errors);
    try {
      // Both regions, each with its server, and worlds the bots play in.
      for (const region of ["eu-west", "us-east"]) {
        await tab.locator(`.region[data-region="${region}"] tr.server`).first().waitFor({ timeout: 30_000 });
      }
      await tab.waitForFunction(() => gaia().feed.state.worlds.length >= 4, undefined, { timeout: 30_000 });
      await tab.waitForFunction(() => document.querySelectorAll("a.world").length >= 4);
      const before = await fleetState(tab);
      expect(new Set(before.servers.map((s) => s.region))).toEqual(new Set(["eu-west", "us-east"]));
      for (const s of before.servers.filter((s) => s.state !== "Shutdown")) {
        await expect(tab.locator(`tr.server[data-server="${s.name}"]`).count()).resolves.toBe(1);
      }
      // Allocations per second, by region: a matchmaker's burst in us-east shows there. (The
      // bots allocated once, at their start: that was more than the rate's window ago.)
      for (let i = 0; i < 3; i++) {
        const res = await fetch(`${fleet.url}/v1/allocations`, { method: "POST", body: JSON.stringify({ fleet: "town", regions: ["us-east"] }) });
        expect(res.status).toBe(200);
      }
      await tab.waitForFunction(() => {
        const rate = document.querySelector('.region[data-region="us-east"] .rate')?.textContent ?? "";
        return parseFloat(rate) > 0 && (gaia().feed.state.stats?.allocationsPerSecond["us-east"] ?? 0) > 0;
      });
      if (screenshots) await tab.screenshot({ path: docs("console-fleet.png"), fullPage: true });

      // A world: its entities move on the canvas, and between cells (played back smoothly).
      const watched = before.worlds[0]!;
      await tab.locator(`a.world`, { hasText: watched.worldId }).first().click();
      await tab.waitForFunction(() => (gaia().world()?.frames ?? 0) > 0 && (gaia().world()?.drawn.length ?? 0) > 1, undefined, { timeout: 20_000 });
      const first = await tab.evaluate(() => gaia().world()!.drawn);
      await tab.waitForFunction(
        (first) => gaia().world()!.drawn.some((d) => first.some((f) => f.id === d.id && (f.x !== d.x || f.y !== d.y))),
        first,
        { timeout: 10_000 },
      );
      await tab.waitForFunction(() => gaia().world()!.drawn.some((d) => !Number.isInteger(d.x) || !Number.isInteger(d.y)), undefined, {
        timeout: 10_000,
      });
      const world = await tab.evaluate(() => gaia().world()!);
      expect(world.tick).toBeGreaterThan(0);
      expect(world.error).toBeUndefined();
      // A spectator: no entity of its own, so every entity drawn is the world's.
      expect(world.you).toBe(0);
      await expect(tab.locator(".members li").count()).resolves.toBe((await tab.evaluate(() => gaia().world()!.drawn.length)));
      if (screenshots) {
        // A picture with a conversation in it, if the bots meet soon (not a condition of the test).
        await tab.waitForFunction(() => gaia().world()!.said.some((l) => l.includes(": ")), undefined, { timeout: 30_000 }).catch(() => undefined);
        await tab.screenshot({ path: docs("console-world.png"), fullPage: true });
      }

      // Drain the server holding the watched world, from the fleet page of another tab, while
      // this tab watches the world.
      const drained = watched.server;
      const hosted = before.worlds.filter((w) => w.server === drained).map((w) => w.worldId);
      const operator = await open(browser, `${fleet.url}/`, errors);
      const row = operator.locator(`tr.server[data-server="${drained}"]`);
      await row.waitFor();
      await operator.evaluate((name) => {
        const seen: string[] = [];
        (globalThis as unknown as { seen: string[] }).seen = seen;
        gaia().feed.subscribe((s) => {
          const state = s.servers.get(name)?.state ?? "removed";
          if (seen.at(-1) !== state) seen.push(state);
        });
      }, drained);
      await row.locator("button").click();
      // Draining, then gone from the servers' tables; its worlds are on other servers.
      await operator.waitForFunction(() => (globalThis as unknown as { seen: string[] }).seen.includes("Draining"), undefined, {
        timeout: 10_000,
      });
      await row.waitFor({ state: "detached", timeout: 30_000 });
      await operator.waitForFunction(
        ([name, ids]) => ids.every((id) => gaia().feed.state.worlds.some((w) => w.worldId === id && w.server !== name)),
        [drained, hosted] as const,
        { timeout: 30_000 },
      );
      // The world page found its world again on the new server (a spectator is let go, not moved).
      await tab.waitForFunction(() => gaia().world()!.migrations >= 1 && gaia().world()!.joined, undefined, { timeout: 30_000 });
      const moved = await fleetState(operator);
      const to = moved.worlds.find((w) => w.worldId === watched.worldId)!.server;
      expect(to).not.toBe(drained);
      expect(errors).toEqual([]);
      await operator.close();
    } catch (e) {
      console.error(`gaia run:\n${fleet.output.slice(-6000)}\nloadgen:\n${loadgenLog.slice(-4000)}`);
      throw e;
    } finally {
      await tab.close();
    }
  }, 120_000);
});

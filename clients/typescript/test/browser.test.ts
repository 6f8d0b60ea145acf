// GaiaClient in a real browser: the system's Chromium (headless, driven by playwright-core),
// on the browser's own WebSocket, against a real `gaia run`, over JSON and bincode. The page
// (test/browser/page.ts) is bundled by vite. Skipped, with the reason printed, when chromium
// or target/debug/gaia is missing, unless REQUIRE_SERVICES=1 (then it fails).
import { createServer, type Server } from "node:http";
import { fileURLToPath } from "node:url";
import { chromium, type Browser } from "playwright-core";
import { build, type Rolldown } from "vite";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BINCODE, JSON_ENCODING, type Encoding } from "../src/index.js";
import type { PageReport } from "./browser/page.js";
import { findChromium, missingChromium } from "./support/chromium.js";
import { Fleet, missingServices } from "./support/fleet.js";

const missing = missingChromium() ?? missingServices();
if (missing) console.warn(`skipping the browser test: ${missing}`);

/**
 * The page's script, bundled for the browser: `page.js` and the chunks it imports, by file name.
 * (The `browser` field of package.json leaves `ws` out: an empty chunk the page never loads.)
 */
async function bundle(): Promise<Map<string, string>> {
  const result = await build({
    configFile: false,
    logLevel: "warn",
    root: fileURLToPath(new URL("..", import.meta.url)),
    build: {
      write: false,
      minify: false,
      target: "es2022",
      lib: { entry: fileURLToPath(new URL("./browser/page.ts", import.meta.url)), formats: ["es"], fileName: "page" },
    },
  });
  const outputs = (Array.isArray(result) ? result : [result]) as Rolldown.RolldownOutput[];
  const chunks = outputs.flatMap((o) => o.output).filter((o) => o.type === "chunk");
  const files = new Map(chunks.map((c) => [`/${c.fileName}`, c.code]));
  if (!files.has("/page.js")) throw new Error(`no page.js among ${[...files.keys()].join(", ")}`);
  return files;
}

/** Serves the page and its scripts on 127.0.0.1, so it has a real http origin. */
async function serve(files: Map<string, string>): Promise<{ server: Server; url: string }> {
  const html = '<!doctype html><meta charset="utf-8"><title>gaia</title><script type="module" src="/page.js"></script>';
  const server = createServer((req, res) => {
    const script = files.get(req.url ?? "");
    if (script !== undefined) res.writeHead(200, { "content-type": "text/javascript; charset=utf-8" }).end(script);
    else if (req.url === "/") res.writeHead(200, { "content-type": "text/html; charset=utf-8" }).end(html);
    else res.writeHead(404).end();
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", () => resolve()));
  const address = server.address();
  if (!address || typeof address !== "object") throw new Error("no port");
  return { server, url: `http://127.0.0.1:${address.port}/` };
}

describe.skipIf(missing !== undefined)("in Chromium, against gaia run", () => {
  let fleet: Fleet;
  let browser: Browser;
  let page: { server: Server; url: string };

  beforeAll(async () => {
    [fleet, page, browser] = await Promise.all([
      Fleet.start(),
      bundle().then(serve),
      // --no-sandbox: CI runs as root, where Chromium's sandbox will not start.
      chromium.launch({ executablePath: findChromium()!, headless: true, args: ["--no-sandbox"] }),
    ]);
  });
  afterAll(async () => {
    await browser?.close();
    page?.server.close();
    await fleet?.stop();
  });

  for (const encoding of [JSON_ENCODING, BINCODE] as Encoding[]) {
    it(`joins over ${encoding} on the browser's WebSocket, moves, and sees the delta`, async () => {
      const alloc = await fleet.allocate({ worldId: `ts-browser-${encoding}-${process.pid}-${Date.now()}` });
      const tab = await browser.newPage();
      const errors: string[] = [];
      tab.on("pageerror", (e) => errors.push(e.message));
      try {
        await tab.goto(page.url);
        await tab.waitForFunction(() => "gaiaPage" in globalThis);
        const report = await tab.evaluate(
          ([address, token, encoding]) =>
            (globalThis as unknown as { gaiaPage: { run(a: string, t: string, e: string): Promise<PageReport> } }).gaiaPage.run(address, token, encoding),
          [alloc.address, alloc.joinToken, encoding] as const,
        );
        expect(report.nativeSockets).toBe(1);
        expect(report.encodingInUse).toBe(encoding);
        expect(report.resultTick).toBeGreaterThan(0);
        // The result comes before the delta that shows the move (docs/protocol.md §3).
        expect(report.deltaTick).toBeGreaterThanOrEqual(report.resultTick);
        expect(report.to).toEqual({ x: report.from.x + report.step.dx, y: report.from.y + report.step.dy });
        expect(errors).toEqual([]);
      } finally {
        await tab.close();
      }
    }, 30_000);
  }
});

// The console: one feed of the fleet (`GET /v1/events`) for the whole page, and two pages by
// the URL's hash: `#/` the fleet, `#/world/{fleet}/{worldId}` one world. `window.__gaia`
// exposes what the page shows, for the browser test.
import "./style.css";
import { Feed } from "./feed.js";
import { FleetPage } from "./fleet.js";
import { WorldPage, type WorldReport } from "./world.js";

interface Page {
  stop(): void;
}

const feed = new Feed();
const root = document.querySelector<HTMLElement>("#app")!;
const status = document.querySelector<HTMLElement>("#status")!;
let page: Page | undefined;
let world: WorldPage | undefined;

declare global {
  interface Window {
    __gaia: { feed: Feed; page: string; world: () => WorldReport | undefined };
  }
}
window.__gaia = { feed, page: "", world: () => world?.report };

function route(): void {
  page?.stop();
  world = undefined;
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  if (parts[0] === "world" && parts[1] && parts[2]) {
    page = world = new WorldPage(root, feed, parts[1], parts[2]);
    window.__gaia.page = "world";
  } else {
    page = new FleetPage(root, feed);
    window.__gaia.page = "fleet";
  }
}

feed.subscribe((s) => {
  status.textContent = s.live ? "live" : "connecting…";
  status.className = s.live ? "live" : "down";
});
window.addEventListener("hashchange", route);
route();
feed.run(new AbortController().signal).catch((e: unknown) => {
  status.textContent = `feed stopped: ${(e as Error).message}`;
});

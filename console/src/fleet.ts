// The fleet page (`#/`): every fleet by region, live from the feed: each server's state,
// worlds, players, free slots and template version, with a Drain button; the autoscaler's
// buffer, desired and current replicas and its last decisions with their reasons; the
// allocations per second. Servers that are gone (Shutdown, Unhealthy, Error) are listed
// apart until the control plane forgets them.
import { api } from "./api.js";
import { clock, h, keyed, text } from "./dom.js";
import type { Feed, FleetState } from "./feed.js";
import { TEMPLATE_LABEL, TERMINAL, type GameServer, type RegionAutoscalerStatus } from "./types.js";

const COLUMNS = ["server", "state", "worlds", "players", "free slots", "template", "hosted worlds", ""];

export class FleetPage {
  private readonly unsubscribe: () => void;
  private frame = 0;

  constructor(
    private readonly root: HTMLElement,
    private readonly feed: Feed,
  ) {
    root.replaceChildren(h("div", { class: "fleets" }));
    root.addEventListener("click", this.onClick);
    this.unsubscribe = feed.subscribe(() => {
      this.frame ||= requestAnimationFrame(() => {
        this.frame = 0;
        this.render(feed.state);
      });
    });
  }

  stop(): void {
    this.unsubscribe();
    cancelAnimationFrame(this.frame);
    this.root.removeEventListener("click", this.onClick);
  }

  private readonly onClick = async (e: Event): Promise<void> => {
    const button = (e.target as Element).closest<HTMLButtonElement>("button[data-drain]");
    if (!button) return;
    const name = button.dataset.drain!;
    if (!confirm(`Drain ${name}? Its worlds move to other servers, then it shuts down.`)) return;
    button.disabled = true;
    try {
      await api("POST", `/v1/gameservers/${encodeURIComponent(name)}/drain`);
    } catch (err) {
      alert(`Drain ${name}: ${(err as Error).message}`);
      button.disabled = false;
    }
  };

  private render(state: FleetState): void {
    const servers = [...state.servers.values()];
    const fleets = [...new Set([...servers.map((s) => s.fleet), ...state.autoscalers.keys()])].sort();
    const list = this.root.querySelector(".fleets")!;
    if (fleets.length === 0) {
      list.replaceChildren(h("p", { class: "empty" }, state.live ? "No game server yet." : "Connecting…"));
      return;
    }
    list.querySelector(".empty")?.remove();
    const sections = keyed(list, fleets, (fleet) =>
      h("section", { class: "fleet" }, h("h2", {}, `fleet ${fleet}`), h("div", { class: "regions" })),
    );
    fleets.forEach((fleet, i) => this.renderFleet(sections[i]!, fleet, state));
  }

  private renderFleet(section: HTMLElement, fleet: string, state: FleetState): void {
    const servers = [...state.servers.values()].filter((s) => s.fleet === fleet);
    const autoscaler = state.autoscalers.get(fleet);
    const regions = [...new Set([...servers.map((s) => s.region), ...(autoscaler?.regions.map((r) => r.region) ?? [])])].sort();
    const parts = keyed(section.querySelector(".regions")!, regions, (region) =>
      h(
        "section",
        { class: "region", "data-region": region },
        h("h3", {}, h("span", { class: "name" }, region), " ", h("span", { class: "rate" })),
        h("p", { class: "autoscaler" }),
        h("table", { class: "servers" }, h("thead", {}, h("tr", {}, ...COLUMNS.map((c) => h("th", {}, c)))), h("tbody")),
        h("p", { class: "gone" }),
        h("details", { class: "decisions", open: "" }, h("summary", {}, "last autoscaler decisions"), h("ol")),
      ),
    );
    regions.forEach((region, i) => {
      const part = parts[i]!;
      const here = servers.filter((s) => s.region === region);
      const rate = state.stats?.allocationsPerSecond[region] ?? 0;
      text(part.querySelector(".rate")!, `${rate.toFixed(1)} allocations/s`);
      this.renderAutoscaler(part, autoscaler?.regions.find((r) => r.region === region));
      const live = here.filter((s) => !TERMINAL.includes(s.state));
      const rows = keyed(part.querySelector("tbody")!, live.map((s) => s.name), () => {
        const row = h("tr", { class: "server" }, ...COLUMNS.slice(0, -1).map(() => h("td")), h("td", {}, h("button", {}, "Drain")));
        return row;
      });
      live.forEach((s, j) => this.renderServer(rows[j]!, s, state));
      const gone = here.filter((s) => TERMINAL.includes(s.state));
      text(part.querySelector(".gone")!, gone.length ? `gone: ${gone.map((s) => `${s.name} (${s.state})`).join(", ")}` : "");
    });
  }

  private renderAutoscaler(part: HTMLElement, status: RegionAutoscalerStatus | undefined): void {
    const line = part.querySelector(".autoscaler")!;
    const list = part.querySelector(".decisions ol")!;
    if (!status) {
      text(line, "no autoscaler here");
      list.replaceChildren();
      return;
    }
    const b = status.buffer;
    text(
      line,
      `${status.policy}: desired ${status.desiredReplicas}, current ${status.currentReplicas} replicas; ` +
        `buffer ${b.free} free of ${b.target} ${b.unit}; waiting requests ${status.inputs.waitingRequests}`,
    );
    const decisions = [...status.decisions].reverse().slice(0, 5);
    const key = decisions.map((d) => `${d.atMs}`).join();
    if (list.getAttribute("data-key") === key) return;
    list.setAttribute("data-key", key);
    list.replaceChildren(
      ...decisions.map((d) => h("li", {}, `${clock(d.atMs)} ${d.from} → ${d.to} `, h("b", {}, d.reason), `: ${d.message}`)),
    );
    if (decisions.length === 0) list.replaceChildren(h("li", {}, "no decision yet"));
  }

  private renderServer(row: HTMLElement, s: GameServer, state: FleetState): void {
    row.dataset.server = s.name;
    row.dataset.state = s.state;
    const cells = row.querySelectorAll("td");
    text(cells[0]!, s.name);
    text(cells[1]!, s.state);
    cells[1]!.className = `state ${s.state}`;
    text(cells[2]!, `${s.worlds} / ${s.worldCapacity}`);
    text(cells[3]!, `${s.players} / ${s.playerCapacity}`);
    text(cells[4]!, `${Math.max(0, s.worldCapacity - s.worlds)}`);
    text(cells[5]!, (s.labels[TEMPLATE_LABEL] ?? "—").slice(0, 8));
    const worlds = state.worlds.filter((w) => w.server === s.name).map((w) => w.worldId);
    const links = cells[6]!;
    if (links.dataset.worlds !== worlds.join()) {
      links.dataset.worlds = worlds.join();
      links.replaceChildren(
        ...worlds.map((id) => h("a", { href: `#/world/${encodeURIComponent(s.fleet)}/${encodeURIComponent(id)}`, class: "world" }, id)),
      );
    }
    const button = cells[7]!.querySelector("button")!;
    button.dataset.drain = s.name;
    button.disabled = s.state === "Draining";
  }
}

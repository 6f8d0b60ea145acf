// The world page (`#/world/{fleet}/{worldId}`): the town's map on a canvas with its bots and
// players moving smoothly (the client's `Tracks` and `advancePlayback`, from the deltas'
// server times), what they say as they say it, the tick and the members. It joins through
// `seat` (join.ts, a spectate token) with GaiaClient and never sends an input. A spectator is
// not moved with its world (`Migrate` is for players): when its connection closes for any
// reason it asks for a seat again, at growing pauses, and so finds the world on its new server.
import { GaiaClient, Tracks, advancePlayback, isWall, type Change, type Entity, type Snapshot } from "@gaia-fleet/client";
import { h, text } from "./dom.js";
import type { Feed } from "./feed.js";
import { seat } from "./join.js";

/** What the page shows, for tests (`window.__gaia.world`). */
export interface WorldReport {
  worldId: string;
  /** Connected and welcomed. */
  joined: boolean;
  /** `you` of the last Welcome: 0, as the console watches and controls no entity. */
  you: number | undefined;
  tick: number;
  address: string;
  /** Frames drawn. */
  frames: number;
  /** Where each entity was drawn in the last frame, in cells (fractions while moving). */
  drawn: Array<{ id: number; name: string; kind: string; x: number; y: number }>;
  /** Conversation lines shown, oldest first. */
  said: string[];
  /** Times the page found its world again on another server, after its connection closed. */
  migrations: number;
  error: string | undefined;
}

const MAX_LINES = 60;
const BUBBLE_MS = 4000;
/** Pauses before asking for a seat again; the last repeats. */
const RETRY_MS = [250, 500, 1000, 2000, 5000];

export class WorldPage {
  readonly report: WorldReport;
  private readonly client = new GaiaClient();
  private readonly tracks = new Tracks();
  private snapshot: Snapshot | undefined;
  private playback: number | undefined;
  private lastFrame = performance.now();
  private raf = 0;
  private stopped = false;
  /** Seats asked for since the last Welcome. */
  private tries = 0;
  private retry: ReturnType<typeof setTimeout> | undefined;
  private readonly bubbles = new Map<number, { text: string; until: number }>();
  private readonly canvas = h("canvas", { class: "map" });
  private readonly info = h("p", { class: "info" });
  private readonly members = h("ul", { class: "members" });
  private readonly log = h("ol", { class: "log" });
  private readonly unsubscribe: () => void;

  constructor(
    root: HTMLElement,
    private readonly feed: Feed,
    private readonly fleet: string,
    worldId: string,
  ) {
    this.report = { worldId, joined: false, you: undefined, tick: 0, address: "", frames: 0, drawn: [], said: [], migrations: 0, error: undefined };
    root.replaceChildren(
      h("p", {}, h("a", { href: "#/" }, "← fleet")),
      h("h2", {}, `world ${worldId}`),
      this.info,
      h(
        "div",
        { class: "world" },
        this.canvas,
        h("div", { class: "side" }, h("h3", {}, "members"), this.members, h("h3", {}, "conversations"), this.log),
      ),
    );
    this.client.on("welcome", (w) => {
      this.tries = 0;
      this.report.joined = true;
      this.report.error = undefined;
      this.report.you = w.you;
      this.report.tick = w.tick;
      this.snapshot = w.snapshot;
      // The conversation so far, once: a later Welcome (the world moved) comes with lines shown already.
      if (this.report.said.length === 0) for (const m of w.messages) this.line(`${m.author}: ${m.text}`, m.tick);
      this.renderMembers();
    });
    this.client.on("delta", (d) => {
      this.snapshot = d.snapshot;
      this.report.tick = d.tick;
      this.tracks.observe(d.serverUs, d.snapshot.entities);
      this.conversation(d.changes, d.snapshot);
      if (d.changes.some((c) => c.type === "joined" || c.type === "left")) this.renderMembers();
    });
    this.client.on("resync", (r) => {
      this.snapshot = r.snapshot;
      this.report.tick = r.tick;
      this.renderMembers();
    });
    this.client.on("close", ({ code, reason }) => {
      this.report.joined = false;
      this.report.error = `closed ${code}${reason ? `: ${reason}` : ""}`;
      this.line(`disconnected (${this.report.error})`);
      this.again();
    });
    this.unsubscribe = feed.subscribe(() => this.renderInfo());
    void this.join();
    this.raf = requestAnimationFrame(this.frame);
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.retry);
    this.unsubscribe();
    cancelAnimationFrame(this.raf);
    this.client.close();
  }

  private async join(): Promise<void> {
    this.tries++;
    try {
      const { address, token } = await seat(this.fleet, this.report.worldId);
      if (this.stopped) return;
      const moved = this.report.address !== "" && this.report.address !== address;
      this.report.address = address;
      // JSON: frames are readable in the browser's developer tools.
      await this.client.connect(address, token, { encoding: "gaia.v1.json" });
      if (moved) {
        this.report.migrations++;
        this.line(`the world is on ${address} now`);
      }
    } catch (e) {
      this.report.error = (e as Error).message;
      this.line(`cannot watch: ${this.report.error}`);
      this.again();
    }
    this.renderInfo();
  }

  /** Asks for a seat again after a pause (once at a time). */
  private again(): void {
    if (this.stopped || this.retry !== undefined) return;
    const ms = RETRY_MS[Math.min(this.tries, RETRY_MS.length) - 1] ?? RETRY_MS[0]!;
    this.retry = setTimeout(() => {
      this.retry = undefined;
      void this.join();
    }, ms);
  }

  private renderInfo(): void {
    const server = this.feed.serverOf(this.report.worldId);
    const where = server ? `on ${server.name} (${server.region}, ${server.state})` : "not placed on any server";
    const members = this.snapshot?.entities.length ?? 0;
    text(this.info, `${where} · tick ${this.report.tick} · ${members} members${this.report.joined ? "" : " · not connected"}`);
  }

  private renderMembers(): void {
    const entities = [...(this.snapshot?.entities ?? [])].sort((a, b) => a.kind.localeCompare(b.kind) || a.name.localeCompare(b.name));
    this.members.replaceChildren(
      ...entities.map((e) => h("li", { class: e.kind }, `${e.name} · ${e.kind}`)),
    );
  }

  private conversation(changes: readonly Change[], s: Snapshot): void {
    const name = (id: number) => s.entities.find((e) => e.id === id)?.name ?? `#${id}`;
    for (const c of changes) {
      if (c.type === "said") {
        this.bubbles.set(c.id, { text: c.text, until: performance.now() + BUBBLE_MS });
        this.line(`${name(c.id)}: ${c.text}`);
      } else if (c.type === "greeted") this.line(`${name(c.id)} greets ${name(c.other)}`);
      else if (c.type === "parted") this.line(`${name(c.id)} leaves ${name(c.other)}`);
      else if (c.type === "joined") this.line(`${c.entity.name} joins`);
      else if (c.type === "left") this.line(`${name(c.id)} leaves the world`);
    }
  }

  private line(message: string, tick = this.report.tick): void {
    const line = `t${tick} ${message}`;
    this.report.said.push(line);
    if (this.report.said.length > MAX_LINES) this.report.said.shift();
    this.log.prepend(h("li", {}, line));
    while (this.log.children.length > MAX_LINES) this.log.lastElementChild?.remove();
    this.renderInfo();
  }

  private readonly frame = (now: number): void => {
    if (this.stopped) return;
    const elapsed = now - this.lastFrame;
    this.lastFrame = now;
    if (this.snapshot) this.draw(this.snapshot, elapsed, now);
    this.raf = requestAnimationFrame(this.frame);
  };

  private draw(s: Snapshot, elapsedMs: number, now: number): void {
    const cell = Math.max(4, Math.floor(Math.min(720 / s.width, 540 / s.height)));
    if (this.canvas.width !== s.width * cell) this.canvas.width = s.width * cell;
    if (this.canvas.height !== s.height * cell) this.canvas.height = s.height * cell;
    const g = this.canvas.getContext("2d")!;
    g.fillStyle = "#eef3e6";
    g.fillRect(0, 0, this.canvas.width, this.canvas.height);
    g.fillStyle = "#6b705c";
    for (let y = 0; y < s.height; y++) for (let x = 0; x < s.width; x++) if (isWall(s, x, y)) g.fillRect(x * cell, y * cell, cell, cell);

    const newest = this.tracks.newestUs;
    if (newest !== undefined) this.playback = advancePlayback(this.playback, newest, elapsedMs);
    const drawn: WorldReport["drawn"] = [];
    g.textAlign = "center";
    for (const e of s.entities) {
      const at = (this.playback !== undefined && this.tracks.at(e.id, this.playback)) || { x: e.x, y: e.y };
      drawn.push({ id: e.id, name: e.name, kind: e.kind, x: at.x, y: at.y });
      this.drawEntity(g, e, at, cell, now);
    }
    if (this.playback !== undefined) this.tracks.prune(this.playback);
    this.report.drawn = drawn;
    this.report.frames++;
  }

  private drawEntity(g: CanvasRenderingContext2D, e: Entity, at: { x: number; y: number }, cell: number, now: number): void {
    const cx = (at.x + 0.5) * cell;
    const cy = (at.y + 0.5) * cell;
    g.beginPath();
    g.arc(cx, cy, cell * 0.42, 0, Math.PI * 2);
    g.fillStyle = e.kind === "bot" ? "#2a6f97" : "#c1121f";
    g.fill();
    g.fillStyle = "#333";
    g.font = `${Math.max(9, Math.round(cell * 0.7))}px system-ui, sans-serif`;
    g.fillText(e.name.length > 8 ? e.name.slice(0, 6) : e.name, cx, cy + cell * 1.15);
    const bubble = this.bubbles.get(e.id);
    if (bubble && bubble.until > now) {
      const label = bubble.text.length > 40 ? `${bubble.text.slice(0, 39)}…` : bubble.text;
      g.font = `${Math.max(10, cell)}px system-ui, sans-serif`;
      const w = g.measureText(label).width + 8;
      g.fillStyle = "rgba(255,255,255,0.9)";
      g.fillRect(cx - w / 2, cy - cell * 2.1, w, cell * 1.3);
      g.fillStyle = "#222";
      g.fillText(label, cx, cy - cell * 1.1);
    } else if (bubble) this.bubbles.delete(e.id);
  }
}

// The fleet as the control plane streams it (`GET /v1/events`, Server-Sent Events): a
// snapshot, then each change. The stream is read with fetch (through fetch-event-source) so
// it can carry the Authorization header, which EventSource cannot. After a broken stream it
// reconnects, and the new snapshot replaces everything.
import { fetchEventSource } from "@microsoft/fetch-event-source";
import { askForToken, authHeaders } from "./api.js";
import type { FleetAutoscalerStatus, GameServer, HostedWorld, Snapshot, Stats } from "./types.js";

export interface FleetState {
  /** By name. */
  servers: Map<string, GameServer>;
  worlds: HostedWorld[];
  /** By fleet. */
  autoscalers: Map<string, FleetAutoscalerStatus>;
  stats: Stats | undefined;
  /** The stream is open and has had its snapshot. */
  live: boolean;
}

class Unauthorized extends Error {}

export class Feed {
  readonly state: FleetState = { servers: new Map(), worlds: [], autoscalers: new Map(), stats: undefined, live: false };
  private readonly listeners = new Set<(state: FleetState) => void>();

  /** Calls `listener` after every change (and now). Returns the unsubscribe. */
  subscribe(listener: (state: FleetState) => void): () => void {
    this.listeners.add(listener);
    listener(this.state);
    return () => this.listeners.delete(listener);
  }

  /** The server holding `worldId`, as last streamed. */
  serverOf(worldId: string): GameServer | undefined {
    const hosted = this.state.worlds.find((w) => w.worldId === worldId);
    return hosted && this.state.servers.get(hosted.server);
  }

  /** Follows the stream until `signal` aborts. */
  async run(signal: AbortSignal): Promise<void> {
    while (!signal.aborted) {
      try {
        await fetchEventSource("/v1/events", {
          headers: authHeaders(),
          signal,
          openWhenHidden: true,
          onopen: async (res) => {
            if (res.status === 401) throw new Unauthorized();
            if (!res.ok) throw new Error(`GET /v1/events: ${res.status}`);
          },
          onmessage: (msg) => this.apply(msg.event, msg.data),
          // The server ended the stream (it shuts down): try again, as after an error.
          onclose: () => {
            throw new Error("the event stream ended");
          },
          onerror: (e) => {
            this.setLive(false);
            if (e instanceof Unauthorized) throw e; // stop retrying: ask for a token first
            return 1000; // retry in a second
          },
        });
      } catch (e) {
        if (!(e instanceof Unauthorized)) throw e;
        await askForToken(authHeaders().authorization ? "That token was refused." : "This control plane needs a matchmaker token.");
      }
    }
  }

  private setLive(live: boolean): void {
    if (this.state.live === live) return;
    this.state.live = live;
    this.changed();
  }

  private apply(event: string, data: string): void {
    const s = this.state;
    switch (event) {
      case "snapshot": {
        const snap = JSON.parse(data) as Snapshot;
        s.servers = new Map(snap.servers.map((g) => [g.name, g]));
        s.worlds = snap.worlds;
        s.autoscalers = new Map(snap.autoscalers.map((a) => [a.fleet, a]));
        s.stats = snap.stats;
        s.live = true;
        break;
      }
      case "server": {
        const server = JSON.parse(data) as GameServer;
        s.servers.set(server.name, server);
        break;
      }
      case "serverRemoved":
        s.servers.delete((JSON.parse(data) as { name: string }).name);
        break;
      case "worlds":
        s.worlds = JSON.parse(data) as HostedWorld[];
        break;
      case "autoscaler": {
        const status = JSON.parse(data) as FleetAutoscalerStatus;
        s.autoscalers.set(status.fleet, status);
        break;
      }
      case "stats":
        s.stats = JSON.parse(data) as Stats;
        break;
      default:
        return; // an event this console does not know yet
    }
    this.changed();
  }

  private changed(): void {
    for (const listener of this.listeners) listener(this.state);
  }
}

// What `GET /v1/events` sends (docs/architecture.md, "The web console"); the JSON forms of
// the Rust types in api/src/gameserver.rs, api/src/autoscaler.rs and allocator/src/events.rs.
import type { GameServerState } from "@gaia-fleet/client";

export type { GameServerState };

export interface GameServer {
  name: string;
  fleet: string;
  region: string;
  address?: string | null;
  state: GameServerState;
  labels: Record<string, string>;
  annotations: Record<string, string>;
  worldCapacity: number;
  playerCapacity: number;
  worlds: number;
  players: number;
}

export interface HostedWorld {
  worldId: string;
  server: string;
}

export interface ScaleDecision {
  atMs: number;
  from: number;
  to: number;
  reason: string;
  message: string;
}

export interface RegionAutoscalerStatus {
  region: string;
  policy: string;
  desiredReplicas: number;
  currentReplicas: number;
  buffer: { unit: string; target: number; free: number };
  inputs: { usedWorlds: number; worldCapacity: number; waitingRequests: number; allocationRate: number };
  decisions: ScaleDecision[];
}

export interface FleetAutoscalerStatus {
  fleet: string;
  updatedAtMs: number;
  regions: RegionAutoscalerStatus[];
}

export interface Stats {
  atMs: number;
  allocationsPerSecond: Record<string, number>;
}

export interface Snapshot {
  servers: GameServer[];
  worlds: HostedWorld[];
  autoscalers: FleetAutoscalerStatus[];
  stats: Stats;
}

/** Servers in these states are gone: they host nothing and will not come back. */
export const TERMINAL: readonly GameServerState[] = ["Shutdown", "Unhealthy", "Error"];

/** The label a server's template version is in (`FleetSpec::template_version`). */
export const TEMPLATE_LABEL = "gaia.dev/template";

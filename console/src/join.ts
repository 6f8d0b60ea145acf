// How the world view gets into a world: an address and a token for an ordinary `Join`.
//
// The console is meant to watch as a spectator (`POST /v1/worlds/{worldId}/spectate`:
// read-only, not a member, its inputs refused). Until the control plane has that endpoint,
// it joins as a player through the matchmaker's `POST /v1/allocations` with the world's id:
// it then shows as one more member of the world, and still never sends an input.
// To switch, set SPECTATE to true: nothing else changes.
import { api } from "./api.js";

export const SPECTATE = false;

export interface Seat {
  address: string;
  token: string;
}

export async function seat(fleet: string, worldId: string): Promise<Seat> {
  if (SPECTATE) {
    const s = await api<{ address: string; token: string }>("POST", `/v1/worlds/${encodeURIComponent(worldId)}/spectate`);
    return { address: s.address, token: s.token };
  }
  const a = await api<{ address: string; joinToken: string }>("POST", "/v1/allocations", {
    fleet,
    worldId,
    playerId: `console-${Math.random().toString(36).slice(2, 10)}`,
  });
  return { address: a.address, token: a.joinToken };
}

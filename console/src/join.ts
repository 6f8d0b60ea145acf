// How the world view gets into a world: a spectate token from the control plane
// (`POST /v1/fleets/{fleet}/worlds/{worldId}/spectate`). The connection watches: the Welcome
// names no entity of its own (`you` 0), it is no member of the world and no player on its
// server, and the server would refuse its inputs (it sends none).
import type { SpectateResponse } from "@gaia-fleet/client";
import { api } from "./api.js";

export interface Seat {
  address: string;
  token: string;
}

export async function seat(fleet: string, worldId: string): Promise<Seat> {
  const path = `/v1/fleets/${encodeURIComponent(fleet)}/worlds/${encodeURIComponent(worldId)}/spectate`;
  const s = await api<SpectateResponse>("POST", path);
  return { address: s.address, token: s.token };
}

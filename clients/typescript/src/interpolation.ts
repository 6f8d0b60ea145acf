/**
 * Smooth movement from 10-a-second deltas, after AI Town's historical time: the client plays
 * server time back from a buffer, a little behind the newest delta, instead of jumping to each
 * delta as it lands. `advancePlayback` moves the playback clock (slower when under
 * `minBufferMs` is buffered, faster when over `maxBufferMs`); `Tracks` remembers where each
 * entity was at which server time and `Tracks.at` answers for the playback time. Both are pure
 * or plain data, so they are tested without a socket or a real clock.
 */

export interface PlaybackOptions {
  /** Below this much buffered server time, play slower. Default 250 ms. */
  minBufferMs?: number;
  /** Above this much, play faster. Default 1250 ms. */
  maxBufferMs?: number;
  /** Above this much, jump to `maxBufferMs` behind the newest frame. Default 5000 ms. */
  jumpBufferMs?: number;
  /** Default 0.8. */
  slowRate?: number;
  /** Default 1.2. */
  fastRate?: number;
}

/**
 * The playback time (server µs) after `elapsedMs` of wall-clock time, given the newest server
 * time received. `playbackUs` undefined means nothing played yet: start `minBufferMs` behind.
 * Never plays past `newestUs`.
 */
export function advancePlayback(
  playbackUs: number | undefined,
  newestUs: number,
  elapsedMs: number,
  options: PlaybackOptions = {},
): number {
  const min = (options.minBufferMs ?? 250) * 1000;
  const max = (options.maxBufferMs ?? 1250) * 1000;
  const jump = (options.jumpBufferMs ?? 5000) * 1000;
  if (playbackUs === undefined) return newestUs - min;
  const buffered = newestUs - playbackUs;
  if (buffered > jump) return newestUs - max;
  const rate = buffered < min ? (options.slowRate ?? 0.8) : buffered > max ? (options.fastRate ?? 1.2) : 1;
  return Math.min(newestUs, playbackUs + elapsedMs * 1000 * rate);
}

export interface Sample {
  us: number;
  x: number;
  y: number;
}

/** Where a track was at `us`: linear between the samples around it, clamped at the ends. */
export function positionAt(samples: readonly Sample[], us: number): { x: number; y: number } | undefined {
  const first = samples[0];
  if (!first) return undefined;
  if (us <= first.us) return { x: first.x, y: first.y };
  for (let i = 1; i < samples.length; i++) {
    const b = samples[i]!;
    if (us <= b.us) {
      const a = samples[i - 1]!;
      const f = b.us === a.us ? 1 : (us - a.us) / (b.us - a.us);
      return { x: a.x + (b.x - a.x) * f, y: a.y + (b.y - a.y) * f };
    }
  }
  const last = samples[samples.length - 1]!;
  return { x: last.x, y: last.y };
}

/**
 * Each entity's recent positions by server time. Feed it every frame's positions with
 * `observe` (after `Welcome`, each `Delta`, a `Resync`); a move seen at a frame is played
 * from the previous frame's time to this one's, so a step takes one delta interval.
 */
export class Tracks {
  private readonly tracks = new Map<number, Sample[]>();
  private lastUs: number | undefined;
  /** The newest server time observed, for `advancePlayback`. */
  get newestUs(): number | undefined {
    return this.lastUs;
  }

  observe(us: number, entities: Iterable<{ id: number; x: number; y: number }>): void {
    const seen = new Set<number>();
    for (const { id, x, y } of entities) {
      seen.add(id);
      const track = this.tracks.get(id);
      const last = track?.at(-1);
      if (!track || !last) {
        this.tracks.set(id, [{ us, x, y }]);
      } else if (last.x !== x || last.y !== y) {
        // Hold the old cell until the previous frame, then move during this interval.
        if (this.lastUs !== undefined && last.us < this.lastUs) track.push({ us: this.lastUs, x: last.x, y: last.y });
        track.push({ us, x, y });
      }
    }
    for (const id of this.tracks.keys()) if (!seen.has(id)) this.tracks.delete(id);
    this.lastUs = us;
  }

  /** Where `id` is at playback time `us`. */
  at(id: number, us: number): { x: number; y: number } | undefined {
    return positionAt(this.tracks.get(id) ?? [], us);
  }

  /** Drops samples no longer needed once playback has reached `us`. */
  prune(us: number): void {
    for (const track of this.tracks.values()) {
      let i = 0;
      while (i + 1 < track.length && track[i + 1]!.us <= us) i++;
      if (i > 0) track.splice(0, i);
    }
  }
}

/**
 * When to try a connection again: the pauses between attempts, as a plain function of how
 * many retries were made and how long ago the first failure was, so it is tested without a
 * clock. `GaiaClient` uses two policies: a connect refused before the socket opens (HTTP 503,
 * docs/protocol.md §2) and a resume after a broken connection (§4, "Resume").
 */

export interface RetryPolicy {
  /** The pause before the first retry, the second, ...; the last one repeats while `withinMs` lasts. */
  delaysMs: readonly number[];
  /**
   * No retry starts later than this after the first failure. Without it, there are exactly
   * as many retries as `delaysMs` has pauses.
   */
  withinMs?: number;
}

/** A connect that fails before open: a 503 carries `Retry-After: 1`; a browser sees only 1006. */
export const CONNECT_RETRY: RetryPolicy = { delaysMs: [500, 1_000, 2_000] };

/** The server keeps a dropped member for 10 s (`GAIA_RESUME_GRACE`). */
export const DEFAULT_RESUME_GRACE_MS = 10_000;

export const RESUME_RETRY: RetryPolicy = { delaysMs: [250, 500, 1_000, 2_000], withinMs: DEFAULT_RESUME_GRACE_MS };

/**
 * The pause before retry number `retry` (1 for the first), or `undefined` when there is none
 * left: past the list of pauses (no `withinMs`), or when it would start `withinMs` or more
 * after the first failure (`elapsedMs` ago).
 */
export function nextPause(policy: RetryPolicy, retry: number, elapsedMs = 0): number | undefined {
  const { delaysMs, withinMs } = policy;
  if (retry < 1 || delaysMs.length === 0) return undefined;
  if (withinMs === undefined) return delaysMs[retry - 1];
  const pause = delaysMs[Math.min(retry, delaysMs.length) - 1]!;
  return elapsedMs + pause < withinMs ? pause : undefined;
}

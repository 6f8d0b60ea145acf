//! Smoothing over time: scale up at once, scale down slowly.
//!
//! A [`Stabiliser`] answers the highest raw desired count seen during the last `window`
//! (the autoscaler's `scaleDownDelay`), as Kubernetes' HPA stabilisation window does. A
//! rise shows at once, because the newest value is in the window; a fall shows only once
//! every higher value has aged out of it. Time is passed in, so it is tested on explicit
//! instants.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// The sliding-window maximum of raw desired counts for one (fleet, region).
#[derive(Debug, Clone)]
pub struct Stabiliser {
    window: Duration,
    /// Candidates for the window's maximum: times increase and values strictly decrease
    /// from front to back. A value followed by a newer one at least as high can never be
    /// the maximum again, so it is dropped; the deque stays short.
    seen: VecDeque<(Instant, u32)>,
}

impl Stabiliser {
    pub fn new(window: Duration) -> Self {
        Self { window, seen: VecDeque::new() }
    }

    /// Records `raw` at `now` and answers the stabilised count: the highest raw count
    /// recorded in `(now - window, now]`. Instants are expected not to go backwards; one
    /// that does is treated as `now` of the newest record.
    pub fn update(&mut self, now: Instant, raw: u32) -> u32 {
        let now = self.seen.back().map_or(now, |&(last, _)| now.max(last));
        while self.seen.back().is_some_and(|&(_, v)| v <= raw) {
            self.seen.pop_back();
        }
        self.seen.push_back((now, raw));
        while self.seen.front().is_some_and(|&(t, _)| now.duration_since(t) >= self.window) {
            self.seen.pop_front();
        }
        // The newest record is never expired (its age is 0), except with a zero window,
        // where the answer is simply `raw`.
        self.seen.front().map_or(raw, |&(_, v)| v)
    }

    /// When the current answer may fall if nothing higher is recorded: the time the
    /// oldest candidate leaves the window. `None` when only the newest value is held.
    pub fn next_fall(&self) -> Option<Instant> {
        if self.seen.len() < 2 {
            return None;
        }
        self.seen.front().map(|&(t, _)| t + self.window)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn scales_up_at_once_and_down_after_the_window() {
        let t0 = Instant::now();
        let mut s = Stabiliser::new(secs(30));
        assert_eq!(s.update(t0, 1), 1);
        assert_eq!(s.update(t0 + secs(1), 3), 3, "up at once");
        assert_eq!(s.update(t0 + secs(2), 1), 3, "down waits");
        assert_eq!(s.update(t0 + secs(30), 1), 3, "29 s after the 3: still held");
        assert_eq!(s.next_fall(), Some(t0 + secs(31)));
        assert_eq!(s.update(t0 + secs(31), 1), 1, "30 s after the 3: the window let it go");
        assert_eq!(s.next_fall(), None);
    }

    #[test]
    fn falls_in_steps_to_the_highest_value_still_in_the_window() {
        let t0 = Instant::now();
        let mut s = Stabiliser::new(secs(10));
        assert_eq!(s.update(t0, 5), 5);
        assert_eq!(s.update(t0 + secs(4), 3), 5);
        assert_eq!(s.update(t0 + secs(8), 1), 5);
        assert_eq!(s.update(t0 + secs(10), 1), 3, "the 5 aged out, the 3 has not");
        assert_eq!(s.update(t0 + secs(14), 1), 1, "the 3 aged out too");
    }

    #[test]
    fn a_new_need_restarts_the_wait() {
        let t0 = Instant::now();
        let mut s = Stabiliser::new(secs(10));
        assert_eq!(s.update(t0, 4), 4);
        assert_eq!(s.update(t0 + secs(9), 4), 4);
        assert_eq!(s.update(t0 + secs(12), 2), 4, "the 4 seen at 9 s holds until 19 s");
        assert_eq!(s.update(t0 + secs(19), 2), 2);
    }

    #[test]
    fn zero_window_follows_raw() {
        let t0 = Instant::now();
        let mut s = Stabiliser::new(Duration::ZERO);
        assert_eq!(s.update(t0, 4), 4);
        assert_eq!(s.update(t0, 1), 1);
        assert_eq!(s.update(t0 + secs(1), 0), 0);
    }

    #[test]
    fn time_going_backwards_does_not_release_early() {
        let t0 = Instant::now() + secs(100);
        let mut s = Stabiliser::new(secs(10));
        assert_eq!(s.update(t0, 4), 4);
        assert_eq!(s.update(t0 - secs(50), 1), 4);
        assert_eq!(s.update(t0 + secs(10), 1), 1);
    }

    #[test]
    fn memory_stays_small_under_steady_updates() {
        let t0 = Instant::now();
        let mut s = Stabiliser::new(secs(30));
        for i in 0..10_000u64 {
            s.update(t0 + Duration::from_millis(i * 10), 7);
        }
        assert_eq!(s.seen.len(), 1);
    }
}

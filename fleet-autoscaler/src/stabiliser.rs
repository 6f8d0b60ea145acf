//! Smoothing over time: scale up at once, scale down slowly.
//!
//! A [`Stabiliser`] answers the highest raw desired count seen during the last `window`
//! (the autoscaler's `scaleDownDelay`), as Kubernetes' HPA stabilisation window does. A
//! rise shows at once, because the newest value is in the window; a fall shows only once
//! every higher value has aged out of it. A fall is then taken in steps: at most `step`
//! servers (or percent of the current count, rounded up, at least 1) per `period`. Time
//! is passed in, so it is tested on explicit instants.

use std::collections::VecDeque;
use std::time::Duration;

use gaia_api::autoscaler::IntOrPercent;
use tokio::time::Instant;

/// The sliding-window maximum of raw desired counts for one (fleet, region), released
/// downwards at a bounded rate.
#[derive(Debug, Clone)]
pub struct Stabiliser {
    window: Duration,
    step: IntOrPercent,
    period: Duration,
    /// Candidates for the window's maximum: times increase and values strictly decrease
    /// from front to back. A value followed by a newer one at least as high can never be
    /// the maximum again, so it is dropped; the deque stays short.
    seen: VecDeque<(Instant, u32)>,
    /// The last answer, and when it last fell.
    answer: Option<u32>,
    last_fall: Option<Instant>,
}

impl Stabiliser {
    /// A window with falls taken in one go.
    pub fn new(window: Duration) -> Self {
        Self::with_limit(window, IntOrPercent::Percent(100), Duration::ZERO)
    }

    pub fn with_limit(window: Duration, step: IntOrPercent, period: Duration) -> Self {
        Self { window, step, period, seen: VecDeque::new(), answer: None, last_fall: None }
    }

    /// New window and step for the values to come; what was recorded stays.
    pub fn set_limit(&mut self, window: Duration, step: IntOrPercent, period: Duration) {
        (self.window, self.step, self.period) = (window, step, period);
    }

    /// Records `raw` at `now` and answers the stabilised count: the highest raw count
    /// recorded in `(now - window, now]`, or, when that is lower than the last answer,
    /// the last answer less at most one step (once per `period`). Instants are expected
    /// not to go backwards; one that does is treated as `now` of the newest record.
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
        // where the wanted count is simply `raw`.
        let wanted = self.seen.front().map_or(raw, |&(_, v)| v);
        let answer = match self.answer {
            Some(last) if wanted < last => {
                if self.last_fall.is_some_and(|t| now.saturating_duration_since(t) < self.period) {
                    last
                } else {
                    self.last_fall = Some(now);
                    wanted.max(last.saturating_sub(self.step_at(last)))
                }
            }
            _ => wanted,
        };
        self.answer = Some(answer);
        answer
    }

    /// Servers one step may take from `count`.
    fn step_at(&self, count: u32) -> u32 {
        let step = match self.step {
            IntOrPercent::Int(n) => n,
            IntOrPercent::Percent(p) => {
                u32::try_from((u64::from(count) * u64::from(p)).div_ceil(100)).unwrap_or(u32::MAX)
            }
        };
        step.max(1)
    }

    /// When the answer may next fall if nothing higher is recorded: when the oldest
    /// candidate leaves the window, or, while a fall is under way, when the next step is
    /// allowed. `None` when nothing would change.
    pub fn next_fall(&self) -> Option<Instant> {
        let window = (self.seen.len() >= 2).then(|| self.seen.front().map(|&(t, _)| t + self.window)).flatten();
        let wanted = self.seen.front().map(|&(_, v)| v);
        let stepping = match (self.answer, wanted) {
            (Some(answer), Some(wanted)) if wanted < answer => self.last_fall.map(|t| t + self.period),
            _ => None,
        };
        window.into_iter().chain(stepping).min()
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
    fn falls_are_taken_in_bounded_steps() {
        let t0 = Instant::now();
        let mut s = Stabiliser::with_limit(secs(10), IntOrPercent::Int(2), secs(5));
        assert_eq!(s.update(t0, 10), 10);
        assert_eq!(s.update(t0 + secs(1), 1), 10, "inside the window");
        assert_eq!(s.next_fall(), Some(t0 + secs(10)));
        assert_eq!(s.update(t0 + secs(10), 1), 8, "the window let go: one step of 2");
        assert_eq!(s.next_fall(), Some(t0 + secs(15)));
        assert_eq!(s.update(t0 + secs(12), 1), 8, "the next step waits a period");
        assert_eq!(s.update(t0 + secs(15), 1), 6);
        assert_eq!(s.update(t0 + secs(16), 7), 7, "a rise shows at once");
        assert_eq!(s.update(t0 + secs(20), 1), 7, "held by the 7 for the window");
        assert_eq!(s.update(t0 + secs(26), 6), 6, "one step to what is wanted");
        assert_eq!(s.next_fall(), None, "nothing more to take");
    }

    #[test]
    fn percent_steps_round_up_and_take_at_least_one() {
        let t0 = Instant::now();
        let mut s = Stabiliser::with_limit(Duration::ZERO, IntOrPercent::Percent(25), secs(1));
        assert_eq!(s.update(t0, 10), 10);
        assert_eq!(s.update(t0 + secs(1), 0), 7, "25% of 10 is 2.5: 3");
        assert_eq!(s.update(t0 + secs(2), 0), 5, "25% of 7 is 1.75: 2");
        assert_eq!(s.update(t0 + secs(3), 0), 3);
        assert_eq!(s.update(t0 + secs(4), 0), 2);
        assert_eq!(s.update(t0 + secs(5), 0), 1, "at least one");
        assert_eq!(s.update(t0 + secs(6), 0), 0, "down to zero");
        assert_eq!(s.update(t0 + secs(6), 3), 3, "and back up at once");
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

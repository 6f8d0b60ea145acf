//! What the autoscaler measures per region, on instants passed in: the allocation rate
//! ([`RateMeter`]), how long servers take to start ([`StartTimes`]) and the requests
//! waiting for a slot ([`Waiting`]). Each is small, bounded and tested on explicit
//! instants, so the simulator drives them on its virtual clock.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

/// The longest window a rate is asked for (an adaptive policy's `rateWindow` is at most
/// 1 h); older counts are dropped.
const RATE_HISTORY: Duration = Duration::from_secs(3600);

/// Events per second over a sliding window, counted in one-second buckets.
#[derive(Debug, Clone)]
pub struct RateMeter {
    origin: Instant,
    /// (second since `origin`, events in it), oldest first.
    buckets: VecDeque<(u64, u32)>,
}

impl RateMeter {
    pub fn new(origin: Instant) -> Self {
        Self { origin, buckets: VecDeque::new() }
    }

    fn second(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.origin).as_secs()
    }

    pub fn record(&mut self, now: Instant) {
        let second = self.second(now);
        match self.buckets.back_mut() {
            Some((s, n)) if *s >= second => *n = n.saturating_add(1),
            _ => self.buckets.push_back((second, 1)),
        }
        let keep_from = second.saturating_sub(RATE_HISTORY.as_secs());
        while self.buckets.front().is_some_and(|&(s, _)| s < keep_from) {
            self.buckets.pop_front();
        }
    }

    /// Events per second over the `window` that ends at `now` (the current second
    /// included), counted over the whole window even when less time has passed.
    pub fn rate(&self, now: Instant, window: Duration) -> f64 {
        let seconds = window.as_secs().max(1);
        let newest = self.second(now);
        let oldest = (newest + 1).saturating_sub(seconds);
        let events: u64 =
            self.buckets.iter().rev().take_while(|&&(s, _)| s >= oldest).map(|&(_, n)| u64::from(n)).sum();
        events as f64 / seconds as f64
    }
}

/// How many measured starts are remembered; the slowest of them is used.
const STARTS_KEPT: usize = 10;

/// Measured server starts: from the record appearing (Scheduled) to Ready.
#[derive(Debug, Clone, Default)]
pub struct StartTimes {
    scheduled: HashMap<String, Instant>,
    measured: VecDeque<Duration>,
}

impl StartTimes {
    /// A server record appeared (it was scheduled).
    pub fn scheduled(&mut self, name: &str, now: Instant) {
        self.scheduled.insert(name.to_string(), now);
    }

    /// A server turned Ready: its start is measured if its scheduling was seen.
    pub fn ready(&mut self, name: &str, now: Instant) {
        if let Some(at) = self.scheduled.remove(name) {
            if self.measured.len() == STARTS_KEPT {
                self.measured.pop_front();
            }
            self.measured.push_back(now.saturating_duration_since(at));
        }
    }

    /// A server went away before it was Ready: nothing to measure.
    pub fn gone(&mut self, name: &str) {
        self.scheduled.remove(name);
    }

    /// The slowest of the last few measured starts.
    pub fn slowest(&self) -> Option<Duration> {
        self.measured.iter().max().copied()
    }
}

/// How long an unmet request is counted at most: the longest deadline an allocation
/// may ask for ([`gaia_api::allocation::MAX_DEADLINE_MS`]).
pub const WAIT_LIMIT: Duration = Duration::from_millis(gaia_api::allocation::MAX_DEADLINE_MS);

/// Requests that found no free slot and may still be waiting: each unmet request counts
/// until an allocation in its region serves one (oldest first) or [`WAIT_LIMIT`] passes.
/// An estimate: a request that gave up before its deadline still counts until served
/// or timed out.
#[derive(Debug, Clone, Default)]
pub struct Waiting {
    since: VecDeque<Instant>,
}

impl Waiting {
    pub fn unmet(&mut self, now: Instant) {
        self.since.push_back(now);
    }

    pub fn served(&mut self) {
        self.since.pop_front();
    }

    pub fn count(&mut self, now: Instant) -> u32 {
        while self.since.front().is_some_and(|&t| now.saturating_duration_since(t) >= WAIT_LIMIT) {
            self.since.pop_front();
        }
        u32::try_from(self.since.len()).unwrap_or(u32::MAX)
    }

    /// When the oldest waiting request stops counting.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.since.front().map(|&t| t + WAIT_LIMIT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn rate_counts_the_window_only() {
        let t0 = Instant::now();
        let mut m = RateMeter::new(t0);
        assert_eq!(m.rate(t0, secs(10)), 0.0);
        for i in 0..30 {
            m.record(t0 + Duration::from_millis(i * 100)); // 10/s for 3 s
        }
        assert_eq!(m.rate(t0 + secs(2), secs(10)), 3.0, "30 events over a 10 s window");
        assert_eq!(m.rate(t0 + secs(2), secs(1)), 10.0, "the last second alone");
        assert_eq!(m.rate(t0 + secs(12), secs(10)), 0.0, "all aged out");
        assert_eq!(m.rate(t0 + secs(11), secs(10)), 1.0, "only the third second left");
    }

    #[test]
    fn rate_history_is_bounded() {
        let t0 = Instant::now();
        let mut m = RateMeter::new(t0);
        for i in 0..10_000 {
            m.record(t0 + secs(i));
        }
        assert!(m.buckets.len() <= 3601, "{}", m.buckets.len());
        assert_eq!(m.rate(t0 + secs(9_999), secs(3600)), 1.0);
    }

    #[test]
    fn starts_keep_the_slowest_of_the_last_few() {
        let t0 = Instant::now();
        let mut s = StartTimes::default();
        assert_eq!(s.slowest(), None);
        s.ready("never-seen", t0);
        assert_eq!(s.slowest(), None, "a Ready without its scheduling measures nothing");
        s.scheduled("a", t0);
        s.scheduled("b", t0);
        s.ready("a", t0 + secs(8));
        s.gone("b");
        s.ready("b", t0 + secs(60));
        assert_eq!(s.slowest(), Some(secs(8)));
        for i in 0..STARTS_KEPT as u64 {
            let name = format!("n{i}");
            s.scheduled(&name, t0 + secs(100));
            s.ready(&name, t0 + secs(103));
        }
        assert_eq!(s.slowest(), Some(secs(3)), "the 8 s start was pushed out");
    }

    #[test]
    fn waiting_requests_are_served_oldest_first_or_time_out() {
        let t0 = Instant::now();
        let mut w = Waiting::default();
        w.unmet(t0);
        w.unmet(t0 + secs(30));
        assert_eq!(w.count(t0 + secs(31)), 2);
        assert_eq!(w.next_expiry(), Some(t0 + WAIT_LIMIT));
        assert_eq!(w.count(t0 + WAIT_LIMIT), 1, "the first timed out");
        w.served();
        assert_eq!(w.count(t0 + WAIT_LIMIT), 0);
        w.served();
        assert_eq!(w.count(t0 + WAIT_LIMIT), 0, "serving with none waiting is a no-op");
    }
}

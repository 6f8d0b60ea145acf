//! What a run measured, and the Markdown it is shown in.
//!
//! A [`Report`] is plain data compared with `==` (the determinism test does): counts,
//! wait percentiles from an HDR histogram (ms, 3 significant figures), server-hours (the
//! integral of live servers, Scheduled ones included, over the trace) and a time series
//! ([`Sample`]) every `sampleEvery`.

use std::fmt::Write as _;
use std::time::Duration;

use crate::scenario::Scenario;

/// One policy's run over one scenario. Only what happens after the warm-up counts; a
/// request counts where it arrived.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub scenario: String,
    pub policy: String,
    /// Allocation requests that arrived.
    pub requests: u64,
    /// Requests that got a slot (at once or after waiting).
    pub allocated: u64,
    /// Requests that found no slot at once and had to queue (then allocated, failed, or
    /// still waiting at the end).
    pub waited: u64,
    /// Requests whose deadline passed before a slot was free.
    pub failed: u64,
    /// When each failed request arrived (since the trace started), in order.
    pub failed_at: Vec<Duration>,
    /// Requests still waiting when the trace ended.
    pub unfinished: u64,
    /// Wait of the allocated requests (0 for those placed at once), in ms, to the step.
    pub wait_p50_ms: u64,
    pub wait_p99_ms: u64,
    pub wait_max_ms: u64,
    pub server_hours: f64,
    /// The integral of worlds in use: divided by the world capacity, the server-hours
    /// of a perfectly packed fleet with no buffer, which no policy can beat.
    pub world_hours: f64,
    pub peak_servers: u32,
    /// Servers started and stopped, servers drained and worlds they moved.
    pub starts: u64,
    pub stops: u64,
    pub drains: u64,
    pub moves: u64,
    pub samples: Vec<Sample>,
}

/// The fleet at one instant.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Since the trace started.
    pub offset: Duration,
    /// In the scenario's region order.
    pub regions: Vec<RegionSample>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RegionSample {
    /// The trace's arrival rate, allocations per second.
    pub demand: f64,
    /// World slots in use.
    pub used_worlds: u32,
    /// Live servers (Scheduled and Draining included), and their world slots.
    pub servers: u32,
    pub capacity: u32,
    /// The free world slots the policy in force aims for (`status().regions[..].buffer
    /// .target`; a buffer counted in servers is shown as their slots).
    pub buffer_target: u32,
    pub desired: u32,
}

impl Sample {
    /// The regions added up.
    pub fn total(&self) -> RegionSample {
        let mut t = RegionSample { demand: 0.0, used_worlds: 0, servers: 0, capacity: 0, buffer_target: 0, desired: 0 };
        for r in &self.regions {
            t.demand += r.demand;
            t.used_worlds += r.used_worlds;
            t.servers += r.servers;
            t.capacity += r.capacity;
            t.buffer_target += r.buffer_target;
            t.desired += r.desired;
        }
        t
    }
}

/// One static buffer size tried by [`crate::sweep`].
#[derive(Debug, Clone, PartialEq)]
pub struct SweepPoint {
    pub size: u32,
    pub failed: u64,
    pub server_hours: f64,
}

/// What [`crate::sweep`] found: every size tried (ascending, up to the first with no
/// failure), and the report of the smallest size with zero failed allocations, if any.
#[derive(Debug, Clone, PartialEq)]
pub struct Sweep {
    pub tried: Vec<SweepPoint>,
    pub best: Option<(u32, Report)>,
}

/// A scenario's runs: one report per policy, and the sweep when one was asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub scenario: Scenario,
    pub reports: Vec<Report>,
    pub sweep: Option<Sweep>,
}

/// How a policy compares with the smallest static buffer that failed no allocation.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    pub policy: String,
    pub failed: u64,
    pub wait_p99_ms: u64,
    pub server_hours: f64,
    pub buffer_size: u32,
    pub buffer_server_hours: f64,
    /// Server-hours saved against the buffer, in percent (negative: more used).
    pub saved_percent: f64,
}

impl Comparison {
    /// The goal: zero failed allocations, p99 wait under 1 s, and at least 20% fewer
    /// server-hours than the smallest static buffer with zero failures.
    pub fn meets_goal(&self) -> bool {
        self.failed == 0 && self.wait_p99_ms < 1000 && self.saved_percent >= 20.0
    }
}

impl Outcome {
    /// Every policy that is not a static Buffer against the sweep's best buffer.
    pub fn comparisons(&self) -> Vec<Comparison> {
        let Some((size, buffer)) = self.sweep.as_ref().and_then(|s| s.best.as_ref()) else { return Vec::new() };
        self.scenario
            .policies
            .iter()
            .filter(|p| !p.is_buffer())
            .filter_map(|p| self.reports.iter().find(|r| r.policy == p.name))
            .map(|r| Comparison {
                policy: r.policy.clone(),
                failed: r.failed,
                wait_p99_ms: r.wait_p99_ms,
                server_hours: r.server_hours,
                buffer_size: *size,
                buffer_server_hours: buffer.server_hours,
                saved_percent: if buffer.server_hours > 0.0 {
                    (1.0 - r.server_hours / buffer.server_hours) * 100.0
                } else {
                    0.0
                },
            })
            .collect()
    }

    /// The reports, the swept best buffer last when it is not among them.
    pub fn all_reports(&self) -> Vec<&Report> {
        let mut all: Vec<&Report> = self.reports.iter().collect();
        if let Some((_, best)) = self.sweep.as_ref().and_then(|s| s.best.as_ref())
            && !all.iter().any(|r| r.policy == best.policy)
        {
            all.push(best);
        }
        all
    }

    /// A section: the scenario's parameters, the results table, the sweep and the
    /// comparisons.
    pub fn markdown(&self) -> String {
        let s = &self.scenario;
        let mut out = String::new();
        let _ = writeln!(out, "### Scenario `{}`\n", s.name);
        if !s.description.is_empty() {
            let _ = writeln!(out, "{}\n", s.description.trim());
        }
        let regions: Vec<&str> = s.regions.iter().map(|r| r.name.as_str()).collect();
        let _ = writeln!(
            out,
            "{} from {} (warm-up {}), step {}, seed {}, deadline {}, world lifetime exponential with mean {}, \
             server start uniform in [{}, {}], {} worlds per server, regions: {}.\n",
            human(s.duration),
            s.start.to_rfc3339(),
            human(s.warmup),
            human(s.step),
            s.seed,
            human(s.deadline),
            human(s.world_lifetime),
            human(s.server_start.min),
            human(s.server_start.max),
            s.world_capacity,
            regions.join(", "),
        );
        out.push_str(&table(&self.all_reports()));
        let failing: Vec<&Report> = self.all_reports().into_iter().filter(|r| r.failed > 0).collect();
        if !failing.is_empty() {
            out.push('\n');
            for r in failing {
                let _ = writeln!(out, "- `{}`: failed requests arrived at {}.", r.policy, when(&r.failed_at));
            }
        }
        if let Some(sweep) = &self.sweep {
            out.push('\n');
            let tried: Vec<String> = sweep
                .tried
                .iter()
                .map(|p| format!("{}: {} failed, {:.1} server-hours", p.size, p.failed, p.server_hours))
                .collect();
            let _ = writeln!(out, "Static Buffer sweep (free world slots): {}.", tried.join("; "));
            match &sweep.best {
                Some((size, r)) => {
                    let _ = writeln!(
                        out,
                        "Smallest static buffer with zero failed allocations: **{size}** ({:.1} server-hours).",
                        r.server_hours
                    );
                    let floor = r.world_hours / f64::from(s.world_capacity.max(1));
                    let _ = writeln!(
                        out,
                        "Worlds in use over the trace: {:.1} world-hours, so a perfectly packed fleet with no \
                         buffer would use {floor:.1} server-hours: at most {:.1}% fewer than buffer {size}.",
                        r.world_hours,
                        if r.server_hours > 0.0 { (1.0 - floor / r.server_hours) * 100.0 } else { 0.0 },
                    );
                }
                None => {
                    let _ = writeln!(out, "No static buffer tried had zero failed allocations.");
                }
            }
            for c in self.comparisons() {
                let _ = writeln!(
                    out,
                    "- `{}` against buffer {}: {} failed, p99 wait {} ms, {:.1} vs {:.1} server-hours: {:.1}% {} \
                     (goal: 0 failed, p99 < 1 s, >= 20% saved: {}).",
                    c.policy,
                    c.buffer_size,
                    c.failed,
                    c.wait_p99_ms,
                    c.server_hours,
                    c.buffer_server_hours,
                    c.saved_percent.abs(),
                    if c.saved_percent >= 0.0 { "saved" } else { "more" },
                    if c.meets_goal() { "met" } else { "not met" },
                );
            }
        }
        out
    }
}

/// The results table.
pub fn table(reports: &[&Report]) -> String {
    let mut out = String::from(
        "| policy | requests | allocated | waited | failed | p50 wait (ms) | p99 wait (ms) | max wait (ms) | \
         server-hours | peak servers | starts | drains | worlds moved |\n\
         |---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n",
    );
    for r in reports {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {}{} | {} | {} | {} | {:.1} | {} | {} | {} | {} |",
            r.policy,
            r.requests,
            r.allocated,
            r.waited,
            r.failed,
            if r.unfinished > 0 { format!(" (+{} unfinished)", r.unfinished) } else { String::new() },
            r.wait_p50_ms,
            r.wait_p99_ms,
            r.wait_max_ms,
            r.server_hours,
            r.peak_servers,
            r.starts,
            r.drains,
            r.moves,
        );
    }
    out
}

/// `HH:MM:SS` since the trace started; the first and last few when there are many.
fn when(at: &[Duration]) -> String {
    let clock = |d: &Duration| {
        let s = d.as_secs();
        format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    };
    if at.len() <= 8 {
        return at.iter().map(clock).collect::<Vec<_>>().join(", ");
    }
    let head: Vec<String> = at[..4].iter().map(clock).collect();
    let tail: Vec<String> = at[at.len() - 4..].iter().map(clock).collect();
    format!("{}, ... ({} more) ..., {}", head.join(", "), at.len() - 8, tail.join(", "))
}

fn human(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

//! What the raw stack measured ([`Baseline`]), and how a run compares with it: the same
//! four [`Figures`] taken off both, and Gaia's over the raw stack's ([`Ratios`]).

use std::fmt;
use std::time::Duration;

use hdrhistogram::Histogram;

use super::ServerConfig;
use crate::report::{Latency, ms, p99};
use crate::{ErrorTally, ProcessUse};

/// The raw baseline's run: the same measures as the bots' (latencies, frames in the
/// steady phase, the server's CPU and memory), with the raw server in Gaia's place.
#[derive(Debug, Clone)]
pub struct Baseline {
    /// How the raw server was run.
    pub server: ServerConfig,
    /// Connections asked for, and opened.
    pub connections: usize,
    pub connected: u64,
    pub steady: Duration,
    pub interrupted: bool,
    /// Whether every connection was due to send inputs (a rate above 0 and a steady
    /// phase of at least one period).
    pub inputs_expected: bool,
    pub inputs_sent: u64,
    pub replies: u64,
    /// Inputs without a reply by the end.
    pub replies_missing: u64,
    /// Microseconds from sending an input to its reply.
    pub input_latency: Histogram<u64>,
    /// Microseconds from the server's stamp on a tick frame to its arrival (steady phase).
    pub tick_latency: Histogram<u64>,
    /// Frames of every kind (ticks and replies) received in the steady phase.
    pub frames: u64,
    pub connections_with_frames: u64,
    /// The raw server over the steady phase (`None` without `/proc`, or interrupted).
    pub server_use: Option<ProcessUse>,
    /// This process over the raw steady phase.
    pub loadgen_use: Option<ProcessUse>,
    /// Connections that failed or ended early, and why.
    pub errors: ErrorTally,
}

impl Baseline {
    pub fn figures(&self) -> Figures {
        let server = self.server_use.as_ref();
        Figures {
            cpu_us_per_frame: server.filter(|_| self.frames > 0).map(|s| s.cpu_seconds * 1e6 / self.frames as f64),
            tick_p99_us: p99(&self.tick_latency),
            input_p99_us: p99(&self.input_latency),
            bytes_per_connection: server.and_then(|s| s.bytes_per_connection),
        }
    }

    /// Frames per open connection per second of the steady phase.
    pub fn frames_per_connection_s(&self) -> f64 {
        let secs = self.connected as f64 * self.steady.as_secs_f64();
        if secs > 0.0 { self.frames as f64 / secs } else { 0.0 }
    }

    /// Why the baseline is not to be trusted; empty when it is.
    pub fn problems(&self) -> Vec<String> {
        let connections = self.connections as u64;
        let mut problems = Vec::new();
        if self.interrupted {
            problems.push("interrupted".to_string());
        }
        if self.errors.count > 0 {
            problems.push(format!("{} errors", self.errors.count));
        }
        if self.connected < connections {
            problems.push(format!("{}/{connections} connections opened", self.connected));
        }
        if self.connections_with_frames < connections {
            problems.push(format!("{}/{connections} connections received frames", self.connections_with_frames));
        }
        if self.inputs_expected && self.replies == 0 {
            problems.push("no replies".to_string());
        }
        if self.replies_missing > 0 {
            problems.push(format!("{} replies missing", self.replies_missing));
        }
        problems
    }
}

impl fmt::Display for Baseline {
    /// Lines that go into the run's report, each ending in a newline.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let interrupted = if self.interrupted { " (interrupted)" } else { "" };
        writeln!(
            f,
            "baseline      raw tokio-tungstenite: {}/{} connections, groups of {}, a {} B frame at {} Hz, \
             a {} B reply per input; {:.1} s steady{interrupted}",
            self.connected,
            self.connections,
            self.server.group_size,
            self.server.frame_bytes.max(super::wire::MIN_TICK_BYTES),
            self.server.tick_hz,
            super::wire::REPLY_BYTES,
            self.steady.as_secs_f64(),
        )?;
        writeln!(
            f,
            "baseline      inputs {} sent, {} replied, {} missing; input->result ms {}",
            self.inputs_sent,
            self.replies,
            self.replies_missing,
            Latency(&self.input_latency)
        )?;
        writeln!(
            f,
            "baseline      frames {} received in the steady phase ({:.1} per connection per s); tick->client ms {}",
            self.frames,
            self.frames_per_connection_s(),
            Latency(&self.tick_latency)
        )?;
        for process in self.server_use.iter().chain(&self.loadgen_use) {
            writeln!(f, "baseline      process {process}")?;
        }
        if self.errors.count > 0 {
            writeln!(f, "baseline      errors {}", self.errors.count)?;
            for example in &self.errors.examples {
                writeln!(f, "    {example}")?;
            }
        }
        Ok(())
    }
}

/// What the comparison looks at, for one stack in one run.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Figures {
    /// Server CPU time over the steady phase per frame delivered to clients in it, in
    /// microseconds; summed over every server process.
    pub cpu_us_per_frame: Option<f64>,
    pub tick_p99_us: Option<u64>,
    pub input_p99_us: Option<u64>,
    /// Servers' resident memory growth per connection.
    pub bytes_per_connection: Option<f64>,
}

/// Gaia's figures over the raw stack's, measured in the same run: 1.0 is as good as the
/// raw stack, below is better. `None` where either side has no figure.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Ratios {
    pub cpu_per_frame: Option<f64>,
    pub tick_p99: Option<f64>,
    pub input_p99: Option<f64>,
    pub memory_per_connection: Option<f64>,
}

impl Ratios {
    pub fn of(gaia: &Figures, raw: &Figures) -> Self {
        fn ratio(gaia: Option<f64>, raw: Option<f64>) -> Option<f64> {
            let (gaia, raw) = (gaia?, raw?);
            (raw > 0.0).then(|| gaia / raw)
        }
        let us = |v: Option<u64>| v.map(|v| v as f64);
        Self {
            cpu_per_frame: ratio(gaia.cpu_us_per_frame, raw.cpu_us_per_frame),
            tick_p99: ratio(us(gaia.tick_p99_us), us(raw.tick_p99_us)),
            input_p99: ratio(us(gaia.input_p99_us), us(raw.input_p99_us)),
            memory_per_connection: ratio(gaia.bytes_per_connection, raw.bytes_per_connection),
        }
    }
}

/// Gaia's figures beside the raw stack's, and their ratios, on one line.
pub(crate) struct Compared<'a>(pub &'a Figures, pub &'a Figures);

impl fmt::Display for Compared<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (gaia, raw) = (self.0, self.1);
        let ratios = Ratios::of(gaia, raw);
        let item = |name: &str, unit: &str, gaia: Option<f64>, raw: Option<f64>, ratio: Option<f64>| {
            let value = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.2}"));
            let ratio = ratio.map_or_else(|| "-".to_string(), |r| format!("{r:.2}x"));
            format!("{name} {} / {} {unit} = {ratio}", value(gaia), value(raw))
        };
        let ms = |us: Option<u64>| us.map(ms);
        let kib = |bytes: Option<f64>| bytes.map(|b| b / 1024.0);
        write!(
            f,
            "Gaia / raw: {}; {}; {}; {}",
            item(
                "server CPU per delivered frame",
                "µs",
                gaia.cpu_us_per_frame,
                raw.cpu_us_per_frame,
                ratios.cpu_per_frame
            ),
            item("tick->client p99", "ms", ms(gaia.tick_p99_us), ms(raw.tick_p99_us), ratios.tick_p99),
            item("input->result p99", "ms", ms(gaia.input_p99_us), ms(raw.input_p99_us), ratios.input_p99),
            item(
                "memory per connection",
                "KiB",
                kib(gaia.bytes_per_connection),
                kib(raw.bytes_per_connection),
                ratios.memory_per_connection
            ),
        )
    }
}

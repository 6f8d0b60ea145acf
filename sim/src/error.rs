//! What can go wrong: a scenario that does not parse or make sense, a run that broke an
//! invariant, a plot that could not be drawn.

use std::fmt;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("invalid scenario YAML: {0}")]
    Yaml(#[from] serde_norway::Error),
    /// A scenario that parsed but does not make sense; `field` is a path such as
    /// `regions[0].rate[2]` or `policies[1].autoscaler.policy.buffer.maxReplicas`.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("unknown scenario {0:?}: give a built-in name ({names}) or a YAML file", names = crate::BUILT_IN.join(", "))]
    UnknownScenario(String),
    #[error("scenario {scenario:?}, policy {policy:?}: {violation}")]
    Invariant { scenario: String, policy: String, violation: Violation },
    #[error("plot: {0}")]
    Plot(String),
    #[error("a simulation run panicked")]
    Panicked,
}

impl SimError {
    /// Short label, as the other crates' errors have.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Yaml(_) => "yaml",
            Self::Invalid { .. } => "invalid",
            Self::UnknownScenario(_) => "unknown_scenario",
            Self::Invariant { .. } => "invariant",
            Self::Plot(_) => "plot",
            Self::Panicked => "panicked",
        }
    }
}

pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> SimError {
    SimError::Invalid { field: field.into(), message: message.into() }
}

/// A broken invariant: where in the run, which server, what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub step: u64,
    /// Time since the trace started; negative during the warm-up.
    pub at_ms: i64,
    pub server: Option<String>,
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "step {} (t={})", self.step, clock(self.at_ms))?;
        if let Some(server) = &self.server {
            write!(f, ", server {server}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// `-HH:MM:SS.mmm` / `HH:MM:SS.mmm` since the trace started.
pub(crate) fn clock(at_ms: i64) -> String {
    let sign = if at_ms < 0 { "-" } else { "" };
    let d = Duration::from_millis(at_ms.unsigned_abs());
    let s = d.as_secs();
    format!("{sign}{:02}:{:02}:{:02}.{:03}", s / 3600, s / 60 % 60, s % 60, d.subsec_millis())
}

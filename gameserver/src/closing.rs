//! Why the server ends a connection: a close code from the protocol, its reason, and the
//! label it is counted under. Worlds decide some closes (too slow, replaced, moved) and
//! connections others (idle, flooding, malformed); both speak this.

/// Why the server ends a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closing {
    pub code: u16,
    pub reason: String,
    /// Metric label.
    pub label: &'static str,
}

impl Closing {
    pub(crate) fn new(code: u16, label: &'static str, reason: impl Into<String>) -> Self {
        Self { code, reason: reason.into(), label }
    }
}

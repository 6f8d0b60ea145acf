//! What runs a request: one provider per lane.

use crate::request::{Request, Response};

/// Runs requests of the kinds its lane takes. Called concurrently, up to the lane's limit.
#[async_trait::async_trait]
pub trait Provider: Send + Sync + 'static {
    async fn run(&self, request: &Request) -> Result<Response, ProviderError>;
}

/// A failed attempt. `retryable` says whether the same request may succeed later (a
/// connection refused, a 429 or a 5xx) as opposed to never (a 400, a bad key).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ProviderError {
    pub message: String,
    pub retryable: bool,
}

impl ProviderError {
    pub fn retryable(message: impl Into<String>) -> Self {
        Self { message: message.into(), retryable: true }
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        Self { message: message.into(), retryable: false }
    }
}

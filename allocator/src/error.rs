//! The allocator's errors and the one place they become HTTP status codes.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use gaia_api::allocation::{ErrorBody, ErrorDetail};
use gaia_api::fleet::SpecError;
use gaia_registry::RegistryError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    BadRequest { field: Option<String>, message: String },
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("game server {0:?} has no address yet")]
    NoAddress(String),
    #[error("request body too large: {0}")]
    TooLarge(String),
    /// No bearer token, or one that is not valid here (401, with `WWW-Authenticate`).
    #[error("{0}")]
    Unauthorized(&'static str),
    /// No autoscaler manages this fleet here (404).
    #[error("{0}")]
    NoAutoscaler(String),
    /// A valid token that may not act on this game server (403).
    #[error("this token may not act on game server {server:?}")]
    Forbidden { server: String },
    /// No durable store to read the activity log from (404).
    #[error("this control plane has no activity log: give it a database (--database-url, or embedded mode's SQLite)")]
    NoActivityLog,
    /// The activity log's store cannot be reached (503).
    #[error("activity log unavailable: {0}")]
    LogUnavailable(String),
    /// The fleet has no such world placed on a server (404).
    #[error("fleet {fleet:?} has no world {world:?} running")]
    WorldNotRunning { fleet: String, world: String },
    /// Too many long-lived responses (event streams) open at once (503).
    #[error("{0}")]
    Busy(String),
}

impl From<SpecError> for ApiError {
    fn from(e: SpecError) -> Self {
        Self::BadRequest { field: Some(e.field), message: e.message }
    }
}

impl ApiError {
    /// Short label for metrics; also the `code` of the error body.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::BadRequest { .. } | Self::Registry(RegistryError::Invalid(_)) => "bad_request",
            Self::Registry(e) => e.metric_label(),
            Self::NoAddress(_) => "no_address",
            Self::TooLarge(_) => "too_large",
            Self::Unauthorized(_) => "unauthorized",
            Self::Forbidden { .. } => "forbidden",
            Self::NoAutoscaler(_) => "autoscaler_not_found",
            Self::Busy(_) => "unavailable",
            Self::WorldNotRunning { .. } => "world_not_running",
            Self::NoActivityLog => "no_activity_log",
            Self::LogUnavailable(_) => "unavailable",
        }
    }

    pub fn status(&self) -> StatusCode {
        use RegistryError::*;
        match self {
            Self::BadRequest { .. } | Self::Registry(Invalid(_)) => StatusCode::BAD_REQUEST,
            Self::Registry(NotFound(_) | FleetNotFound(_) | WorldNotFound { .. }) => StatusCode::NOT_FOUND,
            Self::Registry(AlreadyExists(_) | Conflict(_) | IllegalTransition(_)) => StatusCode::CONFLICT,
            Self::Registry(NoCapacity(_)) => StatusCode::TOO_MANY_REQUESTS,
            Self::Registry(Unavailable(_)) | Self::NoAddress(_) | Self::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden { .. } => StatusCode::FORBIDDEN,
            Self::NoAutoscaler(_) | Self::WorldNotRunning { .. } | Self::NoActivityLog => StatusCode::NOT_FOUND,
            Self::LogUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl ApiError {
    /// The error body's contents.
    pub fn detail(&self) -> ErrorDetail {
        let field = match self {
            Self::BadRequest { field, .. } => field.clone(),
            Self::Registry(RegistryError::Invalid(e)) => Some(e.field.clone()),
            _ => None,
        };
        ErrorDetail { code: self.metric_label().into(), message: self.to_string(), field }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status(), Json(ErrorBody { error: self.detail() })).into_response();
        if let Self::Unauthorized(_) = self {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

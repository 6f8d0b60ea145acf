//! The allocator's errors and the one place they become HTTP status codes.

use axum::Json;
use axum::http::StatusCode;
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
            Self::BadRequest { .. } => "bad_request",
            Self::Registry(e) => e.metric_label(),
            Self::NoAddress(_) => "no_address",
        }
    }

    pub fn status(&self) -> StatusCode {
        use RegistryError::*;
        match self {
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::Registry(NotFound(_) | FleetNotFound(_) | WorldNotFound { .. }) => StatusCode::NOT_FOUND,
            Self::Registry(AlreadyExists(_) | Conflict(_) | IllegalTransition(_)) => StatusCode::CONFLICT,
            Self::Registry(NoCapacity(_)) => StatusCode::TOO_MANY_REQUESTS,
            Self::Registry(Unavailable(_)) | Self::NoAddress(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let field = match &self {
            Self::BadRequest { field, .. } => field.clone(),
            _ => None,
        };
        let body =
            ErrorBody { error: ErrorDetail { code: self.metric_label().into(), message: self.to_string(), field } };
        (self.status(), Json(body)).into_response()
    }
}

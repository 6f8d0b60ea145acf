//! A JSON body extractor whose errors name the field at fault.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;

use crate::ApiError;

/// Like `axum::Json`, but a bad body is an [`ApiError::BadRequest`] carrying the path of
/// the offending field (`regions[0]`, `selectors[1].matchLabels`), and no content-type is
/// demanded.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::TooLarge(e.body_text())
            } else {
                ApiError::BadRequest { field: None, message: e.body_text() }
            }
        })?;
        let de = &mut serde_json::Deserializer::from_slice(&bytes);
        serde_path_to_error::deserialize(de).map(JsonBody).map_err(bad_json)
    }
}

/// Reads one part of a body already parsed as JSON (a batch's request, so that one that
/// does not fit its type fails alone); the error's field is relative to `value`.
pub fn from_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(bad_json)
}

fn bad_json<E: std::fmt::Display>(e: serde_path_to_error::Error<E>) -> ApiError {
    let path = e.path().to_string();
    let field = (path != ".").then_some(path);
    ApiError::BadRequest { field, message: format!("invalid JSON body: {}", e.into_inner()) }
}

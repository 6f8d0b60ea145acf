//! Path and query extractors whose rejections are the API's error body: axum's own
//! answer a bad path or query string (`%FF`, a repeated parameter) in plain text, which no
//! client of the JSON API expects and the OpenAPI document does not promise.

use axum::extract::path::ErrorKind;
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequestParts, Path, Query};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::ApiError;

/// Like `axum::extract::Path`, but a bad segment is an [`ApiError::BadRequest`] naming
/// the parameter.
pub struct PathParams<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for PathParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(Self(value)),
            Err(e) => Err(ApiError::BadRequest { field: parameter(&e), message: e.body_text() }),
        }
    }
}

fn parameter(e: &PathRejection) -> Option<String> {
    let PathRejection::FailedToDeserializePathParams(e) = e else { return None };
    match e.kind() {
        ErrorKind::InvalidUtf8InPathParam { key }
        | ErrorKind::ParseErrorAtKey { key, .. }
        | ErrorKind::DeserializeError { key, .. } => Some(key.clone()),
        _ => None,
    }
}

/// Like `axum::extract::Query`, but a bad query string is an [`ApiError::BadRequest`].
pub struct QueryParams<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(value)) => Ok(Self(value)),
            Err(e) => Err(ApiError::BadRequest { field: None, message: e.body_text() }),
        }
    }
}

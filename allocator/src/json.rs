//! A JSON body extractor whose errors name the field at fault.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::ApiError;

/// Like `axum::Json`, but a bad body is an [`ApiError::BadRequest`] carrying the path of
/// the offending field (`regions[0]`, `selectors[1].matchLabels`), no content-type is
/// demanded, and objects must be objects (see [`objects_stay_objects`]).
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned + Serialize, S: Send + Sync> FromRequest<S> for JsonBody<T> {
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
        let parsed: T = serde_path_to_error::deserialize(&mut *de).map_err(bad_json)?;
        // Nothing but whitespace after the value.
        de.end().map_err(|e| bad_request(None, e))?;
        let input: Value = serde_json::from_slice(&bytes).map_err(|e| bad_request(None, e))?;
        objects_stay_objects(&input, &parsed)?;
        Ok(JsonBody(parsed))
    }
}

/// Reads one part of a body already parsed as JSON (a batch's request, so that one that
/// does not fit its type fails alone); the error's field is relative to `value`.
pub fn from_value<T: DeserializeOwned + Serialize>(value: &Value) -> Result<T, ApiError> {
    let parsed: T = serde_path_to_error::deserialize(value).map_err(bad_json)?;
    objects_stay_objects(value, &parsed)?;
    Ok(parsed)
}

fn bad_json<E: std::fmt::Display>(e: serde_path_to_error::Error<E>) -> ApiError {
    let path = e.path().to_string();
    bad_request((path != ".").then_some(path), e.into_inner())
}

fn bad_request(field: Option<String>, e: impl std::fmt::Display) -> ApiError {
    ApiError::BadRequest { field, message: format!("invalid JSON body: {e}") }
}

/// serde reads a struct from a JSON array too, its fields in order (`["town"]` would be
/// a request for fleet `town`, `"metadata": []` empty metadata). The API's objects are
/// objects, as its OpenAPI document says: wherever `parsed` has an object (serialized
/// again) and the body had an array, the body is refused, naming the place.
fn objects_stay_objects<T: Serialize>(input: &Value, parsed: &T) -> Result<(), ApiError> {
    let Ok(parsed) = serde_json::to_value(parsed) else { return Ok(()) };
    match struct_from_array(input, &parsed, String::new()) {
        None => Ok(()),
        Some(path) => {
            let field = (!path.is_empty()).then_some(path);
            Err(bad_request(field, "invalid type: sequence, expected an object"))
        }
    }
}

/// The path (in `serde_path_to_error`'s notation) of the first array in `input` that is
/// an object in `parsed`.
fn struct_from_array(input: &Value, parsed: &Value, path: String) -> Option<String> {
    match (input, parsed) {
        (Value::Array(_), Value::Object(_)) => Some(path),
        (Value::Array(input), Value::Array(parsed)) => input
            .iter()
            .zip(parsed)
            .enumerate()
            .find_map(|(i, (input, parsed))| struct_from_array(input, parsed, format!("{path}[{i}]"))),
        (Value::Object(input), Value::Object(parsed)) => input.iter().find_map(|(key, input)| {
            let parsed = parsed.get(key)?;
            let path = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
            struct_from_array(input, parsed, path)
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use gaia_api::allocation::AllocationRequest;
    use serde_json::json;

    use super::*;

    fn field(body: Value) -> Option<Option<String>> {
        match from_value::<AllocationRequest>(&body) {
            Ok(_) => None,
            Err(ApiError::BadRequest { field, .. }) => Some(field),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn structs_are_read_from_objects_only() {
        assert_eq!(field(json!({"fleet": "town", "selectors": [{}], "metadata": {}})), None);
        assert_eq!(field(json!(["town"])), Some(None));
        assert_eq!(field(json!({"fleet": "town", "metadata": []})), Some(Some("metadata".into())));
        assert_eq!(field(json!({"fleet": "town", "selectors": [{}, []]})), Some(Some("selectors[1]".into())));
        let expressions = json!({"fleet": "town", "selectors": [{"matchExpressions": [["k", "Exists"]]}]});
        assert_eq!(field(expressions), Some(Some("selectors[0].matchExpressions[0]".into())));
        assert_eq!(field(json!({"fleet": "town", "priorities": [["worlds"]]})), Some(Some("priorities[0]".into())));
    }

    #[tokio::test]
    async fn a_body_is_one_json_value() {
        let body = |text: &'static str| axum::http::Request::new(axum::body::Body::from(text));
        let read = |text| async move { JsonBody::<AllocationRequest>::from_request(body(text), &()).await.map(|_| ()) };
        assert!(read(r#"{"fleet":"town"} "#).await.is_ok());
        for text in [r#"{"fleet":"town"} x"#, r#"{"fleet":"town"}{}"#, r#"["town"]"#] {
            assert!(matches!(read(text).await, Err(ApiError::BadRequest { .. })), "{text}");
        }
    }
}

//! `/metrics`, as every Gaia Fleet process answers it: the process's Prometheus registry in
//! the OpenMetrics text format, with its content type (Prometheus reads exemplars and
//! `_created` series only when told the format).

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::registry::Registry;

pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The registry's samples now; 500 with the reason if one does not encode.
pub fn metrics(registry: &Registry) -> Response {
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, registry) {
        Ok(()) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::counter::Counter;

    use super::*;

    #[tokio::test]
    async fn samples_in_openmetrics_text() {
        let mut registry = Registry::default();
        let counter = Counter::<u64>::default();
        registry.register("things", "Things", counter.clone());
        counter.inc();
        let response = metrics(&registry);
        assert_eq!(response.headers()[header::CONTENT_TYPE], CONTENT_TYPE);
        let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap_or_default();
        let text = String::from_utf8_lossy(&body);
        assert!(text.contains("things_total 1") && text.ends_with("# EOF\n"), "{text}");
    }
}

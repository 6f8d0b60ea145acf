//! An allocator on the in-memory registry, called through `router()` with `oneshot`.
#![allow(dead_code)] // each test crate uses a part of this module

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use gaia_allocator::{AppState, Config, Metrics, router};
use gaia_api::allocation::ErrorBody;
use gaia_registry::{MemoryRegistry, Registry};
use serde_json::{Value, json};
use tower::ServiceExt;

pub const SECRET: &str = "test-secret";

pub struct App {
    pub router: axum::Router,
    pub registry: Arc<dyn Registry>,
    pub state: AppState,
}

impl App {
    pub fn new() -> Self {
        Self::with_config(Config { join_secret: SECRET.into(), ..Default::default() })
    }

    pub fn with_config(config: Config) -> Self {
        let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new(Default::default()));
        let mut prom = prometheus_client::registry::Registry::default();
        let metrics = Metrics::new(&mut prom);
        let state = AppState::new(&config, Arc::clone(&registry), metrics, Arc::new(prom));
        Self { router: router(state.clone()), registry, state }
    }

    pub async fn register(&self, name: &str, region: &str, worlds: u32) {
        register(&self.router, name, region, worlds).await;
    }

    pub async fn ready(&self, name: &str, region: &str, worlds: u32) {
        ready_server(&self.router, name, region, worlds).await;
    }

    pub async fn metrics(&self) -> String {
        let (status, v) = call(&self.router, Method::GET, "/metrics", "").await;
        assert_eq!(status, StatusCode::OK);
        v.as_str().unwrap().to_string()
    }
}

/// Registers a server of fleet `town` through the SDK endpoint; it stays Scheduled.
pub async fn register(app: &axum::Router, name: &str, region: &str, worlds: u32) {
    let body = json!({"fleet":"town","region":region,"address":format!("ws://127.0.0.1:9/{name}"),
        "worldCapacity":worlds,"playerCapacity":100})
    .to_string();
    let (status, v) = call(app, Method::POST, &format!("/v1/gameservers/{name}/register"), &body).await;
    assert_eq!(status, StatusCode::OK, "{v}");
}

/// Registers and readies a server through the SDK endpoints.
pub async fn ready_server(app: &axum::Router, name: &str, region: &str, worlds: u32) {
    register(app, name, region, worlds).await;
    let (status, v) = call(app, Method::POST, &format!("/v1/gameservers/{name}/ready"), "").await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["state"], "Ready");
}

pub async fn call(app: &axum::Router, method: Method, uri: &str, body: &str) -> (StatusCode, Value) {
    let req = Request::builder().method(method).uri(uri).body(Body::from(body.to_string())).unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()))
    };
    (status, value)
}

pub fn error(v: &Value) -> ErrorBody {
    serde_json::from_value(v.clone()).unwrap()
}

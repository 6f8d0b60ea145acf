//! `GET /v1/events`: the snapshot first, then what changed (records, worlds, autoscaler
//! statuses, stats), under the matchmaker's token, with a bounded number of streams.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use axum::body::{Body, BodyDataStream};
use axum::http::{Method, Request, StatusCode};
use futures_util::StreamExt;
use gaia_allocator::Config;
use gaia_api::autoscaler::{BufferStatus, FleetAutoscalerStatus, PolicyInputs, RegionAutoscalerStatus};
use serde_json::{Value, json};
use tower::ServiceExt;

use common::{App, SECRET, call};

/// The events of one stream, parsed.
struct Events {
    body: BodyDataStream,
    buf: String,
}

impl Events {
    async fn open(router: &axum::Router, token: Option<&str>) -> Result<Self, (StatusCode, Value)> {
        let mut req = Request::builder().uri("/v1/events");
        if let Some(token) = token {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        let resp = router.clone().oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
        if resp.status() != StatusCode::OK {
            let status = resp.status();
            let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
            return Err((status, serde_json::from_slice(&bytes).unwrap()));
        }
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        Ok(Self { body: resp.into_body().into_data_stream(), buf: String::new() })
    }

    /// The next event, `(name, data)`; keep-alive comments are skipped.
    async fn next(&mut self) -> (String, Value) {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let (mut name, mut data) = (String::new(), String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        name = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if name.is_empty() {
                    continue;
                }
                return (name, serde_json::from_str(&data).unwrap());
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), self.body.next())
                .await
                .expect("an event within 10 s")
                .expect("the stream goes on")
                .unwrap();
            self.buf.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// Skips events until one named `name` whose data `accept`s.
    async fn until(&mut self, name: &str, accept: impl Fn(&Value) -> bool) -> Value {
        loop {
            let (got, data) = self.next().await;
            if got == name && accept(&data) {
                return data;
            }
        }
    }
}

fn status(fleet: &str, desired: u32) -> FleetAutoscalerStatus {
    FleetAutoscalerStatus {
        fleet: fleet.into(),
        updated_at_ms: 1,
        regions: vec![RegionAutoscalerStatus {
            region: "eu".into(),
            policy: "Buffer".into(),
            desired_replicas: desired,
            current_replicas: 1,
            buffer: BufferStatus { unit: Default::default(), target: 2, free: 1 },
            inputs: PolicyInputs {
                used_worlds: 1,
                world_capacity: 2,
                busy_servers: 1,
                waiting_requests: 0,
                allocation_rate: 0.0,
                server_start_seconds: 1.0,
                start_measured: false,
                webhook: None,
            },
            decisions: Vec::new(),
        }],
    }
}

#[tokio::test(start_paused = true)]
async fn the_snapshot_comes_first_then_each_change() {
    let app = App::new();
    let (tx, rx) = tokio::sync::watch::channel([("town".to_string(), status("town", 1))].into_iter().collect());
    let router = gaia_allocator::router(app.state.clone().with_autoscaler_status(rx));
    app.ready("s1", "eu", 2).await;
    app.ready("s2", "us", 2).await;
    let (code, placed) =
        call(&router, Method::POST, "/v1/allocations", r#"{"fleet":"town","worldId":"w1","regions":["eu"]}"#).await;
    assert_eq!(code, StatusCode::OK, "{placed}");

    let mut events = Events::open(&router, None).await.unwrap();
    let (name, snapshot) = events.next().await;
    assert_eq!(name, "snapshot");
    let servers: Vec<(&str, &str, u64)> = snapshot["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["state"].as_str().unwrap(), s["worlds"].as_u64().unwrap()))
        .collect();
    assert_eq!(servers, [("s1", "Allocated", 1), ("s2", "Ready", 0)]);
    assert_eq!(snapshot["worlds"], json!([{"worldId": "w1", "server": "s1"}]));
    assert_eq!(snapshot["autoscalers"][0]["fleet"], "town");
    assert_eq!(snapshot["stats"]["allocationsPerSecond"], json!({"eu": 0.0, "us": 0.0}));

    // A new world: its server's record and the world list.
    call(&router, Method::POST, "/v1/allocations", r#"{"fleet":"town","worldId":"w2","regions":["us"]}"#).await;
    let s2 = events.until("server", |s| s["name"] == "s2").await;
    assert_eq!((s2["state"].as_str(), s2["worlds"].as_u64()), (Some("Allocated"), Some(1)));
    let worlds = events.until("worlds", |_| true).await;
    assert_eq!(worlds, json!([{"worldId": "w1", "server": "s1"}, {"worldId": "w2", "server": "s2"}]));

    // Allocations per second, by region, over the last seconds.
    let stats = events.until("stats", |s| s["allocationsPerSecond"]["us"].as_f64() > Some(0.0)).await;
    assert_eq!(stats["allocationsPerSecond"]["eu"], 0.0, "w1 was allocated before the stream began: {stats}");

    // A drain, a world moved, a record removed.
    let (code, _) = call(&router, Method::POST, "/v1/gameservers/s1/drain", "").await;
    assert_eq!(code, StatusCode::OK);
    events.until("server", |s| s["name"] == "s1" && s["state"] == "Draining").await;
    call(&router, Method::POST, "/v1/gameservers/s1/worlds/w1/move", "").await;
    let worlds = events.until("worlds", |_| true).await;
    assert_eq!(worlds, json!([{"worldId": "w1", "server": "s2"}, {"worldId": "w2", "server": "s2"}]));
    call(&router, Method::POST, "/v1/gameservers/s1/shutdown", "").await;
    app.registry.remove("s1").await.unwrap();
    assert_eq!(events.until("serverRemoved", |_| true).await, json!({"name": "s1"}));

    // Player counts have no registry event: they show with the next stats tick.
    app.registry.set_players("s2", 7).await.unwrap();
    events.until("server", |s| s["name"] == "s2" && s["players"] == 7).await;

    // The autoscaler's status, when it changes.
    tx.send_modify(|statuses| {
        statuses.insert("town".into(), status("town", 3));
    });
    let explained = events.until("autoscaler", |_| true).await;
    assert_eq!(explained["regions"][0]["desiredReplicas"], 3);
}

#[tokio::test]
async fn events_need_a_matchmaker_token_when_there_are_some() {
    let app = App::with_config(Config {
        join_secret: SECRET.into(),
        matchmaker_tokens: vec!["mm".into()],
        ..Default::default()
    });
    let (code, body) = Events::open(&app.router, None).await.err().unwrap();
    assert_eq!((code, body["error"]["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("unauthorized")));
    let (code, _) = Events::open(&app.router, Some("wrong")).await.err().unwrap();
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    let mut events = Events::open(&app.router, Some("mm")).await.unwrap();
    assert_eq!(events.next().await.0, "snapshot");
}

#[tokio::test]
async fn streams_are_bounded() {
    let app = App::new();
    let mut open = Vec::new();
    for _ in 0..gaia_allocator::events::MAX_STREAMS {
        open.push(Events::open(&app.router, None).await.unwrap());
    }
    let (code, body) = Events::open(&app.router, None).await.err().unwrap();
    assert_eq!((code, body["error"]["code"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("unavailable")));
    // A stream closed gives its permit back.
    open.pop();
    let mut events = Events::open(&app.router, None).await.unwrap();
    assert_eq!(events.next().await.0, "snapshot");
}

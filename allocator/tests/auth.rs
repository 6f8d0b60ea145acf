//! Bearer tokens on the control-plane API (`router()` with `oneshot`), and HTTPS on a
//! real socket with a self-signed certificate.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use gaia_allocator::{AppState, Config, Metrics, TlsError, TlsFiles, router};
use gaia_api::allocation::ErrorBody;
use gaia_api::token::TokenKey;
use gaia_registry::{MemoryRegistry, Registry};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

const SDK_SECRET: &str = "sdk-secret";

fn config(matchmaker_tokens: &[&str], sdk_secret: Option<&str>) -> Config {
    Config {
        join_secret: "join-secret".into(),
        matchmaker_tokens: matchmaker_tokens.iter().map(|t| t.to_string()).collect(),
        sdk_secret: sdk_secret.map(String::from),
        ..Default::default()
    }
}

fn state(config: &Config) -> AppState {
    let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new(Default::default()));
    let mut prom = prometheus_client::registry::Registry::default();
    let metrics = Metrics::new(&mut prom);
    AppState::new(config, registry, metrics, Arc::new(prom))
}

fn sdk_token(server: &str) -> String {
    TokenKey::new(SDK_SECRET).sdk_token(server)
}

struct Answer {
    status: StatusCode,
    body: Value,
    www_authenticate: Option<String>,
}

impl Answer {
    /// The error body's code and message.
    fn error(&self) -> (String, String) {
        let body: ErrorBody = serde_json::from_value(self.body.clone()).unwrap();
        (body.error.code, body.error.message)
    }
}

async fn call(app: &axum::Router, method: Method, uri: &str, token: Option<&str>, body: &str) -> Answer {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(token) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let resp = app.clone().oneshot(req.body(Body::from(body.to_string())).unwrap()).await.unwrap();
    let status = resp.status();
    let www_authenticate = resp.headers().get(header::WWW_AUTHENTICATE).map(|v| v.to_str().unwrap().to_string());
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()));
    Answer { status, body, www_authenticate }
}

fn register_body(name: &str) -> String {
    json!({"fleet":"town","region":"eu","address":format!("ws://127.0.0.1:9/{name}"),
        "worldCapacity":4,"playerCapacity":100})
    .to_string()
}

/// Registers and readies `name` through the SDK endpoints, with its own token.
async fn ready_server(app: &axum::Router, name: &str, token: Option<&str>) {
    let a = call(app, Method::POST, &format!("/v1/gameservers/{name}/register"), token, &register_body(name)).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let a = call(app, Method::POST, &format!("/v1/gameservers/{name}/ready"), token, "").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
}

#[tokio::test]
async fn matchmakers_need_one_of_the_configured_tokens() {
    let app = router(state(&config(&["mm-1", "mm-2"], Some(SDK_SECRET))));
    ready_server(&app, "gs-1", Some(&sdk_token("gs-1"))).await;
    let allocate = r#"{"fleet":"town"}"#;

    let missing = call(&app, Method::POST, "/v1/allocations", None, allocate).await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert_eq!(missing.error(), ("unauthorized".into(), "missing bearer token".into()));
    assert_eq!(missing.www_authenticate.as_deref(), Some("Bearer"));

    for wrong in ["mm-3", "mm-1x", "mm-", &sdk_token("gs-1")] {
        let a = call(&app, Method::POST, "/v1/allocations", Some(wrong), allocate).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{wrong}");
        assert_eq!(a.error(), ("unauthorized".into(), "bad token".into()));
        assert_eq!(a.www_authenticate.as_deref(), Some("Bearer"));
    }
    // Not a bearer token at all.
    let req = Request::builder()
        .method(Method::POST)
        .uri("/v1/allocations")
        .header(header::AUTHORIZATION, "Basic bW0tMTo=")
        .body(Body::from(allocate))
        .unwrap();
    assert_eq!(app.clone().oneshot(req).await.unwrap().status(), StatusCode::UNAUTHORIZED);

    for token in ["mm-1", "mm-2"] {
        let a = call(&app, Method::POST, "/v1/allocations", Some(token), allocate).await;
        assert_eq!(a.status, StatusCode::OK, "{token}: {}", a.body);
    }
    // The batch form and the fleet reads are a matchmaker's too.
    let a = call(&app, Method::POST, "/v1/allocations:batch", None, r#"{"requests":[]}"#).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let a = call(&app, Method::GET, "/v1/gameservers?fleet=town", None, "").await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let a = call(&app, Method::GET, "/v1/gameservers?fleet=town", Some("mm-2"), "").await;
    assert_eq!((a.status, a.body.as_array().map(Vec::len)), (StatusCode::OK, Some(1)));
    let a = call(&app, Method::GET, "/v1/gameservers/gs-1", None, "").await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let a = call(&app, Method::GET, "/v1/gameservers/gs-1", Some("mm-1"), "").await;
    assert_eq!((a.status, &a.body["name"]), (StatusCode::OK, &json!("gs-1")));

    // The operational endpoints stay open.
    for path in ["/livez", "/readyz", "/metrics"] {
        assert_eq!(call(&app, Method::GET, path, None, "").await.status, StatusCode::OK, "{path}");
    }
}

#[tokio::test]
async fn without_tokens_or_secret_everything_is_open() {
    let app = router(state(&config(&[], None)));
    ready_server(&app, "gs-1", None).await;
    let a = call(&app, Method::POST, "/v1/allocations", None, r#"{"fleet":"town"}"#).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(call(&app, Method::GET, "/v1/gameservers", None, "").await.status, StatusCode::OK);
    // A token nobody asked for does no harm.
    let a = call(&app, Method::POST, "/v1/gameservers/gs-1/health", Some("whatever"), "").await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);

    // Matchmaker tokens alone leave the SDK open, and the other way round.
    let app = router(state(&config(&["mm"], None)));
    ready_server(&app, "gs-1", None).await;
    let app = router(state(&config(&[], Some(SDK_SECRET))));
    ready_server(&app, "gs-1", Some(&sdk_token("gs-1"))).await;
    let a = call(&app, Method::POST, "/v1/allocations", None, r#"{"fleet":"town"}"#).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
}

#[tokio::test]
async fn a_game_server_may_change_only_its_own_record() {
    let state = state(&config(&["mm"], Some(SDK_SECRET)));
    let app = router(state.clone());
    let (own, other) = (sdk_token("gs-1"), sdk_token("gs-2"));
    ready_server(&app, "gs-2", Some(&other)).await;

    let register = register_body("gs-1");
    let a = call(&app, Method::POST, "/v1/gameservers/gs-1/register", None, &register).await;
    assert_eq!((a.status, a.error().1.as_str()), (StatusCode::UNAUTHORIZED, "missing bearer token"));
    assert_eq!(a.www_authenticate.as_deref(), Some("Bearer"));
    let a = call(&app, Method::POST, "/v1/gameservers/gs-1/register", Some("mm"), &register).await;
    assert_eq!((a.status, a.error().1.as_str()), (StatusCode::UNAUTHORIZED, "bad token"));
    let forged = TokenKey::new("a-guess").sdk_token("gs-1");
    let a = call(&app, Method::POST, "/v1/gameservers/gs-1/register", Some(&forged), &register).await;
    assert_eq!((a.status, a.error().1.as_str()), (StatusCode::UNAUTHORIZED, "bad token"));

    let a = call(&app, Method::POST, "/v1/gameservers/gs-1/register", Some(&other), &register).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert_eq!(a.error(), ("forbidden".into(), r#"this token may not act on game server "gs-1""#.into()));
    assert_eq!(a.www_authenticate, None);
    ready_server(&app, "gs-1", Some(&own)).await;

    // Every SDK call, on either server, with no token, another's, and its own.
    let calls = [
        (Method::POST, "ready", ""),
        (Method::POST, "health", ""),
        (Method::PUT, "labels", r#"{"key":"mode","value":"casual"}"#),
        (Method::PUT, "players", r#"{"players":3}"#),
        (Method::POST, "worlds/w-1/ended", ""),
        (Method::POST, "worlds/w-1/started", r#"{"epoch":1}"#),
        (Method::POST, "worlds/w-1/move", ""),
        (Method::POST, "reserve", ""),
        (Method::POST, "allocate", ""),
        (Method::POST, "drain", ""),
        (Method::POST, "shutdown", ""),
        (Method::GET, "watch", ""),
    ];
    for (method, call_path, body) in calls {
        let uri = format!("/v1/gameservers/gs-1/{call_path}");
        let a = call(&app, method.clone(), &uri, None, body).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{uri} without a token");
        let a = call(&app, method.clone(), &uri, Some(&other), body).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{uri} with gs-2's token");
        let a = call(&app, method.clone(), &uri, Some(&own), body).await;
        assert!(
            ![StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN].contains(&a.status),
            "{uri} with its own token: {} {}",
            a.status,
            a.body
        );
    }
    // A percent-encoded name is the same name.
    let a = call(&app, Method::POST, "/v1/gameservers/gs%2D2/health", Some(&own), "").await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);

    // A server reads its own record (the SDK's get), not another's.
    assert_eq!(call(&app, Method::GET, "/v1/gameservers/gs-1", Some(&own), "").await.status, StatusCode::OK);
    assert_eq!(call(&app, Method::GET, "/v1/gameservers/gs-2", Some(&own), "").await.status, StatusCode::FORBIDDEN);
    assert_eq!(call(&app, Method::GET, "/v1/gameservers", Some(&own), "").await.status, StatusCode::UNAUTHORIZED);

    let metrics = call(&app, Method::GET, "/metrics", None, "").await.body.as_str().unwrap().to_string();
    for line in [
        r#"gaia_allocator_sdk_calls_total{call="register",result="unauthorized"} 3"#,
        r#"gaia_allocator_sdk_calls_total{call="register",result="forbidden"} 1"#,
        r#"gaia_allocator_sdk_calls_total{call="watch",result="forbidden"} 1"#,
        r#"gaia_allocator_refused_requests_total{endpoint="sdk",result="forbidden"} 14"#,
        r#"gaia_allocator_refused_requests_total{endpoint="matchmaker",result="forbidden"} 1"#,
        r#"gaia_allocator_refused_requests_total{endpoint="matchmaker",result="unauthorized"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
}

/// An operator drains a server with a matchmaker token (the web console does); the server
/// itself still may, with its own token; nobody else.
#[tokio::test]
async fn operators_drain_with_a_matchmaker_token() {
    let app = router(state(&config(&["mm"], Some(SDK_SECRET))));
    for name in ["gs-1", "gs-2", "gs-3"] {
        ready_server(&app, name, Some(&sdk_token(name))).await;
    }
    let drain = |name: &str| format!("/v1/gameservers/{name}/drain");
    for (token, status, code) in [
        (None, StatusCode::UNAUTHORIZED, "unauthorized"),
        (Some("wrong"), StatusCode::UNAUTHORIZED, "unauthorized"),
        (Some(sdk_token("gs-2").as_str()), StatusCode::FORBIDDEN, "forbidden"),
    ] {
        let a = call(&app, Method::POST, &drain("gs-1"), token, "").await;
        assert_eq!((a.status, a.error().0.as_str()), (status, code), "{token:?}");
    }
    let a = call(&app, Method::GET, "/v1/gameservers/gs-1", Some("mm"), "").await;
    assert_eq!(a.body["state"], "Ready", "refused drains changed nothing");

    let a = call(&app, Method::POST, &drain("gs-1"), Some("mm"), "").await;
    assert_eq!((a.status, a.body["state"].as_str()), (StatusCode::OK, Some("Draining")), "{}", a.body);
    let a = call(&app, Method::POST, &drain("gs-2"), Some(&sdk_token("gs-2")), "").await;
    assert_eq!((a.status, a.body["state"].as_str()), (StatusCode::OK, Some("Draining")), "{}", a.body);
    // A matchmaker token drives nothing else of a server's.
    let a = call(&app, Method::POST, "/v1/gameservers/gs-3/shutdown", Some("mm"), "").await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let a = call(&app, Method::POST, &drain("nobody"), Some("mm"), "").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);

    // No matchmaker token configured: drains are open, as allocations are.
    let open = router(state(&config(&[], Some(SDK_SECRET))));
    ready_server(&open, "gs-1", Some(&sdk_token("gs-1"))).await;
    let a = call(&open, Method::POST, &drain("gs-1"), None, "").await;
    assert_eq!((a.status, a.body["state"].as_str()), (StatusCode::OK, Some("Draining")), "{}", a.body);
}

#[tokio::test]
async fn the_watch_stream_needs_the_server_s_token() {
    let app = router(state(&config(&[], Some(SDK_SECRET))));
    let own = sdk_token("gs-1");
    ready_server(&app, "gs-1", Some(&own)).await;
    let a = call(&app, Method::GET, "/v1/gameservers/gs-1/watch", None, "").await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let a = call(&app, Method::GET, "/v1/gameservers/gs-1/watch", Some(&sdk_token("gs-2")), "").await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);

    let req = Request::builder()
        .uri("/v1/gameservers/gs-1/watch")
        .header(header::AUTHORIZATION, format!("Bearer {own}"))
        .body(Body::empty())
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body().into_data_stream();
    let first = tokio::time::timeout(Duration::from_secs(5), futures_util::StreamExt::next(&mut body))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let record: Value = serde_json::from_slice(&first).unwrap();
    assert_eq!((&record["name"], &record["state"]), (&json!("gs-1"), &json!("Ready")));
}

/// A self-signed certificate for 127.0.0.1 and localhost, and its key, as PEM files in a
/// fresh directory.
struct Certificate {
    dir: std::path::PathBuf,
    files: TlsFiles,
    pem: String,
}

impl Certificate {
    fn new() -> Self {
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
        let dir = std::env::temp_dir().join(format!("gaia-tls-{}-{}", std::process::id(), rand_suffix()));
        std::fs::create_dir_all(&dir).unwrap();
        let files = TlsFiles { cert: dir.join("cert.pem"), key: dir.join("key.pem") };
        std::fs::write(&files.cert, cert.pem()).unwrap();
        std::fs::write(&files.key, signing_key.serialize_pem()).unwrap();
        Self { dir, files, pem: cert.pem() }
    }
}

impl Drop for Certificate {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
}

#[tokio::test]
async fn https_only_with_a_certificate() {
    let certificate = Certificate::new();
    let tls = certificate.files.load().unwrap();
    let state = state(&config(&["mm"], Some(SDK_SECRET))).with_tls(tls);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let api = tokio::spawn(gaia_allocator::run(listener, state, shutdown.clone()));

    let root = reqwest::Certificate::from_pem(certificate.pem.as_bytes()).unwrap();
    let https = reqwest::Client::builder().add_root_certificate(root).build().unwrap();
    let base = format!("https://{addr}");
    let livez = https.get(format!("{base}/livez")).send().await.unwrap();
    assert_eq!((livez.status(), livez.text().await.unwrap().as_str()), (reqwest::StatusCode::OK, "ok"));

    for (call, body) in [("register", Some(register_body("gs-1"))), ("ready", None)] {
        let req = https.post(format!("{base}/v1/gameservers/gs-1/{call}")).bearer_auth(sdk_token("gs-1"));
        let resp = req.body(body.unwrap_or_default()).send().await.unwrap();
        assert!(resp.status().is_success(), "{call}: {}", resp.status());
    }
    let allocation = https.post(format!("{base}/v1/allocations")).json(&json!({"fleet": "town"}));
    let resp = allocation.try_clone().unwrap().send().await.unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::UNAUTHORIZED);
    let resp = allocation.bearer_auth("mm").send().await.unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::OK);
    let answer: Value = resp.json().await.unwrap();
    assert_eq!(answer["server"], "gs-1");

    // HTTPS only: plain HTTP gets no answer, and a client that does not trust the
    // certificate refuses it.
    let plain = reqwest::Client::new().get(format!("http://{addr}/livez")).send().await;
    assert!(plain.is_err(), "{plain:?}");
    let untrusting = reqwest::Client::new().get(format!("{base}/livez")).send().await;
    assert!(untrusting.is_err(), "{untrusting:?}");
    // A client that connects and never says hello does not hold up others.
    let _silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    assert!(https.get(format!("{base}/livez")).send().await.unwrap().status().is_success());

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), api).await.unwrap().unwrap().unwrap();
}

#[test]
fn bad_tls_files_name_the_file() {
    let certificate = Certificate::new();
    let other = Certificate::new();
    let missing = certificate.dir.join("missing.pem");
    let garbage = certificate.dir.join("garbage.pem");
    std::fs::write(&garbage, "not a PEM file\n").unwrap();

    let cases = [
        (TlsFiles { cert: missing.clone(), ..certificate.files.clone() }, "TLS certificate", &missing),
        (TlsFiles { cert: garbage.clone(), ..certificate.files.clone() }, "TLS certificate", &garbage),
        (TlsFiles { key: missing.clone(), ..certificate.files.clone() }, "TLS private key", &missing),
        (TlsFiles { key: garbage.clone(), ..certificate.files.clone() }, "TLS private key", &garbage),
        // The key of another certificate.
        (TlsFiles { key: other.files.key.clone(), ..certificate.files.clone() }, "TLS certificate", &other.files.key),
    ];
    for (files, what, path) in cases {
        let err = files.load().unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with(what) && text.contains(&path.display().to_string()), "{files:?}: {text}");
    }
    assert!(matches!(
        TlsFiles { key: other.files.key.clone(), ..certificate.files.clone() }.load(),
        Err(TlsError::Config { .. })
    ));
}

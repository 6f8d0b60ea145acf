#![allow(clippy::unwrap_used)]
//! The webhook client against a small axum server shaped like Agones' example webhook
//! (`examples/autoscaler-webhook`): it reads `request.status` and answers `scale` and
//! `replicas`, copying the uid. Other routes misbehave in one way each.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::post;
use base64::Engine;
use gaia_api::autoscaler::{
    FleetAutoscaleRequest, FleetAutoscaleResponse, FleetAutoscaleReview, FleetStatus, WebhookPolicy,
};
use gaia_fleet_autoscaler::{WebhookError, Webhooks};
use serde_json::{Value, json};

/// The bodies the server received, as JSON.
type Received = Arc<Mutex<Vec<Value>>>;

/// Agones' example: double when more than 70% of the replicas are allocated, halve (down
/// to 2) when fewer than 30% are, else leave the fleet alone.
fn agones_example(request: &FleetAutoscaleRequest) -> FleetAutoscaleResponse {
    let status = &request.status;
    let mut response = FleetAutoscaleResponse { uid: request.uid.clone(), scale: false, replicas: 0 };
    if status.replicas > 0 {
        let allocated = f64::from(status.allocated_replicas) / f64::from(status.replicas);
        if allocated > 0.7 {
            (response.scale, response.replicas) = (true, i64::from(status.replicas) * 2);
        } else if allocated < 0.3 && status.replicas > 2 {
            (response.scale, response.replicas) = (true, i64::from(status.replicas.div_ceil(2)));
        }
    }
    response
}

async fn scale(State(received): State<Received>, body: Bytes) -> axum::Json<FleetAutoscaleReview> {
    received.lock().unwrap().push(serde_json::from_slice(&body).unwrap());
    let mut review: FleetAutoscaleReview = serde_json::from_slice(&body).unwrap();
    // As the Go example, the whole review goes back with its response filled in.
    review.response = review.request.as_ref().map(agones_example);
    axum::Json(review)
}

/// Answers with the request's uid replaced by `uid`, or with `replicas`.
fn answer(review: Bytes, edit: impl FnOnce(&mut FleetAutoscaleResponse)) -> axum::Json<Value> {
    let review: FleetAutoscaleReview = serde_json::from_slice(&review).unwrap();
    let mut response = agones_example(review.request.as_ref().unwrap());
    edit(&mut response);
    axum::Json(json!({ "response": response }))
}

fn app(received: Received) -> Router {
    Router::new()
        .route("/scale", post(scale))
        .route("/fail", post(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "  the scaler is out to lunch\n") }))
        .route("/fail-long", post(|| async { (StatusCode::SERVICE_UNAVAILABLE, "x".repeat(1000)) }))
        .route("/html", post(|| async { "<html>not a review</html>" }))
        .route("/not-a-review", post(|| async { axum::Json(json!({ "response": { "replicas": "many" } })) }))
        .route("/no-response", post(|| async { axum::Json(json!({ "request": null })) }))
        .route("/wrong-uid", post(|body: Bytes| async move { answer(body, |r| r.uid = "someone-else".into()) }))
        .route("/empty-uid", post(|body: Bytes| async move { answer(body, |r| r.uid.clear()) }))
        .route("/negative", post(|body: Bytes| async move { answer(body, |r| (r.scale, r.replicas) = (true, -3)) }))
        .route(
            "/negative-no-scale",
            post(|body: Bytes| async move { answer(body, |r| (r.scale, r.replicas) = (false, -3)) }),
        )
        .route("/redirect", post(|| async { (StatusCode::TEMPORARY_REDIRECT, [("location", "/scale")], "") }))
        .route("/huge", post(|| async { " ".repeat(64 * 1024 + 1) }))
        .route("/huge-chunked", post(|| async { Body::from_stream(futures_util::stream::iter(chunks(64 * 1024 + 1))) }))
        .route("/just-fits", post(|body: Bytes| async move { padded(answer(body, |_| ()), 64 * 1024) }))
        .route(
            "/slow",
            post(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                "too late"
            }),
        )
        .with_state(received)
}

/// `len` spaces in 1 KiB chunks, sent without a Content-Length.
fn chunks(len: usize) -> Vec<Result<Bytes, std::io::Error>> {
    let sizes = std::iter::repeat_n(1024, len / 1024).chain([len % 1024]);
    sizes.map(|n| Ok(Bytes::from(" ".repeat(n)))).collect()
}

/// The JSON answer followed by spaces up to exactly `len` bytes.
fn padded(json: axum::Json<Value>, len: usize) -> impl IntoResponse {
    let mut text = json.0.to_string();
    text.push_str(&" ".repeat(len - text.len()));
    text
}

async fn serve() -> (SocketAddr, Received) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Received::default();
    tokio::spawn(axum::serve(listener, app(received.clone())).into_future());
    (addr, received)
}

fn policy(url: String) -> WebhookPolicy {
    WebhookPolicy { url: Some(url), service: None, ca_bundle: None, timeout: Duration::from_secs(5) }
}

fn request(uid: &str, replicas: u32, allocated: u32) -> FleetAutoscaleRequest {
    FleetAutoscaleRequest {
        uid: uid.into(),
        name: "town".into(),
        namespace: "default".into(),
        status: FleetStatus {
            replicas,
            ready_replicas: replicas - allocated,
            reserved_replicas: 0,
            allocated_replicas: allocated,
            counters: Default::default(),
        },
        metadata: None,
        region: "eu".into(),
    }
}

#[tokio::test]
async fn posts_agones_review_and_returns_the_answer() {
    let (addr, received) = serve().await;
    let webhooks = Webhooks::new();
    let response = webhooks.review(&policy(format!("http://{addr}/scale")), request("4b1d", 10, 8)).await.unwrap();
    assert_eq!(response, FleetAutoscaleResponse { uid: "4b1d".into(), scale: true, replicas: 20 });

    let received = received.lock().unwrap().clone();
    assert_eq!(
        received,
        vec![json!({
            "request": {
                "uid": "4b1d",
                "name": "town",
                "namespace": "default",
                "status": {
                    "replicas": 10,
                    "readyReplicas": 2,
                    "reservedReplicas": 0,
                    "allocatedReplicas": 8,
                    "counters": {}
                },
                "region": "eu"
            },
            "response": null
        })]
    );
}

#[tokio::test]
async fn scale_false_and_scale_down_come_back_as_answered() {
    let (addr, _) = serve().await;
    let (webhooks, policy) = (Webhooks::default(), policy(format!("http://{addr}/scale")));
    let keep = webhooks.review(&policy, request("a", 10, 5)).await.unwrap();
    assert_eq!(keep, FleetAutoscaleResponse { uid: "a".into(), scale: false, replicas: 0 });
    let down = webhooks.review(&policy, request("b", 10, 1)).await.unwrap();
    assert_eq!(down, FleetAutoscaleResponse { uid: "b".into(), scale: true, replicas: 5 });
    // Negative replicas are no error when the webhook does not ask to scale.
    let policy = self::policy(format!("http://{addr}/negative-no-scale"));
    let ignored = webhooks.review(&policy, request("c", 10, 8)).await.unwrap();
    assert_eq!(ignored, FleetAutoscaleResponse { uid: "c".into(), scale: false, replicas: -3 });
    // 64 KiB, whitespace included, is still read.
    let policy = self::policy(format!("http://{addr}/just-fits"));
    let fits = webhooks.review(&policy, request("d", 10, 8)).await.unwrap();
    assert_eq!(fits, FleetAutoscaleResponse { uid: "d".into(), scale: true, replicas: 20 });
}

async fn failure(path: &str) -> (WebhookError, String) {
    let (addr, _) = serve().await;
    let url = format!("http://{addr}{path}");
    let err = Webhooks::new().review(&policy(url.clone()), request("4b1d", 10, 8)).await.unwrap_err();
    (err, url)
}

#[tokio::test]
async fn refusals_quote_the_status_and_body() {
    let (err, url) = failure("/fail").await;
    assert_eq!(
        (err.metric_label(), err.to_string()),
        ("status", format!("webhook {url} answered 500: \"the scaler is out to lunch\""))
    );
    assert!(matches!(&err, WebhookError::Status { status: 500, .. }), "{err:?}");

    let (err, url) = failure("/fail-long").await;
    let quoted = format!("{}...", "x".repeat(200));
    assert_eq!((err.metric_label(), err.to_string()), ("status", format!("webhook {url} answered 503: {quoted:?}")));

    let (err, url) = failure("/redirect").await;
    assert_eq!((err.metric_label(), err.to_string()), ("status", format!("webhook {url} answered 307: \"\"")));
}

#[tokio::test]
async fn answers_that_are_not_reviews_are_malformed() {
    let (err, url) = failure("/html").await;
    assert_eq!(
        (err.metric_label(), err.to_string()),
        (
            "malformed",
            format!("webhook {url} did not answer a FleetAutoscaleReview: expected value at line 1 column 1")
        )
    );
    let (err, url) = failure("/not-a-review").await;
    assert_eq!(
        (err.metric_label(), err.to_string()),
        (
            "malformed",
            format!(
                "webhook {url} did not answer a FleetAutoscaleReview: invalid type: string \"many\", expected i64 at line 1 column 30"
            )
        )
    );
    let (err, url) = failure("/no-response").await;
    assert_eq!(
        (err.metric_label(), err.to_string()),
        ("no_response", format!("webhook {url} answered a review without a response"))
    );
}

#[tokio::test]
async fn bodies_past_64_kib_are_refused() {
    for path in ["/huge", "/huge-chunked"] {
        let (err, url) = failure(path).await;
        assert_eq!(
            (err.metric_label(), err.to_string()),
            ("too_large", format!("webhook {url} answered more than 65536 bytes")),
            "{path}"
        );
    }
}

#[tokio::test]
async fn the_uid_must_be_copied_back() {
    let (err, url) = failure("/wrong-uid").await;
    assert_eq!(
        (err.metric_label(), err.to_string()),
        ("uid_mismatch", format!("webhook {url} answered uid \"someone-else\" to request \"4b1d\""))
    );
    let (err, url) = failure("/empty-uid").await;
    assert_eq!(
        (err.metric_label(), err.to_string()),
        ("uid_mismatch", format!("webhook {url} answered uid \"\" to request \"4b1d\""))
    );
}

#[tokio::test]
async fn negative_replicas_are_refused() {
    let (err, url) = failure("/negative").await;
    assert_eq!(
        (err.metric_label(), err.to_string()),
        ("negative_replicas", format!("webhook {url} asked for -3 replicas"))
    );
}

#[tokio::test]
async fn a_slow_webhook_times_out() {
    let (addr, _) = serve().await;
    let url = format!("http://{addr}/slow");
    let policy = WebhookPolicy { timeout: Duration::from_millis(200), ..policy(url.clone()) };
    let started = std::time::Instant::now();
    let err = Webhooks::new().review(&policy, request("4b1d", 10, 8)).await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(
        (err.metric_label(), err.to_string()),
        ("timeout", format!("webhook {url} did not answer within 200ms"))
    );
    assert!(took >= Duration::from_millis(200) && took < Duration::from_secs(5), "{took:?}");
}

#[tokio::test]
async fn nothing_listening_is_unreachable() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/scale", listener.local_addr().unwrap());
    drop(listener);
    let err = Webhooks::new().review(&policy(url.clone()), request("4b1d", 10, 8)).await.unwrap_err();
    assert_eq!(err.metric_label(), "unreachable", "{err}");
    let WebhookError::Unreachable { url: at, message } = &err else { panic!("{err:?}") };
    assert_eq!(at, &url);
    assert!(message.starts_with(&format!("error sending request for url ({url})")), "{message}");
    assert!(message.ends_with("Connection refused (os error 111)"), "{message}");

    let no_endpoint = WebhookPolicy { url: None, ..policy(String::new()) };
    let err = Webhooks::new().review(&no_endpoint, request("4b1d", 10, 8)).await.unwrap_err();
    assert_eq!(
        (err.metric_label(), err.to_string()),
        ("invalid_url", "webhook url \"\" is not usable: builder error: relative URL without a base".to_string())
    );
}

// ---- HTTPS ----

mod tls {
    use std::sync::Arc;

    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_rustls::TlsAcceptor;
    use tokio_rustls::server::TlsStream;

    /// A CA, as an operator's cluster would have, and its PEM.
    pub fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
    }

    /// Accepts TLS connections for axum with a certificate for 127.0.0.1 signed by `ca`.
    /// Handshakes run one at a time, which is enough for a test.
    pub struct Listener {
        tcp: TcpListener,
        acceptor: TlsAcceptor,
    }

    impl Listener {
        pub fn new(tcp: TcpListener, ca: &CertifiedIssuer<'static, KeyPair>) -> Self {
            let key = KeyPair::generate().unwrap();
            let cert = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap().signed_by(&key, ca).unwrap();
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut config = rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(
                    vec![CertificateDer::from(cert.der().to_vec())],
                    PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
                )
                .unwrap();
            config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            Self { tcp, acceptor: TlsAcceptor::from(Arc::new(config)) }
        }
    }

    impl axum::serve::Listener for Listener {
        type Io = TlsStream<TcpStream>;
        type Addr = std::net::SocketAddr;

        async fn accept(&mut self) -> (Self::Io, Self::Addr) {
            loop {
                let Ok((stream, addr)) = self.tcp.accept().await else { continue };
                // A client that does not trust the certificate ends its handshake here.
                if let Ok(tls) = self.acceptor.accept(stream).await {
                    return (tls, addr);
                }
            }
        }

        fn local_addr(&self) -> std::io::Result<Self::Addr> {
            self.tcp.local_addr()
        }
    }
}

#[tokio::test]
async fn https_trusts_exactly_the_ca_bundle() {
    let ca = tls::ca("webhook test CA");
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let received = Received::default();
    tokio::spawn(axum::serve(tls::Listener::new(tcp, &ca), app(received.clone())).into_future());

    let base64 = |pem: String| base64::engine::general_purpose::STANDARD.encode(pem);
    let url = format!("https://{addr}/scale");
    let trusting = WebhookPolicy { ca_bundle: Some(base64(ca.pem())), ..policy(url.clone()) };
    let webhooks = Webhooks::new();
    let response = webhooks.review(&trusting, request("7e1", 10, 8)).await.unwrap();
    assert_eq!(response, FleetAutoscaleResponse { uid: "7e1".into(), scale: true, replicas: 20 });
    // The client is kept: a second call reuses it.
    let response = webhooks.review(&trusting, request("7e2", 10, 1)).await.unwrap();
    assert_eq!(response, FleetAutoscaleResponse { uid: "7e2".into(), scale: true, replicas: 5 });
    assert_eq!(received.lock().unwrap().len(), 2);

    // Another CA, or none (the public roots), does not sign the server's certificate.
    let other = WebhookPolicy { ca_bundle: Some(base64(tls::ca("another CA").pem())), ..policy(url.clone()) };
    for policy in [other, policy(url.clone())] {
        let err = webhooks.review(&policy, request("7e3", 10, 8)).await.unwrap_err();
        assert_eq!(
            (err.metric_label(), err.to_string()),
            ("tls", format!("webhook {url}: TLS failed: invalid peer certificate: UnknownIssuer")),
            "{:?}",
            policy.ca_bundle
        );
    }
    assert_eq!(received.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn a_bad_ca_bundle_is_reported() {
    let url = "https://127.0.0.1:1/scale".to_string();
    for (bundle, want) in [
        ("!!".to_string(), "webhook caBundle: not base64: Invalid symbol 33, offset 0."),
        (
            base64::engine::general_purpose::STANDARD.encode("no PEM here"),
            "webhook caBundle: no CERTIFICATE in the PEM",
        ),
        (
            base64::engine::general_purpose::STANDARD
                .encode("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
            "webhook caBundle: unusable certificate: builder error: invalid peer certificate: BadEncoding",
        ),
    ] {
        let policy = WebhookPolicy { ca_bundle: Some(bundle), ..policy(url.clone()) };
        let err = Webhooks::new().review(&policy, request("4b1d", 10, 8)).await.unwrap_err();
        assert_eq!((err.metric_label(), err.to_string().as_str()), ("ca_bundle", want));
    }
}

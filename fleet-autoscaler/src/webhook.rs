//! The Webhook policy's client: [`Webhooks::review`] POSTs Agones' `FleetAutoscaleReview`
//! for one region to the operator's endpoint and checks the answer before anyone uses it.
//!
//! One `reqwest` client (rustls, ring) is kept per distinct `caBundle`, built on first use,
//! so connections are reused from one sync to the next. Without a bundle the public web
//! roots are trusted, as Agones trusts the system's; with one, exactly its certificates.
//! Every way a call can fail is a [`WebhookError`]; the caller keeps the region's replicas
//! and reports it.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use gaia_api::autoscaler::{FleetAutoscaleRequest, FleetAutoscaleResponse, FleetAutoscaleReview, WebhookPolicy};

/// The largest answer read: a review is a few hundred bytes, and a webhook must not make
/// the autoscaler buffer without limit.
const MAX_BODY: usize = 64 * 1024;
/// How many characters of a refusal's body an error quotes.
const QUOTED_CHARS: usize = 200;
/// Distinct CA bundles kept. Bundles change only with specs; past this many the cache
/// starts over rather than grow with every edit.
const MAX_CLIENTS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("webhook url {url:?} is not usable: {message}")]
    InvalidUrl { url: String, message: String },
    #[error("webhook {url} is unreachable: {message}")]
    Unreachable { url: String, message: String },
    /// The TLS handshake failed, typically a certificate the `caBundle` does not sign.
    #[error("webhook {url}: TLS failed: {message}")]
    Tls { url: String, message: String },
    #[error("webhook {url} did not answer within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("webhook {url} answered {status}: {body:?}")]
    Status { url: String, status: u16, body: String },
    #[error("webhook {url} answered more than {limit} bytes")]
    TooLarge { url: String, limit: usize },
    #[error("webhook {url} did not answer a FleetAutoscaleReview: {message}")]
    Malformed { url: String, message: String },
    #[error("webhook {url} answered a review without a response")]
    NoResponse { url: String },
    /// Agones requires the request's uid to be copied into the response; an empty one
    /// is refused too.
    #[error("webhook {url} answered uid {got:?} to request {sent:?}")]
    UidMismatch { url: String, sent: String, got: String },
    #[error("webhook {url} asked for {replicas} replicas")]
    NegativeReplicas { url: String, replicas: i64 },
    #[error("webhook caBundle: {0}")]
    CaBundle(String),
    #[error("cannot build the webhook HTTP client: {0}")]
    Client(String),
}

impl WebhookError {
    /// Short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::InvalidUrl { .. } => "invalid_url",
            Self::Unreachable { .. } => "unreachable",
            Self::Tls { .. } => "tls",
            Self::Timeout { .. } => "timeout",
            Self::Status { .. } => "status",
            Self::TooLarge { .. } => "too_large",
            Self::Malformed { .. } => "malformed",
            Self::NoResponse { .. } => "no_response",
            Self::UidMismatch { .. } => "uid_mismatch",
            Self::NegativeReplicas { .. } => "negative_replicas",
            Self::CaBundle(_) => "ca_bundle",
            Self::Client(_) => "client",
        }
    }
}

/// The HTTP clients of every webhook policy, one per distinct `caBundle`.
#[derive(Debug, Default)]
pub struct Webhooks {
    // Keyed by the trimmed base64 bundle, `None` for the client without one. A plain
    // std mutex: it is never held across an await.
    clients: Mutex<HashMap<Option<String>, reqwest::Client>>,
}

impl Webhooks {
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the webhook of `policy` about one region. The whole call (connecting, sending,
    /// reading the answer) is bounded by `policy.timeout`. The response is returned only
    /// if it copies `request.uid` and, when `scale` is true, asks for 0 or more replicas;
    /// the caller gives each request a fresh uid.
    pub async fn review(
        &self,
        policy: &WebhookPolicy,
        request: FleetAutoscaleRequest,
    ) -> Result<FleetAutoscaleResponse, WebhookError> {
        let url = policy.endpoint();
        let client = self.client(policy.ca_bundle.as_deref())?;
        let uid = request.uid.clone();
        let review = FleetAutoscaleReview { request: Some(request), response: None };
        let body = match tokio::time::timeout(policy.timeout, post(&client, &url, &review)).await {
            Ok(body) => body?,
            Err(_) => return Err(WebhookError::Timeout { url, timeout: policy.timeout }),
        };
        let answer: FleetAutoscaleReview = match serde_json::from_slice(&body) {
            Ok(answer) => answer,
            Err(e) => return Err(WebhookError::Malformed { url, message: e.to_string() }),
        };
        let Some(response) = answer.response else {
            return Err(WebhookError::NoResponse { url });
        };
        // An empty uid is refused even when the request's was empty: it is never copied.
        if response.uid.is_empty() || response.uid != uid {
            return Err(WebhookError::UidMismatch { url, sent: uid, got: response.uid });
        }
        if response.scale && response.replicas < 0 {
            return Err(WebhookError::NegativeReplicas { url, replicas: response.replicas });
        }
        Ok(response)
    }

    fn client(&self, ca_bundle: Option<&str>) -> Result<reqwest::Client, WebhookError> {
        let key = ca_bundle.map(|b| b.trim().to_owned());
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(client) = clients.get(&key) {
            return Ok(client.clone());
        }
        let client = build_client(key.as_deref())?;
        if clients.len() >= MAX_CLIENTS {
            clients.clear();
        }
        clients.insert(key, client.clone());
        Ok(client)
    }
}

fn build_client(ca_bundle: Option<&str>) -> Result<reqwest::Client, WebhookError> {
    // A redirect would turn the POST into a GET elsewhere: a 3xx is a `Status` error.
    let builder = reqwest::Client::builder().use_rustls_tls().redirect(reqwest::redirect::Policy::none());
    let Some(ca_bundle) = ca_bundle else {
        return builder.build().map_err(|e| WebhookError::Client(chain(&e)));
    };
    let pem = STANDARD.decode(ca_bundle).map_err(|e| WebhookError::CaBundle(format!("not base64: {e}")))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| WebhookError::CaBundle(format!("not PEM: {}", chain(&e))))?;
    if certs.is_empty() {
        return Err(WebhookError::CaBundle("no CERTIFICATE in the PEM".into()));
    }
    let builder =
        certs.into_iter().fold(builder.tls_built_in_root_certs(false), |b, cert| b.add_root_certificate(cert));
    builder.build().map_err(|e| WebhookError::CaBundle(format!("unusable certificate: {}", chain(&e))))
}

/// Sends the review and reads a 2xx answer's body, at most [`MAX_BODY`] bytes.
async fn post(client: &reqwest::Client, url: &str, review: &FleetAutoscaleReview) -> Result<Vec<u8>, WebhookError> {
    let mut response = client.post(url).json(review).send().await.map_err(|e| transport(url, &e))?;
    let status = response.status();
    if !status.is_success() {
        // A UTF-8 character is at most 4 bytes: this many hold the quoted characters. The
        // status says what matters: a body that cannot be read is quoted as empty.
        let head = read_capped(&mut response, QUOTED_CHARS * 4).await.map(|(head, _)| head).unwrap_or_default();
        let text = String::from_utf8_lossy(&head);
        let text = text.trim();
        let mut body: String = text.chars().take(QUOTED_CHARS).collect();
        if text.chars().nth(QUOTED_CHARS).is_some() {
            body.push_str("...");
        }
        return Err(WebhookError::Status { url: url.to_owned(), status: status.as_u16(), body });
    }
    if response.content_length().is_some_and(|n| n > MAX_BODY as u64) {
        return Err(WebhookError::TooLarge { url: url.to_owned(), limit: MAX_BODY });
    }
    match read_capped(&mut response, MAX_BODY).await.map_err(|e| transport(url, &e))? {
        (body, true) => Ok(body),
        (_, false) => Err(WebhookError::TooLarge { url: url.to_owned(), limit: MAX_BODY }),
    }
}

/// Reads at most `limit` bytes of the body; `true` when that was all of it.
async fn read_capped(response: &mut reqwest::Response, limit: usize) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = limit - body.len();
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            return Ok((body, false));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, true))
}

fn transport(url: &str, e: &reqwest::Error) -> WebhookError {
    let url = url.to_owned();
    if e.is_builder() {
        return WebhookError::InvalidUrl { url, message: chain(e) };
    }
    match tls_cause(e) {
        Some(tls) => WebhookError::Tls { url, message: tls.to_string() },
        None => WebhookError::Unreachable { url, message: chain(e) },
    }
}

/// The rustls error behind a failed connection, if any. It sits inside `io::Error`s
/// (tokio-rustls wraps it in one, hyper-rustls that in another), whose `source()` skips
/// what they wrap: look inside each of them too.
fn tls_cause<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cause = Some(e);
    while let Some(e) = cause {
        let mut inner: &(dyn std::error::Error + 'static) = e;
        loop {
            if let Some(tls) = inner.downcast_ref::<rustls::Error>() {
                return Some(tls);
            }
            match inner.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
                Some(wrapped) => inner = wrapped,
                None => break,
            }
        }
        cause = e.source();
    }
    None
}

/// An error and its causes on one line (reqwest's own message hides the cause).
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

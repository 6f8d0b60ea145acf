//! The game-server SDK: how a game server talks to the Gaia Fleet control plane.
//!
//! The calls mirror Agones' SDK: [`Sdk::ready`], [`Sdk::health`], [`Sdk::allocate`],
//! [`Sdk::reserve`], [`Sdk::shutdown`], [`Sdk::set_label`], and its `WatchGameServer` as
//! [`Sdk::spawn_watch`]; plus what worlds need: [`Sdk::world_started`] (the first player
//! joined: the allocation's lease is confirmed), [`Sdk::world_ended`] (the slot is free
//! again), [`Sdk::set_players`], [`Sdk::drain`] (take no new worlds) and
//! [`Sdk::move_world`] (place a world on another server, with a new epoch). The transport
//! is HTTP/JSON against the allocator's `/v1/gameservers/{name}/...` endpoints
//! (docs/architecture.md lists them).
//!
//! Start with [`Sdk::from_env`] in a process the controller started, then
//! [`Sdk::register`], [`Sdk::ready`], [`Sdk::spawn_health`] and [`Sdk::spawn_watch`].
//!
//! Every call, the watch stream included, carries this server's SDK token
//! (`GAIA_SDK_TOKEN`, [`Sdk::with_token`]) as `Authorization: Bearer`, when it has one:
//! a control plane with an SDK secret refuses calls without it (401) and calls on
//! another server's record (403). An `https://` control plane is reached with rustls,
//! trusting the usual public roots and, if given, one more ([`Sdk::with_root_certificate`],
//! `GAIA_SDK_CA_FILE`).

use std::time::Duration;

use gaia_api::allocation::{ErrorBody, MoveResponse};
use gaia_api::gameserver::{GameServer, PlayerCountRequest, RegisterRequest, SetLabelRequest, WorldStartedRequest};
use gaia_api::server_env as env;
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Total time for one request/response call.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Time to connect; the watch stream has no total timeout, only this and TCP keepalive.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest line accepted on the watch stream (one game-server record).
const MAX_WATCH_LINE: usize = 64 * 1024;
/// Reconnect delays of the watch: from the first, doubling up to the last.
const WATCH_BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));

#[derive(Debug, thiserror::Error)]
pub enum SdkError {
    /// The control plane could not be reached or did not answer in time.
    #[error("control plane unreachable: {0}")]
    Transport(#[from] reqwest::Error),
    /// The control plane refused the call (`code` is the error body's code, e.g.
    /// `illegal_transition`).
    #[error("control plane refused {call}: {status} {code}: {message}")]
    Refused { call: &'static str, status: u16, code: String, message: String },
    #[error("missing or invalid environment variable {name}: {message}")]
    Env { name: &'static str, message: String },
    /// The control plane answered something this SDK does not understand.
    #[error("bad answer from the control plane to {call}: {message}")]
    BadAnswer { call: &'static str, message: String },
}

impl SdkError {
    /// Short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Transport(_) => "transport",
            Self::Refused { .. } => "refused",
            Self::Env { .. } => "env",
            Self::BadAnswer { .. } => "bad_answer",
        }
    }

    /// The HTTP status the control plane answered with, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }
}

pub type Result<T, E = SdkError> = std::result::Result<T, E>;

/// A handle on the control plane for one game server. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Sdk {
    http: reqwest::Client,
    /// For the watch stream: no total timeout, which would cut it.
    streaming: reqwest::Client,
    /// `{base}/v1/gameservers/{name}`
    server_url: String,
    name: String,
    /// `Authorization` header value, marked sensitive (never logged).
    auth: Option<reqwest::header::HeaderValue>,
}

impl Sdk {
    /// `base_url` is the control plane (`http://127.0.0.1:7700`), `name` this server's name.
    pub fn new(base_url: &str, name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        let (http, streaming) = clients(None)?;
        let server_url = format!("{}/v1/gameservers/{name}", base_url.trim_end_matches('/'));
        Ok(Self { http, streaming, server_url, name, auth: None })
    }

    /// Sends `token` (this server's SDK token) on every call; `None` sends none.
    pub fn with_token(mut self, token: Option<String>) -> Result<Self> {
        self.auth = match token {
            Some(token) => {
                let mut value = reqwest::header::HeaderValue::try_from(format!("Bearer {token}"))
                    .map_err(|_| SdkError::Env { name: env::SDK_TOKEN, message: "not a valid header value".into() })?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        Ok(self)
    }

    /// Trusts `pem` (a PEM certificate: a private CA, or the control plane's own
    /// self-signed one) for an `https://` control plane, besides the public roots.
    pub fn with_root_certificate(mut self, pem: &[u8]) -> Result<Self> {
        let cert = reqwest::Certificate::from_pem(pem)?;
        (self.http, self.streaming) = clients(Some(cert))?;
        Ok(self)
    }

    /// From `GAIA_SDK_URL` and `GAIA_SERVER_NAME`, as the controller sets them, and the
    /// optional `GAIA_SDK_TOKEN` and `GAIA_SDK_CA_FILE`.
    pub fn from_env() -> Result<Self> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// [`Sdk::from_env`] with the variables looked up in `var`.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let required = |name: &'static str| var(name).ok_or_else(|| SdkError::Env { name, message: "not set".into() });
        let mut sdk = Self::new(&required(env::SDK_URL)?, required(env::SERVER_NAME)?)?
            .with_token(var(env::SDK_TOKEN).filter(|t| !t.is_empty()))?;
        if let Some(path) = var(env::SDK_CA_FILE).filter(|p| !p.is_empty()) {
            let pem = std::fs::read(&path)
                .map_err(|e| SdkError::Env { name: env::SDK_CA_FILE, message: format!("{path}: {e}") })?;
            sdk = sdk.with_root_certificate(&pem)?;
        }
        Ok(sdk)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn authorized(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.auth {
            Some(auth) => req.header(reqwest::header::AUTHORIZATION, auth.clone()),
            None => req,
        }
    }

    async fn call<T: DeserializeOwned>(
        &self,
        call: &'static str,
        method: Method,
        path: &str,
        body: Option<&(impl serde::Serialize + Sync)>,
    ) -> Result<Option<T>> {
        let mut req = self.authorized(self.http.request(method, format!("{}{path}", self.server_url)));
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req.send().await?;
        let status = resp.status();
        if status == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        if status.is_success() {
            return Ok(Some(resp.json().await?));
        }
        Err(refused(call, resp).await)
    }

    /// A call that answers with a JSON body (this server's record, mostly).
    async fn record<T: DeserializeOwned>(
        &self,
        call: &'static str,
        method: Method,
        path: &str,
        body: Option<&(impl serde::Serialize + Sync)>,
    ) -> Result<T> {
        self.call(call, method, path, body).await?.ok_or_else(|| SdkError::Refused {
            call,
            status: 204,
            code: "empty".into(),
            message: "expected a JSON answer".into(),
        })
    }

    /// The process is up and clients can reach it at `req.address`.
    pub async fn register(&self, req: &RegisterRequest) -> Result<GameServer> {
        self.record("register", Method::POST, "/register", Some(req)).await
    }

    /// Ready for worlds.
    pub async fn ready(&self) -> Result<GameServer> {
        self.record("ready", Method::POST, "/ready", None::<&()>).await
    }

    /// One health ping. [`Sdk::spawn_health`] sends them periodically.
    pub async fn health(&self) -> Result<()> {
        self.call::<()>("health", Method::POST, "/health", None::<&()>).await.map(|_| ())
    }

    /// Marks this server Allocated by itself (Agones' SDK `Allocate`).
    pub async fn allocate(&self) -> Result<GameServer> {
        self.record("allocate", Method::POST, "/allocate", None::<&()>).await
    }

    /// Holds this server back: not allocatable, not scaled down.
    pub async fn reserve(&self) -> Result<GameServer> {
        self.record("reserve", Method::POST, "/reserve", None::<&()>).await
    }

    /// This server is going away.
    pub async fn shutdown(&self) -> Result<GameServer> {
        self.record("shutdown", Method::POST, "/shutdown", None::<&()>).await
    }

    /// Takes no new worlds from now on (Draining); its worlds are to be moved away with
    /// [`Sdk::move_world`]. Allocations for them answer 429 until they have moved.
    pub async fn drain(&self) -> Result<GameServer> {
        self.record("drain", Method::POST, "/drain", None::<&()>).await
    }

    pub async fn set_label(&self, key: &str, value: &str) -> Result<GameServer> {
        let body = SetLabelRequest { key: key.into(), value: value.into() };
        self.record("set_label", Method::PUT, "/labels", Some(&body)).await
    }

    /// Connected players on this server.
    pub async fn set_players(&self, players: u32) -> Result<()> {
        let body = PlayerCountRequest { players };
        self.call::<()>("set_players", Method::PUT, "/players", Some(&body)).await.map(|_| ())
    }

    /// `world_id` is loaded here at `epoch` (the join token's) and its first player
    /// joined: confirms the lease. Refused with 409 when the world lives elsewhere or has
    /// moved on to a newer epoch: then this server must not run it.
    pub async fn world_started(&self, world_id: &str, epoch: u64) -> Result<()> {
        let path = format!("/worlds/{world_id}/started");
        let body = WorldStartedRequest { epoch };
        self.call::<()>("world_started", Method::POST, &path, Some(&body)).await.map(|_| ())
    }

    /// Places `world_id`, which runs here, on another server (same region first) under a
    /// new epoch, and gives its slot here back. The caller checkpoints the world first and
    /// then hands its players the new address. 429 when no other server has room.
    pub async fn move_world(&self, world_id: &str) -> Result<MoveResponse> {
        let path = format!("/worlds/{world_id}/move");
        self.record("move_world", Method::POST, &path, None::<&()>).await
    }

    /// `world_id` ended here: its slot is free again.
    pub async fn world_ended(&self, world_id: &str) -> Result<()> {
        let path = format!("/worlds/{world_id}/ended");
        self.call::<()>("world_ended", Method::POST, &path, None::<&()>).await.map(|_| ())
    }

    /// This server's record as the control plane holds it.
    pub async fn get(&self) -> Result<GameServer> {
        self.record("get", Method::GET, "", None::<&()>).await
    }

    /// Follows this server's record (Agones' `WatchGameServer`): the receiver holds `None`
    /// until the first record arrives, then the latest one, changed within moments of a
    /// state change (drain, shutdown). A task keeps one streaming request open and
    /// reconnects with backoff when it breaks, until `shutdown`, until every receiver is
    /// dropped, or after a terminal record (nothing changes after it).
    pub fn spawn_watch(&self, shutdown: CancellationToken) -> watch::Receiver<Option<GameServer>> {
        let (tx, rx) = watch::channel(None);
        let sdk = self.clone();
        tokio::spawn(async move {
            let mut backoff = WATCH_BACKOFF.0;
            loop {
                let mut received = 0u64;
                let outcome = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tx.closed() => return,
                    outcome = sdk.watch_once(&tx, &mut received) => outcome,
                };
                if tx.borrow().as_ref().is_some_and(|r| r.state.is_terminal()) {
                    return;
                }
                if received > 0 {
                    backoff = WATCH_BACKOFF.0;
                }
                match outcome {
                    Ok(()) => tracing::debug!("watch stream ended; reconnecting"),
                    Err(e) => tracing::warn!(error = %e, retry_in = ?backoff, "watch failed; reconnecting"),
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tx.closed() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(WATCH_BACKOFF.1);
            }
        });
        rx
    }

    /// One watch connection: publishes each record that differs from the last, until the
    /// stream ends or fails.
    async fn watch_once(&self, tx: &watch::Sender<Option<GameServer>>, received: &mut u64) -> Result<()> {
        const CALL: &str = "watch";
        let mut resp = self.authorized(self.streaming.get(format!("{}/watch", self.server_url))).send().await?;
        if !resp.status().is_success() {
            return Err(refused(CALL, resp).await);
        }
        let mut buf = Vec::new();
        while let Some(chunk) = resp.chunk().await? {
            buf.extend_from_slice(&chunk);
            while let Some(end) = buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buf.drain(..=end).collect();
                let record: GameServer = serde_json::from_slice(&line)
                    .map_err(|e| SdkError::BadAnswer { call: CALL, message: e.to_string() })?;
                *received += 1;
                tx.send_if_modified(|current| {
                    let changed = current.as_ref() != Some(&record);
                    *current = Some(record);
                    changed
                });
            }
            if buf.len() > MAX_WATCH_LINE {
                return Err(SdkError::BadAnswer { call: CALL, message: format!("a line over {MAX_WATCH_LINE} bytes") });
            }
        }
        Ok(())
    }

    /// Pings health every `period` until `shutdown`. A failed ping is logged and retried
    /// at the next period: the control plane decides when silence means Unhealthy.
    pub fn spawn_health(&self, period: Duration, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        let sdk = self.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(period);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = ticker.tick() => {
                        if let Err(e) = sdk.health().await {
                            tracing::warn!(error = %e, "health ping failed");
                        }
                    }
                }
            }
        })
    }
}

/// The client for calls and the one for the watch stream, trusting `root` besides the
/// public roots.
fn clients(root: Option<reqwest::Certificate>) -> Result<(reqwest::Client, reqwest::Client)> {
    let with_root = |builder: reqwest::ClientBuilder| match &root {
        Some(root) => builder.add_root_certificate(root.clone()),
        None => builder,
    };
    let http = with_root(reqwest::Client::builder().timeout(CALL_TIMEOUT).connect_timeout(CONNECT_TIMEOUT)).build()?;
    // Keepalive probes notice a control plane that vanished without closing (~25 s).
    let streaming = with_root(
        reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_keepalive(Duration::from_secs(10))
            .tcp_keepalive_interval(Duration::from_secs(5))
            .tcp_keepalive_retries(3),
    )
    .build()?;
    Ok((http, streaming))
}

/// The error for a call the control plane answered with a failure status.
async fn refused(call: &'static str, resp: reqwest::Response) -> SdkError {
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    let (code, message) = match serde_json::from_str::<ErrorBody>(&text) {
        Ok(body) => (body.error.code, body.error.message),
        Err(_) => ("unknown".to_string(), text),
    };
    SdkError::Refused { call, status, code, message }
}

//! The game-server SDK: how a game server talks to the Gaia Fleet control plane.
//!
//! The calls mirror Agones' SDK: [`Sdk::ready`], [`Sdk::health`], [`Sdk::allocate`],
//! [`Sdk::reserve`], [`Sdk::shutdown`], [`Sdk::set_label`], plus what worlds need:
//! [`Sdk::world_started`] (the first player joined: the allocation's lease is confirmed),
//! [`Sdk::world_ended`] (the slot is free again) and [`Sdk::set_players`]. The transport
//! is HTTP/JSON against the allocator's `/v1/gameservers/{name}/...` endpoints
//! (docs/architecture.md lists them).
//!
//! Start with [`Sdk::from_env`] in a process the controller started, then
//! [`Sdk::register`], [`Sdk::ready`] and [`Sdk::spawn_health`].

use std::time::Duration;

use gaia_api::allocation::ErrorBody;
use gaia_api::gameserver::{GameServer, PlayerCountRequest, RegisterRequest, SetLabelRequest};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

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
}

impl SdkError {
    /// Short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Transport(_) => "transport",
            Self::Refused { .. } => "refused",
            Self::Env { .. } => "env",
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
    /// `{base}/v1/gameservers/{name}`
    server_url: String,
    name: String,
}

impl Sdk {
    /// `base_url` is the control plane (`http://127.0.0.1:7700`), `name` this server's name.
    pub fn new(base_url: &str, name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?;
        let server_url = format!("{}/v1/gameservers/{name}", base_url.trim_end_matches('/'));
        Ok(Self { http, server_url, name })
    }

    /// From `GAIA_SDK_URL` and `GAIA_SERVER_NAME`, as the controller sets them.
    pub fn from_env() -> Result<Self> {
        let var = |name: &'static str| std::env::var(name).map_err(|e| SdkError::Env { name, message: e.to_string() });
        Self::new(&var("GAIA_SDK_URL")?, var("GAIA_SERVER_NAME")?)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    async fn call<T: DeserializeOwned>(
        &self,
        call: &'static str,
        method: Method,
        path: &str,
        body: Option<&(impl serde::Serialize + Sync)>,
    ) -> Result<Option<T>> {
        let mut req = self.http.request(method, format!("{}{path}", self.server_url));
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
        let text = resp.text().await.unwrap_or_default();
        let (code, message) = match serde_json::from_str::<ErrorBody>(&text) {
            Ok(body) => (body.error.code, body.error.message),
            Err(_) => ("unknown".to_string(), text),
        };
        Err(SdkError::Refused { call, status: status.as_u16(), code, message })
    }

    /// A call that answers with this server's record.
    async fn record(
        &self,
        call: &'static str,
        method: Method,
        path: &str,
        body: Option<&(impl serde::Serialize + Sync)>,
    ) -> Result<GameServer> {
        self.call(call, method, path, body).await?.ok_or_else(|| SdkError::Refused {
            call,
            status: 204,
            code: "empty".into(),
            message: "expected a game-server record".into(),
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

    pub async fn set_label(&self, key: &str, value: &str) -> Result<GameServer> {
        let body = SetLabelRequest { key: key.into(), value: value.into() };
        self.record("set_label", Method::PUT, "/labels", Some(&body)).await
    }

    /// Connected players on this server.
    pub async fn set_players(&self, players: u32) -> Result<()> {
        let body = PlayerCountRequest { players };
        self.call::<()>("set_players", Method::PUT, "/players", Some(&body)).await.map(|_| ())
    }

    /// `world_id` is loaded here and its first player joined: confirms the lease.
    pub async fn world_started(&self, world_id: &str) -> Result<()> {
        let path = format!("/worlds/{world_id}/started");
        self.call::<()>("world_started", Method::POST, &path, None::<&()>).await.map(|_| ())
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

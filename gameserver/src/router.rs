//! The game server's routes: `/ws` (the WebSocket upgrade, its subprotocol and the
//! unjoined limit), `/livez`, `/readyz` and `/metrics`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use gaia_api::protocol::{Encoding, MAX_CLIENT_FRAME};
use tokio_util::task::TaskTracker;

use crate::conn;
use crate::conn::Ctx;
use crate::unjoined::Unjoined;
use crate::world::World;
use gaia_checkpoint::Tiers;

pub(crate) struct AppState<W: World> {
    pub(crate) ctx: Arc<Ctx<W>>,
    pub(crate) tiers: Option<Arc<Tiers>>,
    pub(crate) unjoined: Arc<Unjoined>,
    pub(crate) prometheus: Arc<prometheus_client::registry::Registry>,
    pub(crate) tasks: TaskTracker,
}

impl<W: World> Clone for AppState<W> {
    fn clone(&self) -> Self {
        Self {
            ctx: Arc::clone(&self.ctx),
            tiers: self.tiers.clone(),
            unjoined: Arc::clone(&self.unjoined),
            prometheus: Arc::clone(&self.prometheus),
            tasks: self.tasks.clone(),
        }
    }
}

pub(crate) fn router<W: World>(state: AppState<W>) -> Router {
    Router::new()
        .route("/ws", get(ws::<W>))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(readyz::<W>))
        .route("/metrics", get(metrics_text::<W>))
        .with_state(state)
}

/// The WebSocket upgrade. The encoding is the first subprotocol the client names that
/// the server speaks (bincode when it names none; 400 when it names only others). A
/// connection that finds no place among those waiting to join is refused here (503,
/// `Retry-After: 1`), before it costs a WebSocket.
async fn ws<W: World>(
    State(s): State<AppState<W>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: axum::http::HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let encoding = match choose_encoding(&headers) {
        Ok(encoding) => encoding,
        Err(refusal) => return (StatusCode::BAD_REQUEST, refusal).into_response(),
    };
    let place = match s.unjoined.admit(peer.ip()) {
        Ok(place) => place,
        Err(refused) => {
            s.ctx.metrics.count_close("unjoined_full");
            let retry = [(axum::http::header::RETRY_AFTER, "1")];
            return (StatusCode::SERVICE_UNAVAILABLE, retry, refused.to_string()).into_response();
        }
    };
    let tasks = s.tasks.clone();
    upgrade
        // Client frames are small: small buffers keep connections cheap (tungstenite's
        // default read buffer is 128 KiB per connection). tungstenite also zeroes the
        // read buffer's free space before each read: at 4 KiB that memset was 3% of a
        // loaded server's CPU (perf, docs/benchmarks.md). A larger frame grows it.
        .read_buffer_size(1024)
        .write_buffer_size(4 * 1024)
        // The protocol's limit, enforced by the WebSocket layer before a frame is read.
        .max_message_size(MAX_CLIENT_FRAME)
        .max_frame_size(MAX_CLIENT_FRAME)
        .protocols(encoding.map(Encoding::subprotocol))
        .on_upgrade(move |socket| {
            tasks.track_future(conn::serve(socket, s.ctx, place, encoding.unwrap_or(Encoding::Bincode)))
        })
}

/// The encoding a handshake asks for: `None` when it names no subprotocol (bincode, and
/// no `Sec-WebSocket-Protocol` in the answer), else the first named that we speak.
fn choose_encoding(headers: &axum::http::HeaderMap) -> Result<Option<Encoding>, String> {
    let named: Vec<&str> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("?").split(','))
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .collect();
    if named.is_empty() {
        return Ok(None);
    }
    match named.iter().find_map(|name| Encoding::from_subprotocol(name)) {
        Some(encoding) => Ok(Some(encoding)),
        None => {
            let spoken: Vec<&str> = Encoding::ALL.iter().map(|e| e.subprotocol()).collect();
            Err(format!(
                "no subprotocol of {} is spoken here; this server speaks {} (bincode when none is named)",
                named.join(", "),
                spoken.join(", ")
            ))
        }
    }
}

/// 200 while the server takes worlds and its checkpoints are being written; 503 while it
/// drains or stops, or while a checkpoint tier fails. The body says which, with each
/// tier's backlog (worlds whose newest checkpoint it does not hold yet).
async fn readyz<W: World>(State(s): State<AppState<W>>) -> Response {
    let mut ready = true;
    let mut text = String::new();
    if s.ctx.rooms.is_draining() || s.ctx.shutdown.is_cancelled() {
        ready = false;
        text.push_str("draining\n");
    }
    for tier in s.tiers.iter().flat_map(|t| t.health()) {
        text.push_str(&format!("checkpoint {}: backlog {} worlds", tier.kind, tier.backlog));
        if let Some((since, error)) = &tier.failing {
            ready = false;
            text.push_str(&format!(", failing for {:.1}s: {error}", since.as_secs_f64()));
        }
        text.push('\n');
    }
    if ready {
        text.insert_str(0, "ok\n");
    }
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, text).into_response()
}

async fn metrics_text<W: World>(State(s): State<AppState<W>>) -> impl IntoResponse {
    s.ctx.metrics.observe_process();
    gaia_serve::metrics(&s.prometheus)
}

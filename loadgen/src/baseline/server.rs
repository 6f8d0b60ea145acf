//! The raw baseline's server: what an engineer would write with tokio-tungstenite alone.
//!
//! A task per TCP connection (`accept_async`); connections fall into groups of
//! `group_size` in the order they arrive; each group has a task that every `tick` sends
//! one frame of `frame_bytes`, stamped with the time, to its members through a
//! `tokio::sync::broadcast` channel; each connection task writes the group's frames to its
//! socket and answers every input at once with a reply carrying its sequence number. No
//! state, no protocol beyond [`super::wire`], no metrics: `gaia loadgen --baseline` reads
//! its CPU and memory off `/proc`.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tokio_util::sync::CancellationToken;

use super::wire;

/// Frames a slow member may fall behind by before it skips to the newest.
const BACKLOG: usize = 16;

/// `gaia raw-server`'s flags; [`Self::args`] writes them for the process that starts it.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct ServerConfig {
    /// Where to listen; the address bound is the first line on stdout.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Connections per group, in the order they arrive.
    #[arg(long, default_value_t = 30)]
    pub group_size: usize,
    /// Bytes of each tick frame (at least 9: its kind and its time).
    #[arg(long, default_value_t = 38)]
    pub frame_bytes: usize,
    /// Tick frames per second to each group.
    #[arg(long, default_value_t = 10)]
    pub tick_hz: u32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self { listen: SocketAddr::from(([127, 0, 0, 1], 0)), group_size: 30, frame_bytes: 38, tick_hz: 10 }
    }
}

impl ServerConfig {
    /// The command-line flags that give this config.
    pub fn args(&self) -> Vec<String> {
        vec![
            format!("--listen={}", self.listen),
            format!("--group-size={}", self.group_size),
            format!("--frame-bytes={}", self.frame_bytes),
            format!("--tick-hz={}", self.tick_hz),
        ]
    }

    fn tick(&self) -> Duration {
        Duration::from_secs(1) / self.tick_hz.max(1)
    }
}

/// Serves until `shutdown`.
pub async fn run(config: ServerConfig, listener: TcpListener, shutdown: CancellationToken) {
    // The same buffers as Gaia's game server: tungstenite's default read buffer is
    // 128 KiB per connection, which would make this baseline a memory hog.
    let ws_config = WebSocketConfig::default().read_buffer_size(1024).write_buffer_size(4 * 1024);
    // The group being filled: its channel and how many joined it.
    let mut filling: Option<(broadcast::Sender<Bytes>, usize)> = None;
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // Out of file descriptors, say: the next accept may work.
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        // Small frames must not wait for Nagle's algorithm (Gaia's server sets it too).
        let _ = stream.set_nodelay(true);
        let frames = match &mut filling {
            // A group whose members all left has stopped ticking: start another.
            Some((group, joined)) if *joined < config.group_size && group.receiver_count() > 0 => {
                *joined += 1;
                group.subscribe()
            }
            _ => {
                let (group, frames) = broadcast::channel(BACKLOG);
                tokio::spawn(ticker(group.clone(), config.tick(), config.frame_bytes, shutdown.clone()));
                filling = Some((group, 1));
                frames
            }
        };
        tokio::spawn(connection(stream, frames, ws_config, shutdown.clone()));
    }
}

/// Sends the group a frame every `period` until its members have all left.
async fn ticker(group: broadcast::Sender<Bytes>, period: Duration, frame_bytes: usize, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(period);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = every.tick() => {
                if group.send(wire::tick(gaia_api::protocol::unix_us(), frame_bytes)).is_err() {
                    return;
                }
            }
        }
    }
}

/// One client: its group's frames out, a reply to each input.
async fn connection(
    stream: TcpStream,
    mut frames: broadcast::Receiver<Bytes>,
    config: WebSocketConfig,
    shutdown: CancellationToken,
) {
    let Ok(mut ws) = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await else {
        return;
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            frame = frames.recv() => match frame {
                Ok(frame) => {
                    if ws.send(Message::Binary(frame)).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => break,
            },
            message = ws.next() => match message {
                Some(Ok(Message::Binary(input))) => {
                    let Some(seq) = wire::input_seq(&input) else { break };
                    if ws.send(Message::Binary(wire::reply(seq))).await.is_err() {
                        return;
                    }
                }
                // tungstenite answers pings and a close itself (on the next read).
                Some(Ok(_)) => {}
                None | Some(Err(_)) => return,
            },
        }
    }
    let _ = ws.close(None).await;
}

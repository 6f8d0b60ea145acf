//! One raw client: connects to the raw server, sends an input every period once the
//! steady phase starts, and tallies what comes back in a [`PlayStats`], as a bot does.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::wire::{self, ServerFrame};
use crate::bot::micros;
use crate::report::PlayStats;
use crate::{Phases, Settled};

/// How long a client waits for the TCP + WebSocket handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// After the steady phase, how long a client waits for the replies still owed.
const DRAIN: Duration = Duration::from_secs(2);
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What one client saw: its tally once connected, and what went wrong, if anything.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub stats: Option<PlayStats>,
    pub error: Option<String>,
}

/// Connects (holding one of `permits` until then; `settled` tells the phase it is done
/// connecting), plays until the phases stop, closes.
pub(crate) async fn run(
    url: Arc<str>,
    phases: Arc<Phases>,
    permits: Arc<Semaphore>,
    settled: Settled,
    input_period: Option<Duration>,
) -> Outcome {
    let permit = tokio::select! {
        _ = phases.stop.cancelled() => return Outcome::default(),
        permit = permits.acquire_owned() => permit,
    };
    // The bots' buffers: server frames are small.
    let config = WebSocketConfig::default().read_buffer_size(2 * 1024).write_buffer_size(0);
    let connect = tokio_tungstenite::connect_async_with_config(&*url, Some(config), true);
    let connected = tokio::select! {
        _ = phases.stop.cancelled() => return Outcome::default(),
        connected = tokio::time::timeout(CONNECT_TIMEOUT, connect) => connected,
    };
    // Counted before `settled` goes: the phase reads the count once every client settled.
    if let Ok(Ok(_)) = &connected {
        phases.progress.bot_joined();
    }
    drop((permit, settled));
    let mut ws = match connected {
        Ok(Ok((ws, _))) => ws,
        Ok(Err(e)) => return Outcome { stats: None, error: Some(format!("connect failed: {e}")) },
        Err(_) => {
            return Outcome {
                stats: None,
                error: Some(format!("connect failed: no handshake in {CONNECT_TIMEOUT:?}")),
            };
        }
    };
    let mut client = Client::default();
    let error = client.play(&mut ws, &phases, input_period).await.err();
    if error.is_none() {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            if ws.close(None).await.is_ok() {
                while ws.next().await.is_some() {}
            }
        })
        .await;
    }
    client.stats.missing = client.awaiting.len() as u64;
    Outcome { stats: Some(client.stats), error }
}

#[derive(Default)]
struct Client {
    stats: PlayStats,
    /// Inputs sent and not answered yet, oldest first: the server answers in order.
    awaiting: VecDeque<(u32, Instant)>,
    /// In the steady phase, until the stop: tick latency and frames are counted then.
    measuring: bool,
}

impl Client {
    /// Reads frames until the phases stop, sending an input every `input_period` from
    /// the steady phase on; then waits a little for the replies still owed.
    async fn play(&mut self, ws: &mut Socket, phases: &Phases, input_period: Option<Duration>) -> Result<(), String> {
        let mut rng = SmallRng::from_rng(&mut rand::rng());
        let mut seq = 0u32;
        let mut next_input: Option<Instant> = None;
        let (stop, steady) = (phases.stop.cancelled(), phases.steady.cancelled());
        let due = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(stop, steady, due);
        loop {
            if !self.measuring && phases.steady.is_cancelled() {
                self.measuring = true;
                // The first input at a random point of the first period, as the bots do.
                if let Some(period) = input_period {
                    let at = Instant::now() + period.mul_f64(rng.random::<f64>());
                    next_input = Some(at);
                    due.as_mut().reset(at);
                }
            }
            tokio::select! {
                biased;
                _ = &mut stop => break,
                message = ws.next() => self.on_message(message, phases)?,
                _ = &mut steady, if !self.measuring => {}
                _ = &mut due, if next_input.is_some() => {
                    seq = seq.wrapping_add(1);
                    ws.send(Message::Binary(wire::input(seq))).await.map_err(|e| format!("sending input: {e}"))?;
                    self.awaiting.push_back((seq, Instant::now()));
                    self.stats.sent += 1;
                    self.stats.bytes_out += 4;
                    if let (Some(period), Some(at)) = (input_period, next_input) {
                        let next = (at + period).max(Instant::now());
                        next_input = Some(next);
                        due.as_mut().reset(next);
                    }
                }
            }
        }
        self.measuring = false;
        let until = Instant::now() + DRAIN;
        while !self.awaiting.is_empty() {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => break,
                message = ws.next() => self.on_message(message, phases)?,
            }
        }
        Ok(())
    }

    fn on_message(
        &mut self,
        message: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
        phases: &Phases,
    ) -> Result<(), String> {
        let frame = match message {
            Some(Ok(Message::Binary(frame))) => frame,
            Some(Ok(Message::Close(frame))) => return Err(format!("closed by the server: {frame:?}")),
            Some(Ok(_)) => return Ok(()),
            Some(Err(e)) => return Err(format!("connection lost: {e}")),
            None => return Err("connection lost: end of stream".into()),
        };
        let now = Instant::now();
        self.stats.bytes_in += frame.len() as u64;
        self.stats.steady_frames += u64::from(self.measuring);
        match wire::server_frame(&frame) {
            Some(ServerFrame::Tick { server_us }) => {
                self.stats.deltas += 1;
                if self.measuring {
                    let late = gaia_api::protocol::unix_us().saturating_sub(server_us);
                    self.stats.tick_latency_us.push(u32::try_from(late).unwrap_or(u32::MAX));
                }
            }
            Some(ServerFrame::Reply { seq }) => match self.awaiting.pop_front() {
                Some((awaited, sent)) if awaited == seq => {
                    let latency = now.saturating_duration_since(sent);
                    self.stats.ok += 1;
                    self.stats.input_latency_us.push(micros(latency));
                    phases.progress.input_ok(latency);
                }
                _ => return Err(format!("a reply to input {seq}, which was not the next awaited")),
            },
            None => return Err(format!("undecodable frame of {} bytes", frame.len())),
        }
        Ok(())
    }
}

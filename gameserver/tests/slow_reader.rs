#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns
//! A client that joins and then never reads, while its world produces 25 MB/s of deltas:
//! the server must hold only a bounded queue for it, drop it after `max_behind` (counted
//! in `slow_clients_dropped`), and close it with `TOO_SLOW` when it finally reads.
//!
//! The server runs in this test process, so its resident memory is this process's
//! (`VmRSS`). This file holds that one test alone: other tests running on parallel
//! threads would disturb the measurement.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bincode::{Decode, Encode};
use futures_util::{SinkExt, StreamExt};
use gaia_api::protocol::{ClientMsg, ServerMsg, close, decode_server, encode_client};
use gaia_gameserver::Config;
use gaia_gameserver::world::{MemberId, RestoreError, World};
use gaia_testkit::tokens;
use gaia_testkit::ws::Ws;
use tokio_tungstenite::MaybeTlsStream;
use tokio_tungstenite::tungstenite::Message;

use common::Server;

const NAME: &str = "gs-slow";
/// Change per tick. At 100 Hz an unbounded queue would grow by 25 MiB/s.
const NOISE: usize = 256 * 1024;
const STALL: Duration = Duration::from_secs(3);
/// Growth allowed over the stall. An unbounded queue would grow by ~75 MiB in `STALL`.
const BOUND: u64 = 32 * 1024 * 1024;

/// A world that changes `NOISE` bytes every tick.
#[derive(Default)]
struct Noisy {
    members: Vec<MemberId>,
}

#[derive(Debug, Encode, Decode, serde::Serialize, serde::Deserialize)]
struct Nothing;

#[derive(Debug, Encode, Decode, serde::Serialize, serde::Deserialize)]
struct Noise(Vec<u8>);

#[derive(Debug, Encode, Decode, serde::Serialize, serde::Deserialize)]
struct Members(Vec<MemberId>);

impl World for Noisy {
    type Action = Nothing;
    type Change = Noise;
    type View = Members;

    fn join(&mut self, member: MemberId, _name: &str, _delta: &mut Vec<Noise>) -> u32 {
        self.members.push(member);
        self.members.len() as u32
    }

    fn leave(&mut self, member: MemberId, _delta: &mut Vec<Noise>) {
        self.members.retain(|m| *m != member);
    }

    fn apply(&mut self, _: MemberId, _: Nothing, _: &mut Vec<Noise>) -> Result<(), String> {
        Ok(())
    }

    fn tick(&mut self, _tick: u64, delta: &mut Vec<Noise>) {
        delta.push(Noise(vec![0xa5; NOISE]));
    }

    fn view(&self) -> Members {
        Members(self.members.clone())
    }

    fn save(&self) -> Vec<u8> {
        Vec::new()
    }

    fn restore(_: &[u8]) -> Result<Self, RestoreError> {
        Err(RestoreError("not saved".into()))
    }
}

type Msg = ServerMsg<Members, Noise>;

/// Resident memory of this process, in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kb: u64 = line.trim_start_matches("VmRSS:").trim().trim_end_matches("kB").trim().parse().unwrap();
    kb * 1024
}

async fn metric(addr: SocketAddr, series: &str) -> f64 {
    let text = reqwest::get(format!("http://{addr}/metrics")).await.unwrap().text().await.unwrap();
    common::metric(&text, series)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_never_reads_is_dropped_and_memory_stays_bounded() {
    let config = Config {
        tick_hz: 100,
        delta_hz: 100,
        client_queue: 4,
        max_behind: Duration::from_secs(1),
        ..Default::default()
    };
    let Server { addr, url, shutdown, done: server, .. } =
        Server::with_world(NAME, config, Arc::new(|_: &str| Noisy::default())).await;

    // A small receive buffer: the kernel holds little of what the client does not read.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    let (mut ws, _): (Ws, _) =
        tokio_tungstenite::client_async(url.as_str(), MaybeTlsStream::Plain(stream)).await.unwrap();
    let token = tokens::join(NAME, "w", "sloth");
    ws.send(Message::Binary(encode_client(&ClientMsg::<Nothing>::Join { token }).into())).await.unwrap();

    // Keep up for half a second, so the world and the allocator are warm.
    let warm = Instant::now();
    let mut deltas = 0;
    while warm.elapsed() < Duration::from_millis(500) {
        let Some(Ok(Message::Binary(frame))) = ws.next().await else { panic!("connection lost while reading") };
        if let Msg::Delta { .. } = decode_server(&frame).unwrap() {
            deltas += 1;
        }
    }
    assert!(deltas > 10, "only {deltas} deltas in 500 ms");

    // Stop reading.
    let baseline = rss();
    let mut peak = baseline;
    let stalled = Instant::now();
    while stalled.elapsed() < STALL {
        peak = peak.max(rss());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let growth = peak.saturating_sub(baseline);
    eprintln!("RSS {} MiB, peak growth {} KiB over {STALL:?}", baseline >> 20, growth >> 10);
    assert!(growth < BOUND, "resident memory grew by {} MiB while a client did not read", growth >> 20);
    assert!(metric(addr, "gaia_gameserver_fell_behind_total").await >= 1.0);
    assert_eq!(metric(addr, "gaia_gameserver_slow_clients_dropped_total").await, 1.0);
    assert_eq!(metric(addr, "gaia_gameserver_resyncs_total").await, 0.0);

    // Reading at last: what was queued before it fell behind, then the close (or, if the
    // server gave up on the socket, a reset).
    let close = loop {
        let next = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.expect("server silent for 5 s");
        match next {
            Some(Ok(Message::Binary(frame))) => {
                decode_server::<Members, Noise>(&frame).unwrap();
            }
            Some(Ok(Message::Close(frame))) => break frame.map(|f| (u16::from(f.code), f.reason.to_string())),
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                eprintln!("connection ended without a close frame: {e}");
                break None;
            }
            None => break None,
        }
    };
    if let Some(close) = close {
        assert_eq!(close, (close::TOO_SLOW, "fell too far behind the world".into()));
        assert_eq!(metric(addr, r#"gaia_gameserver_closes_total{reason="too_slow"}"#).await, 1.0);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(addr, "gaia_gameserver_connections").await != 0.0 {
        assert!(Instant::now() < deadline, "the dropped connection is still counted as open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(metric(addr, "gaia_gameserver_slow_clients_dropped_total").await, 1.0);

    shutdown.cancel();
    server.await.unwrap().unwrap();
}

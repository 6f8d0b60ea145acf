//! What the game server's tests share: a [`Server`] running in the test's process on an
//! ephemeral port, and what it serves besides its clients (`/metrics`, `/readyz`).
//! Its clients' tokens and protocol are `gaia_testkit`'s (`tokens`, `ws`), which the tests
//! of other crates use too; starting a server is here, as `gaia_testkit` cannot depend on
//! this crate (see its crate doc).
#![allow(dead_code)] // each test file uses its own share of them
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use gaia_gameserver::world::{NewWorld, World};
use gaia_gameserver::{Config, Error, Stop};
use gaia_testkit::tokens;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A standalone game server (no control plane) on an ephemeral port, with the join
/// secret [`tokens::SECRET`]. It runs until told to stop (`shutdown`, or `drain`) or until
/// the test ends.
pub struct Server {
    pub name: String,
    pub addr: SocketAddr,
    /// Its WebSocket URL.
    pub url: String,
    pub shutdown: CancellationToken,
    pub drain: CancellationToken,
    /// What `run` returned.
    pub done: JoinHandle<Result<(), Error>>,
}

impl Server {
    /// The reference world, as `config` has it (bots and all), as server `name`.
    pub async fn start(name: &str, config: Config) -> Self {
        Self::spawn(name, config, gaia_gameserver::run).await
    }

    /// The reference world without bots: nothing moves but what the test's clients do.
    pub async fn quiet(name: &str, config: Config) -> Self {
        Self::start(name, Config { bots_per_world: 0, ..config }).await
    }

    /// Worlds of `new_world` instead of the reference world.
    pub async fn with_world<W: World>(name: &str, config: Config, new_world: NewWorld<W>) -> Self {
        Self::spawn(name, config, move |config, listener, stop| {
            gaia_gameserver::run_world(config, listener, new_world, stop)
        })
        .await
    }

    async fn spawn<F>(name: &str, config: Config, run: impl FnOnce(Config, TcpListener, Stop) -> F) -> Self
    where
        F: Future<Output = Result<(), Error>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (shutdown, drain) = (CancellationToken::new(), CancellationToken::new());
        let config = Config { name: name.into(), join_secret: tokens::SECRET.into(), ..config };
        let stop = Stop { shutdown: shutdown.clone(), drain: drain.clone() };
        let done = tokio::spawn(run(config, listener, stop));
        Self { name: name.into(), addr, url: gaia_gameserver::address(addr, None), shutdown, drain, done }
    }

    /// A join token for `player` in `world` on this server.
    pub fn token(&self, world: &str, player: &str) -> String {
        tokens::join(&self.name, world, player)
    }

    /// GETs `path`: the status and the body.
    pub async fn get(&self, path: &str) -> (u16, String) {
        let response = reqwest::get(format!("http://{}{path}", self.addr)).await.unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    pub async fn metrics(&self) -> String {
        let (status, text) = self.get("/metrics").await;
        assert_eq!(status, 200, "{text}");
        text
    }

    /// One sample of `/metrics`, e.g. `gaia_gameserver_closes_total{reason="idle"}`; 0 when
    /// the series does not exist yet.
    pub async fn metric(&self, series: &str) -> f64 {
        metric(&self.metrics().await, series)
    }

    /// Waits (up to 10 s) until `series` is at least `min`.
    pub async fn metric_reaches(&self, series: &str, min: f64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let value = self.metric(series).await;
            if value >= min {
                return;
            }
            assert!(Instant::now() < deadline, "{series} is {value}, never reached {min}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits (up to 10 s) for the server to exit, as it was told to; it must exit cleanly.
    pub async fn exited(self) {
        tokio::time::timeout(Duration::from_secs(10), self.done)
            .await
            .expect("server did not exit within 10 s")
            .unwrap()
            .unwrap();
    }

    /// Shuts the server down; it must exit cleanly.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.exited().await;
    }
}

/// One sample of the `/metrics` text `text`; 0 when the series does not exist yet.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |value| value.trim().parse().unwrap())
}

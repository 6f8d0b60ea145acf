//! The raw baseline (`gaia loadgen --baseline`): the same load against a minimal
//! tokio-tungstenite broadcast server, measured in the same run as Gaia, so Gaia's
//! figures can be given as ratios to it. The machine's speed drifts between days; the
//! ratio of two stacks measured minutes apart on it does not.
//!
//! [`server`] is the raw server (run as its own process, `gaia raw-server`: one process
//! cannot hold both ends of 10,000 connections under the open-files limit), [`wire`] its
//! frames, `client` one raw client. [`run`] starts the server, connects the clients, runs
//! a steady phase as the bots' (inputs at the bots' rate, its CPU and memory read off
//! `/proc` at its start and end), and returns the [`Baseline`]; [`Ratios`] compares a
//! run's [`Figures`] with it.
//!
//! Start with [`run`], then [`server`].

mod client;
mod compare;
pub mod server;
mod wire;

use std::ffi::OsString;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use gaia_api::process::Usage;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub(crate) use self::compare::Compared;
pub use self::compare::{Baseline, Figures, Ratios};
pub use self::server::ServerConfig;
use crate::progress::Progress;
use crate::report::latency_histogram;
use crate::resources::{of_process, process_use};
use crate::{ErrorTally, Phases, Settled};

/// How long the raw server may take to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Error messages kept as examples.
const EXAMPLES: usize = 3;

#[derive(Debug, Clone)]
pub struct Config {
    /// The program and arguments that start `gaia raw-server`; the flags of `server` follow.
    pub command: Vec<OsString>,
    pub server: ServerConfig,
    /// Raw clients: as many as the run has bots.
    pub connections: usize,
    /// The steady phase.
    pub duration: Duration,
    /// Inputs per connection per second in the steady phase.
    pub input_rate_hz: f64,
    /// Connections being opened at once.
    pub connect_concurrency: usize,
    /// Print a progress line to stderr this often; `None` prints none.
    pub progress_every: Option<Duration>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            command: vec!["gaia".into(), "raw-server".into()],
            server: ServerConfig::default(),
            connections: 1000,
            duration: Duration::from_secs(20),
            input_rate_hz: 1.0,
            connect_concurrency: 64,
            progress_every: None,
        }
    }
}

/// Starts the raw server process, measures it, stops it.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<Baseline> {
    let (program, args) = config.command.split_first().context("no command to start the raw server")?;
    let mut server = tokio::process::Command::new(program)
        .args(args)
        .args(config.server.args())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting the raw server ({})", program.to_string_lossy()))?;
    let pid = server.id().context("the raw server exited at once")?;
    let stdout = server.stdout.take().context("the raw server's stdout")?;
    let line = tokio::time::timeout(START_TIMEOUT, BufReader::new(stdout).lines().next_line())
        .await
        .context("the raw server did not print its address in time")?
        .context("reading the raw server's address")?
        .context("the raw server exited before printing its address")?;
    let address: SocketAddr =
        line.trim().parse().with_context(|| format!("the raw server printed {line:?}, not an address"))?;
    tracing::info!(%address, pid, connections = config.connections, "raw baseline: server started");
    let baseline = measure(&config, address, || of_process(pid), shutdown).await;
    server.start_kill().context("stopping the raw server")?;
    server.wait().await.context("waiting for the raw server")?;
    baseline
}

/// Connects the raw clients to the server at `address` and runs the steady phase;
/// `server_usage` samples the server process.
pub(crate) async fn measure(
    config: &Config,
    address: SocketAddr,
    server_usage: impl Fn() -> Option<Usage>,
    shutdown: CancellationToken,
) -> anyhow::Result<Baseline> {
    anyhow::ensure!(config.connections > 0, "the baseline needs at least 1 connection");
    anyhow::ensure!(config.connect_concurrency > 0, "connect concurrency must be at least 1");
    let phases = Arc::new(Phases {
        steady: CancellationToken::new(),
        stop: shutdown.child_token(),
        progress: Progress::named("baseline", config.connections)?,
    });
    if let Some(period) = config.progress_every {
        let (phases, stop) = (phases.clone(), phases.stop.clone());
        tokio::spawn(async move { phases.progress.print_every(period, stop).await });
    }
    let input_period = (config.input_rate_hz > 0.0).then(|| Duration::from_secs_f64(1.0 / config.input_rate_hz));
    let before = server_usage();
    let url: Arc<str> = format!("ws://{address}/").into();
    let permits = Arc::new(Semaphore::new(config.connect_concurrency));
    let (settled, mut all_settled) = mpsc::channel::<()>(1);
    let mut clients = JoinSet::new();
    for _ in 0..config.connections {
        let settled = Settled { _open: settled.clone() };
        clients.spawn(client::run(url.clone(), phases.clone(), permits.clone(), settled, input_period));
    }
    drop(settled);
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = all_settled.recv() => {}
    }

    let connected = phases.progress.joined() as u64;
    let (mut steady, mut server_use, mut loadgen_use) = (Duration::ZERO, None, None);
    if !shutdown.is_cancelled() && connected > 0 {
        tracing::info!(connected, "raw baseline: steady phase");
        let (start, loadgen_start, started) = (server_usage(), gaia_api::process::usage(), Instant::now());
        phases.steady.cancel();
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = tokio::time::sleep(config.duration) => {}
        }
        steady = started.elapsed();
        let (end, loadgen_end) = (server_usage(), gaia_api::process::usage());
        if let (Some(before), Some(start), Some(end)) = (before, start, end) {
            server_use = Some(process_use("raw-server", (before, start, end), Some(connected), steady));
        }
        loadgen_use = Some(process_use("loadgen", (loadgen_start, loadgen_start, loadgen_end), None, steady));
    }
    phases.stop.cancel();

    let mut baseline = Baseline {
        server: config.server.clone(),
        connections: config.connections,
        connected: 0,
        steady,
        interrupted: shutdown.is_cancelled(),
        inputs_expected: input_period.is_some_and(|period| steady >= period),
        inputs_sent: 0,
        replies: 0,
        replies_missing: 0,
        input_latency: latency_histogram()?,
        tick_latency: latency_histogram()?,
        frames: 0,
        connections_with_frames: 0,
        server_use,
        loadgen_use,
        errors: ErrorTally::default(),
    };
    while let Some(done) = clients.join_next().await {
        let outcome = done.context("a raw client task failed")?;
        if let Some(message) = outcome.error {
            baseline.errors.count += 1;
            if baseline.errors.examples.len() < EXAMPLES {
                baseline.errors.examples.push(message);
            }
        }
        let Some(stats) = outcome.stats else { continue };
        baseline.connected += 1;
        baseline.inputs_sent += stats.sent;
        baseline.replies += stats.ok;
        baseline.replies_missing += stats.missing;
        baseline.frames += stats.steady_frames;
        baseline.connections_with_frames += u64::from(stats.steady_frames > 0);
        for us in stats.input_latency_us {
            baseline.input_latency.saturating_record(us.max(1));
        }
        for us in stats.tick_latency_us {
            baseline.tick_latency.saturating_record(u64::from(us).max(1));
        }
    }
    Ok(baseline)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The raw server in this process and a few raw clients for a second: every client
    /// gets its group's frames (10 a second) and a reply to every input.
    #[tokio::test]
    async fn raw_clients_get_their_groups_frames_and_every_reply() {
        let shutdown = CancellationToken::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let server = ServerConfig { group_size: 2, frame_bytes: 38, ..Default::default() };
        tokio::spawn(server::run(server.clone(), listener, shutdown.clone()));
        let config = Config {
            server,
            connections: 5,
            duration: Duration::from_secs(1),
            input_rate_hz: 10.0,
            ..Default::default()
        };
        let usage = || Some(gaia_api::process::usage());
        let baseline = measure(&config, address, usage, shutdown.child_token()).await.unwrap();
        shutdown.cancel();

        assert!(baseline.problems().is_empty(), "{baseline}");
        assert_eq!((baseline.connected, baseline.connections_with_frames), (5, 5));
        // 10 ticks a second for about a second, and 10 replies.
        let per_connection = baseline.frames_per_connection_s();
        assert!((12.0..=28.0).contains(&per_connection), "{per_connection} frames per connection per s");
        assert!(baseline.inputs_sent >= 5 * 5, "{baseline}");
        assert_eq!(baseline.replies, baseline.inputs_sent);
        assert_eq!(baseline.input_latency.len(), baseline.replies);
        assert!(!baseline.tick_latency.is_empty());
        let server = baseline.server_use.as_ref().unwrap();
        assert_eq!(server.connections, Some(5));
        let figures = baseline.figures();
        assert!(figures.cpu_us_per_frame.is_some_and(|us| us > 0.0), "{figures:?}");
        assert!(figures.input_p99_us.is_some() && figures.tick_p99_us.is_some(), "{figures:?}");
    }
}

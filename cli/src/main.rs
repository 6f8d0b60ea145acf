//! `gaia`: one binary, one subcommand per deployable (as quilkin does).
//!
//! - `gaia run`: the embedded fleet (registry, allocator, autoscaler, controller) from a
//!   fleet YAML; game servers run as child processes of it (`gaia gameserver`).
//! - `gaia gameserver`: one game server, configured by `GAIA_*` variables.
//! - `gaia loadgen`: matchmaker + bots against an allocator, or against an embedded
//!   fleet it starts itself; exits non-zero unless the run was clean. With `--baseline`
//!   it first measures a raw tokio-tungstenite server (the hidden `gaia raw-server`,
//!   started as a child process) under the same load, and reports Gaia's figures as
//!   ratios to it.
//! - `gaia loadgen-curve`: the capacity curve, one `gaia loadgen` child process per bot
//!   count, as a table and a plot (docs/benchmarks.md).
//! - `gaia sdk-token`: prints a game server's SDK token, for a server started by hand.
//! - `gaia allocator`: the allocator and SDK API alone (services mode), over an in-memory
//!   registry or a Redis one shared by several allocator processes.
//! - `gaia bench-allocations`: the allocator benchmark (docs/benchmarks.md).
//! - `gaia simulate`: the autoscaler simulator's scenarios (docs/autoscaling.md).
//! - `gaia controller`, `gaia fleet-autoscaler`: the Kubernetes components; `gaia crdgen`
//!   writes their CRDs (docs/kubernetes.md).
//!
//! Each subcommand parses its config, then hands over to its library's `run`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use gaia_api::fleet::FleetConfig;
use gaia_api::protocol::Encoding;
use tokio_util::sync::CancellationToken;

mod allocator;
mod auth;
mod curve;
mod fake_llm;
mod kubernetes;
mod simulate;
use auth::{ApiAuthArgs, SdkTokenArgs, TlsArgs};

/// jemalloc: against glibc's allocator it saved CPU at a little more memory per
/// connection, and against mimalloc it used less memory for the same CPU (measured,
/// docs/benchmarks.md).
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(name = "gaia", version, about = "Gaia Fleet: game-server fleet for persistent worlds")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole fleet on this machine (embedded mode).
    Run(RunArgs),
    /// Run one game server (the controller starts these).
    Gameserver(Box<GameserverArgs>),
    /// Allocate worlds and drive bots in them, then print a report.
    Loadgen(Box<LoadgenArgs>),
    /// Run `gaia loadgen` once per bot count, each in a process of its own, and write the
    /// capacity curve: a markdown table and an SVG plot.
    LoadgenCurve(curve::CurveArgs),
    /// Print the SDK token (GAIA_SDK_TOKEN) of a game server, for one started by hand.
    SdkToken(SdkTokenArgs),
    /// Run the allocator and SDK API alone (services mode), over an in-memory or a shared
    /// Redis registry.
    Allocator(allocator::AllocatorArgs),
    /// Register stand-in servers and measure allocations/s and latency against allocators.
    BenchAllocations(BenchArgs),
    /// Simulate the autoscaler, controller and allocator over demand traces on a virtual
    /// clock, and compare policies.
    Simulate(simulate::SimulateArgs),
    /// Kubernetes: turn the Fleets of one namespace into game-server Pods.
    Controller(kubernetes::ControllerArgs),
    /// Kubernetes: scale the Fleets of one namespace by their FleetAutoscalers.
    FleetAutoscaler(kubernetes::AutoscalerArgs),
    /// Serve a fake OpenAI-compatible model (chat completions, embeddings) with a chosen
    /// latency and failure rate, for agents without a model (docs/agents.md).
    FakeLlm(fake_llm::FakeLlmArgs),
    /// Kubernetes: write the CRDs (Fleet, FleetAutoscaler, GameServer) and their
    /// kustomization, generated from the Rust types.
    Crdgen(kubernetes::CrdgenArgs),
    /// The raw tokio-tungstenite broadcast server `gaia loadgen --baseline` measures
    /// Gaia against; prints the address it listens on.
    #[command(hide = true)]
    RawServer(gaia_loadgen::baseline::ServerConfig),
}

#[derive(clap::Args)]
struct BenchArgs {
    /// Allocator base URLs (comma-separated); connections are spread over them.
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:7700")]
    allocator: Vec<String>,
    #[arg(long, default_value = "bench")]
    fleet: String,
    #[arg(long, value_delimiter = ',', default_value = "eu-west,us-east,ap-south")]
    regions: Vec<String>,
    /// Stand-in servers to register first; 0 registers none.
    #[arg(long, default_value_t = 10_000)]
    servers: usize,
    #[arg(long, default_value_t = 64)]
    worlds_per_server: u32,
    /// Closed-loop connections (requests in flight).
    #[arg(long, default_value_t = 32)]
    connections: usize,
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// The matchmaker token sent is the first; --sdk-secret signs the servers' SDK calls.
    #[command(flatten)]
    auth: ApiAuthArgs,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Fleet YAML; the built-in examples/fleet.yaml when unset.
    #[arg(long, env = "GAIA_CONFIG")]
    config: Option<PathBuf>,
    /// Where the allocator and SDK API listens.
    #[arg(long, env = "GAIA_API_LISTEN", default_value = "127.0.0.1:7700")]
    listen: SocketAddr,
    /// Join-token secret shared with the game servers; random when unset.
    #[arg(long, env = "GAIA_JOIN_SECRET", hide_env_values = true, default_value = "")]
    join_secret: String,
    #[command(flatten)]
    auth: ApiAuthArgs,
    #[command(flatten)]
    tls: TlsArgs,
    #[command(flatten)]
    leases: allocator::LeaseArgs,
    #[command(flatten)]
    stores: StoreArgs,
}

/// Where the embedded fleet's game servers checkpoint their worlds.
#[derive(clap::Args)]
struct StoreArgs {
    /// Hot checkpoint tier, `redis://host:port`.
    #[arg(long, env = "GAIA_REDIS_URL")]
    redis_url: Option<String>,
    /// Durable checkpoint tier, `postgres://…` or `sqlite:path`. With neither store set,
    /// a SQLite file in --data-dir.
    #[arg(long, env = "GAIA_DATABASE_URL")]
    database_url: Option<String>,
    #[arg(long, env = "GAIA_DATA_DIR", default_value = "gaia-data")]
    data_dir: PathBuf,
}

impl StoreArgs {
    fn apply(self, config: &mut gaia_embedded::Config) {
        config.redis_url = self.redis_url;
        config.database_url = self.database_url;
        config.data_dir = self.data_dir;
    }
}

#[derive(clap::Args)]
struct GameserverArgs {
    #[command(flatten)]
    config: gaia_gameserver::Config,
    /// Exit when the process that started this one dies (the controller sets it).
    #[arg(long, env = gaia_api::server_env::EXIT_WITH_PARENT, value_parser = clap::builder::BoolishValueParser::new())]
    exit_with_parent: bool,
}

#[derive(clap::Args)]
struct LoadgenArgs {
    /// Allocator to drive; unset: start an embedded fleet in this process.
    #[arg(long, env = "GAIA_ALLOCATOR_URL")]
    allocator: Option<String>,
    /// Fleet YAML for the embedded fleet; the built-in examples/fleet.yaml when unset.
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long, default_value = "town")]
    fleet: String,
    /// Regions to spread worlds over, comma-separated; all the fleet's when unset.
    #[arg(long, value_delimiter = ',')]
    regions: Vec<String>,
    #[arg(long, default_value_t = 1000)]
    bots: usize,
    /// Bots per world.
    #[arg(long, default_value_t = 30)]
    world_size: usize,
    /// Steady phase, after every bot has joined.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Inputs per bot per second.
    #[arg(long, default_value_t = 1.0)]
    input_rate: f64,
    /// Allocations and connects in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// How bots speak to game servers: `bincode` (binary frames) or `json` (text frames);
    /// see docs/protocol.md.
    #[arg(long, default_value = "bincode", value_parser = ["bincode", "json"])]
    encoding: String,
    /// With --allocator: a PEM certificate to trust for an `https://` allocator.
    #[arg(long, env = "GAIA_ALLOCATOR_CA", value_name = "FILE")]
    allocator_ca: Option<PathBuf>,
    /// Instead of bots: this many bursts that each take every free world slot of a region
    /// (regions in turn), timing how fast the autoscaler refills the buffer against the
    /// new servers' start (docs/autoscaling.md).
    #[arg(long, value_name = "BURSTS")]
    refill: Option<usize>,
    /// With the embedded fleet: this many bots of each world are agents that think
    /// through a fake OpenAI-compatible model served by this process (docs/agents.md).
    #[arg(long, value_name = "PER_WORLD")]
    agents: Option<u16>,
    /// The fake model's latency range, `MIN..MAX` (with --agents).
    #[arg(long, default_value = "1s..3s", value_parser = latency_range)]
    model_latency: (Duration, Duration),
    /// Model calls each game server makes at once (its GAIA_LLM_CONCURRENCY, with
    /// --agents). The default lets every agent of a full 10,000-bot server think at once,
    /// so the run measures the servers, not a queue in front of the model.
    #[arg(long, default_value_t = 1024)]
    model_concurrency: usize,
    /// First measure a raw tokio-tungstenite broadcast server (a child process) under the
    /// same load: --bots connections in groups of --world-size, a frame to each group 10
    /// times a second, --input-rate inputs per connection per second each answered at
    /// once. The report adds its latencies, CPU and memory, and Gaia's figures as ratios
    /// to them (docs/architecture.md, The raw baseline).
    #[arg(long, conflicts_with = "refill")]
    baseline: bool,
    /// Bytes of the raw server's frames (with --baseline): about the size of a Gaia Delta
    /// in the 10,000-bot run (380 B per bot per second).
    #[arg(long, default_value_t = 38, requires = "baseline")]
    baseline_frame_bytes: usize,
    /// The raw steady phase (with --baseline); --duration when unset.
    #[arg(long, value_parser = humantime::parse_duration, requires = "baseline")]
    baseline_duration: Option<Duration>,
    /// Also write the run's figures as JSON to FILE (what `gaia loadgen-curve` reads).
    #[arg(long, value_name = "FILE", conflicts_with = "refill")]
    report_json: Option<PathBuf>,
    /// The matchmaker sends the first --allocator-token; the embedded fleet takes them all.
    #[command(flatten)]
    auth: ApiAuthArgs,
    /// For the embedded fleet.
    #[command(flatten)]
    tls: TlsArgs,
    #[command(flatten)]
    stores: StoreArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colours for a terminal only: piped to a file, escape codes get in the way.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("gaia: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("gaia: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `shutdown` is cancelled on Ctrl-C (SIGINT), `drain` on SIGTERM (what Kubernetes and
/// the controller send to retire a server). A process that does not drain treats both
/// as shutdown; a second signal always shuts down.
fn stop_on_signal(drains: bool) -> gaia_gameserver::Stop {
    let stop = gaia_gameserver::Stop::default();
    let (shutdown, drain) = (stop.shutdown.clone(), stop.drain.clone());
    tokio::spawn(async move {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = term.recv() => {
                    if !drains || drain.is_cancelled() {
                        break;
                    }
                    tracing::info!("SIGTERM: draining");
                    drain.cancel();
                }
            }
        }
        tracing::info!("shutting down");
        shutdown.cancel();
    });
    stop
}

/// `1s..3s` -> (1 s, 3 s).
fn latency_range(s: &str) -> Result<(Duration, Duration), String> {
    let (low, high) = s.split_once("..").ok_or_else(|| format!("{s:?} is not MIN..MAX (e.g. 1s..3s)"))?;
    let parse = |d: &str| humantime::parse_duration(d).map_err(|e| format!("{d:?}: {e}"));
    let (low, high) = (parse(low)?, parse(high)?);
    if low > high {
        return Err(format!("{s:?}: MIN is above MAX"));
    }
    Ok((low, high))
}

/// Serves the fake model on an ephemeral port until `stop`; its API base URL.
async fn fake_model(latency: (Duration, Duration), stop: CancellationToken) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/v1", listener.local_addr()?);
    let config = gaia_ops::fake::FakeConfig { latency, ..Default::default() };
    tokio::spawn(gaia_ops::fake::serve(listener, config, stop));
    Ok(url)
}

fn fleet_config(path: Option<&PathBuf>) -> anyhow::Result<FleetConfig> {
    let text = match path {
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
        None => gaia_embedded::EXAMPLE_FLEET.to_string(),
    };
    let name = path.map_or_else(|| "examples/fleet.yaml".into(), |p| p.display().to_string());
    FleetConfig::from_yaml(&text).with_context(|| format!("in {name}"))
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    let stop = stop_on_signal(matches!(command, Command::Gameserver(_)));
    let shutdown = stop.shutdown.clone();
    match command {
        Command::Run(args) => {
            let mut config = gaia_embedded::Config::new(fleet_config(args.config.as_ref())?);
            config.join_secret = args.join_secret;
            config.registry.lease_ttl = args.leases.ttl()?;
            args.auth.apply(&mut config);
            config.tls = args.tls.files();
            args.stores.apply(&mut config);
            if let Some(path) = args.config.clone() {
                config.fleet_updates = Some(reload_on_sighup(path, config.fleets.clone()));
            }
            let listener =
                tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
            gaia_embedded::run(config, listener, shutdown).await?;
        }
        Command::Gameserver(args) => {
            let args = *args;
            if args.exit_with_parent {
                exit_with_parent()?;
            }
            let listener =
                gaia_gameserver::bind(args.config.listen).with_context(|| format!("binding {}", args.config.listen))?;
            gaia_gameserver::run(args.config, listener, stop).await?;
        }
        Command::Loadgen(args) => return loadgen(*args, shutdown).await,
        Command::LoadgenCurve(args) => return curve::run(args, shutdown).await,
        Command::SdkToken(args) => println!("{}", auth::sdk_token(&args)?),
        Command::FakeLlm(args) => fake_llm::run(args, shutdown).await?,
        Command::Allocator(args) => allocator::run(args, shutdown).await?,
        Command::BenchAllocations(args) => {
            let config = gaia_loadgen::allocations::BenchConfig {
                allocators: args.allocator,
                fleet: args.fleet,
                regions: args.regions,
                servers: args.servers,
                worlds_per_server: args.worlds_per_server,
                connections: args.connections,
                warmup: args.warmup,
                duration: args.duration,
                token: args.auth.allocator_tokens.first().cloned(),
                sdk_secret: args.auth.sdk_secret,
            };
            println!("{}", gaia_loadgen::allocations::run(config, shutdown).await?);
        }
        // CPU-bound and synchronous: off the runtime's workers.
        Command::Simulate(args) => tokio::task::spawn_blocking(move || simulate::run(args)).await??,
        Command::Controller(args) => kubernetes::controller(args, shutdown).await?,
        Command::FleetAutoscaler(args) => kubernetes::fleet_autoscaler(args, shutdown).await?,
        Command::Crdgen(args) => kubernetes::crdgen(&args)?,
        Command::RawServer(config) => {
            exit_with_parent()?;
            let listener = tokio::net::TcpListener::bind(config.listen)
                .await
                .with_context(|| format!("binding {}", config.listen))?;
            // The first line on stdout is how the process that started us finds us.
            println!("{}", listener.local_addr()?);
            gaia_loadgen::baseline::server::run(config, listener, shutdown).await;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Re-reads the fleet YAML at `path` on every SIGHUP and sends it; a file that does not
/// read or parse is reported and ignored.
fn reload_on_sighup(
    path: PathBuf,
    config: gaia_api::fleet::FleetConfig,
) -> tokio::sync::watch::Receiver<gaia_api::fleet::FleetConfig> {
    let (tx, rx) = tokio::sync::watch::channel(config);
    tokio::spawn(async move {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(hup) => hup,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP; the fleet config will not be reloaded");
                return;
            }
        };
        while hup.recv().await.is_some() {
            match fleet_config(Some(&path)) {
                Ok(config) => {
                    tracing::info!(path = %path.display(), "SIGHUP: fleet config reloaded");
                    if tx.send(config).is_err() {
                        return;
                    }
                }
                Err(e) => tracing::error!(error = %format!("{e:#}"), "SIGHUP: fleet config not reloaded"),
            }
        }
    });
    rx
}

/// Asks the kernel to SIGINT this process when its parent dies, so game servers never
/// outlive a crashed embedded fleet (SIGINT: stop and checkpoint, no control plane left
/// to drain to).
fn exit_with_parent() -> anyhow::Result<()> {
    let parent = nix::unistd::getppid();
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGINT).context("prctl(PR_SET_PDEATHSIG)")?;
    // The parent may have died before the call took effect.
    anyhow::ensure!(nix::unistd::getppid() == parent, "parent process exited before start-up finished");
    Ok(())
}

async fn loadgen(args: LoadgenArgs, shutdown: CancellationToken) -> anyhow::Result<ExitCode> {
    // The raw stack first, before the fleet exists, so the two do not share the machine.
    let baseline = if args.baseline {
        let config = gaia_loadgen::baseline::Config {
            command: vec![std::env::current_exe().context("finding this program")?.into(), "raw-server".into()],
            server: gaia_loadgen::baseline::ServerConfig {
                group_size: args.world_size,
                frame_bytes: args.baseline_frame_bytes,
                ..Default::default()
            },
            connections: args.bots,
            duration: args.baseline_duration.unwrap_or(args.duration),
            input_rate_hz: args.input_rate,
            connect_concurrency: args.concurrency,
            progress_every: Some(Duration::from_secs(1)),
        };
        tracing::info!(connections = config.connections, "measuring the raw baseline");
        Some(gaia_loadgen::baseline::run(config, shutdown.clone()).await?)
    } else {
        None
    };
    let mut config = gaia_loadgen::Config {
        fleet: args.fleet,
        regions: args.regions,
        bots: args.bots,
        world_size: args.world_size,
        duration: args.duration,
        input_rate_hz: args.input_rate,
        connect_concurrency: args.concurrency,
        allocator_token: args.auth.allocator_tokens.first().cloned(),
        allocator_ca_file: args.allocator_ca.clone(),
        progress_every: Some(Duration::from_secs(1)),
        encoding: if args.encoding == "json" { Encoding::Json } else { Encoding::Bincode },
        ..Default::default()
    };
    // With no allocator given, run the embedded fleet here on an ephemeral port.
    let fleet_stop = CancellationToken::new();
    let fleet = match args.allocator {
        Some(url) => {
            config.allocator_url = url;
            None
        }
        None => {
            let fleets = fleet_config(args.config.as_ref())?;
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let mut embedded = gaia_embedded::Config::new(fleets);
            args.auth.apply(&mut embedded);
            embedded.tls = args.tls.files();
            let scheme = if embedded.tls.is_some() { "https" } else { "http" };
            config.allocator_url = format!("{scheme}://{}", listener.local_addr()?);
            if let Some(tls) = &embedded.tls {
                config.allocator_ca_file = Some(tls.cert.clone());
            }
            args.stores.apply(&mut embedded);
            if let Some(agents) = args.agents {
                let model = fake_model(args.model_latency, fleet_stop.clone()).await?;
                tracing::info!(%model, agents, "agents think through the fake model");
                for fleet in &mut embedded.fleets.fleets {
                    fleet.template.env.insert("GAIA_LLM_URL".into(), model.clone());
                    fleet.template.env.insert("GAIA_AGENTS_PER_WORLD".into(), agents.to_string());
                    fleet.template.env.insert("GAIA_LLM_CONCURRENCY".into(), args.model_concurrency.to_string());
                }
            }
            Some(tokio::spawn(gaia_embedded::run(embedded, listener, fleet_stop.clone())))
        }
    };
    let report = async {
        let regions = tokio::select! {
            _ = shutdown.cancelled() => anyhow::bail!("interrupted while waiting for the fleet"),
            regions = gaia_loadgen::wait_ready(&config) => regions?,
        };
        if let Some(bursts) = args.refill {
            let report = gaia_loadgen::refill::run(&config, bursts, shutdown.clone()).await?;
            return Ok(Outcome::Refill(report));
        }
        tracing::info!(?regions, "fleet ready; starting bots");
        config.regions = regions;
        gaia_loadgen::run(config, shutdown.clone()).await.map(|r| Outcome::Bots(Box::new(r)))
    }
    .await;
    fleet_stop.cancel();
    if let Some(fleet) = fleet {
        fleet.await.context("embedded fleet")?.context("embedded fleet")?;
    }
    let passed = match report? {
        Outcome::Bots(mut report) => {
            report.baseline = baseline;
            println!("{report}");
            if let Some(path) = &args.report_json {
                gaia_loadgen::Summary::from(&*report).write_json(path)?;
            }
            report.is_clean()
        }
        Outcome::Refill(report) => {
            println!("{report}");
            report.passed()
        }
    };
    Ok(if passed { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// What `gaia loadgen` measured: bots, or the autoscaler's refills.
enum Outcome {
    Bots(Box<gaia_loadgen::Report>),
    Refill(gaia_loadgen::refill::RefillReport),
}

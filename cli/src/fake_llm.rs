//! `gaia fake-llm`: the fake OpenAI-compatible model server (`gaia_ops::fake`), for trying
//! agents without a model and for load tests. Point game servers at it with
//! `GAIA_LLM_URL=http://{listen}/v1`.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use gaia_ops::fake::FakeConfig;
use tokio_util::sync::CancellationToken;

#[derive(clap::Args)]
pub struct FakeLlmArgs {
    #[arg(long, default_value = "127.0.0.1:7800")]
    listen: SocketAddr,
    /// Each answer waits a latency drawn uniformly between these...
    #[arg(long, default_value = "0ms", value_parser = humantime::parse_duration)]
    latency_min: Duration,
    /// ...and this.
    #[arg(long, default_value = "0ms", value_parser = humantime::parse_duration)]
    latency_max: Duration,
    /// Share of calls (0 to 1) answered 503.
    #[arg(long, default_value_t = 0.0)]
    failure_rate: f64,
    /// Refuse calls without `Authorization: Bearer {key}`.
    #[arg(long, env = "GAIA_LLM_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    #[arg(long, default_value_t = 64)]
    dimensions: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

pub async fn run(args: FakeLlmArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    anyhow::ensure!((0.0..=1.0).contains(&args.failure_rate), "--failure-rate must be between 0 and 1");
    anyhow::ensure!(args.latency_min <= args.latency_max, "--latency-min must not exceed --latency-max");
    let listener =
        tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(url = %format!("http://{}/v1", listener.local_addr()?), "fake model server listening");
    let config = FakeConfig {
        latency: (args.latency_min, args.latency_max),
        failure_rate: args.failure_rate,
        api_key: args.api_key,
        dimensions: args.dimensions.max(1),
        seed: args.seed,
    };
    gaia_ops::fake::serve(listener, config, shutdown).await?;
    Ok(())
}

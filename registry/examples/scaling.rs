//! Cost of one allocation against the number of registered servers, in one process, for
//! each backend: `cargo run --release -p gaia-registry --example scaling [redis://...]`.
//!
//! For N in 1k, 10k, 100k servers (3 regions, room for 10,000 worlds each, so none fills) it allocates from 16 tasks
//! for 3 s and prints allocations/s and latency percentiles. Each allocation prefers a
//! random region, then the others, as matchmakers do; half of them carry a label
//! selector, so the index walk has something to skip. With a Redis URL it measures the
//! Redis backend (under a fresh key prefix, deleted afterwards) instead of memory.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use gaia_api::allocation::{AllocationRequest, Selector};
use gaia_api::gameserver::{GameServerState, RegisterRequest};
use gaia_registry::{MemoryRegistry, Registry, RegistryConfig};
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

const REGIONS: [&str; 3] = ["eu-west", "us-east", "ap-south"];
const TASKS: usize = 16;
const RUN: Duration = Duration::from_secs(3);

#[tokio::main]
async fn main() {
    let redis = std::env::args().nth(1);
    println!("backend: {}", redis.as_deref().unwrap_or("memory"));
    for servers in [1_000, 10_000, 100_000] {
        let prefix = format!("gaia-scaling:{}:", uuid::Uuid::new_v4());
        let config = RegistryConfig { lease_ttl: Duration::from_secs(600), ..Default::default() };
        let registry: Arc<dyn Registry> = match &redis {
            Some(url) => Arc::new(gaia_registry::redis::RedisRegistry::connect(url, &prefix, config).await.unwrap()),
            None => Arc::new(MemoryRegistry::new(config)),
        };
        fill(&registry, servers).await;
        let (count, latency) = drive(&registry).await;
        println!(
            "{servers:>7} servers: {:>8.0} allocations/s  p50 {:>6.1} µs  p99 {:>7.1} µs  max {:>8.1} µs",
            count as f64 / RUN.as_secs_f64(),
            latency.value_at_quantile(0.5) as f64 / 10.0,
            latency.value_at_quantile(0.99) as f64 / 10.0,
            latency.max() as f64 / 10.0,
        );
        if let Some(url) = &redis {
            clean(url, &prefix).await;
        }
    }
}

/// Registers and readies `n` servers; every tenth is labelled `mode: ranked`.
async fn fill(registry: &Arc<dyn Registry>, n: usize) {
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in (0..n).collect::<Vec<_>>().chunks(n.div_ceil(TASKS)) {
        let (registry, chunk) = (Arc::clone(registry), chunk.to_vec());
        tasks.spawn(async move {
            for i in chunk {
                let name = format!("s{i:06}");
                let mut labels = BTreeMap::new();
                if i % 10 == 0 {
                    labels.insert("mode".to_string(), "ranked".to_string());
                }
                let req = RegisterRequest {
                    fleet: "bench".into(),
                    region: REGIONS[i % REGIONS.len()].into(),
                    address: format!("ws://192.0.2.1:1/{name}"),
                    world_capacity: 10_000,
                    player_capacity: 2000,
                    labels,
                    health: serde_json::from_str(r#"{"periodSeconds":3600,"initialDelaySeconds":3600}"#).unwrap(),
                };
                registry.register(&name, req).await.unwrap();
                registry.transition(&name, GameServerState::Ready).await.unwrap();
            }
        });
    }
    tasks.join_all().await;
}

/// Allocates from [`TASKS`] tasks for [`RUN`]; latency in 0.1 µs units.
async fn drive(registry: &Arc<dyn Registry>) -> (u64, Histogram<u64>) {
    let end = Instant::now() + RUN;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..TASKS {
        let registry = Arc::clone(registry);
        tasks.spawn(async move {
            let mut latency = Histogram::<u64>::new(3).unwrap();
            let mut count = 0;
            let mut rng = rand::rngs::SmallRng::from_os_rng();
            while Instant::now() < end {
                let mut regions: Vec<String> = REGIONS.iter().map(|r| r.to_string()).collect();
                regions.swap(0, rng.random_range(0..REGIONS.len()));
                let selectors = if rng.random_bool(0.5) {
                    let ranked = BTreeMap::from([("mode".to_string(), "ranked".to_string())]);
                    vec![Selector { match_labels: ranked, ..Default::default() }, Selector::default()]
                } else {
                    Vec::new()
                };
                let req = AllocationRequest { fleet: "bench".into(), regions, selectors, ..Default::default() };
                let started = Instant::now();
                registry.allocate(&req).await.unwrap();
                latency.record((started.elapsed().as_nanos() / 100) as u64).unwrap();
                count += 1;
            }
            (count, latency)
        });
    }
    let mut total = (0, Histogram::<u64>::new(3).unwrap());
    for (count, latency) in tasks.join_all().await {
        total.0 += count;
        total.1.add(latency).unwrap();
    }
    total
}

async fn clean(url: &str, prefix: &str) {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}*")).query_async(&mut conn).await.unwrap();
    for chunk in keys.chunks(1000) {
        let _: () = redis::cmd("DEL").arg(chunk).query_async(&mut conn).await.unwrap();
    }
}

//! Checkpoint write throughput per store, written the way [`gaia_checkpoint::Tiers`] writes:
//! each round, every world's newest checkpoint in one batch per writer (a writer is one
//! game server with its own connection), ticks increasing round by round. One warm-up
//! round inserts the rows; the timed rounds overwrite them, as a running fleet does.
//!
//! ```text
//! cargo run --release -p gaia-checkpoint --example throughput [-- redis postgres sqlite]
//! ```
//!
//! Stores: `GAIA_TEST_REDIS_URL` (redis://127.0.0.1:6379), `GAIA_TEST_DATABASE_URL`
//! (postgres://postgres@127.0.0.1:5432/test), SQLite in a temp file. Prints a markdown
//! table; the worlds written are deleted afterwards.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use gaia_checkpoint::{Checkpoint, RedisStore, SqlStore, Store, Written};

const ROUNDS: u64 = 5;
/// (state bytes, worlds)
const SIZES: [(usize, usize); 2] = [(4 << 10, 2000), (64 << 10, 500)];
const WRITERS: [usize; 2] = [1, 4];

struct Row {
    tier: &'static str,
    state: usize,
    writers: usize,
    worlds: usize,
    elapsed: Duration,
    bytes: u64,
    /// Slowest single batch.
    slowest: Duration,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let wanted: Vec<String> = std::env::args().skip(1).collect();
    let wants = |tier: &str| wanted.is_empty() || wanted.iter().any(|w| w == tier);
    let redis_url = std::env::var("GAIA_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let database_url =
        std::env::var("GAIA_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let sqlite_path = std::env::temp_dir().join(format!("gaia-checkpoint-throughput-{}.db", uuid::Uuid::new_v4()));

    let mut rows = Vec::new();
    for (state, worlds) in SIZES {
        for writers in WRITERS {
            if wants("redis") {
                let mut stores: Vec<Arc<dyn Store>> = Vec::new();
                let prefix = format!("gaia-bench:{}:", uuid::Uuid::new_v4());
                for _ in 0..writers {
                    let store = RedisStore::connect(&redis_url).await.context("redis")?;
                    stores.push(Arc::new(store.with_prefix(prefix.clone())));
                }
                rows.push(measure("redis", &stores, state, worlds).await?);
            }
            if wants("postgres") {
                let mut stores: Vec<Arc<dyn Store>> = Vec::new();
                for _ in 0..writers {
                    stores.push(Arc::new(SqlStore::connect(&database_url).await.context("postgres")?));
                }
                rows.push(measure("postgres", &stores, state, worlds).await?);
            }
            if wants("sqlite") {
                let url = format!("sqlite:{}", sqlite_path.display());
                let mut stores: Vec<Arc<dyn Store>> = Vec::new();
                for _ in 0..writers {
                    stores.push(Arc::new(SqlStore::connect(&url).await.context("sqlite")?));
                }
                rows.push(measure("sqlite", &stores, state, worlds).await?);
            }
        }
    }
    for suffix in ["", "-wal", "-shm"] {
        let mut path = sqlite_path.clone().into_os_string();
        path.push(suffix);
        let _ = std::fs::remove_file(path);
    }

    println!("| store | state | writers | worlds | rounds | writes/s | MB/s | slowest batch |");
    println!("|---|---|---|---|---|---|---|---|");
    for r in rows {
        let secs = r.elapsed.as_secs_f64();
        let writes = (r.worlds as u64 * ROUNDS) as f64;
        println!(
            "| {} | {} KiB | {} | {} | {} | {:.0} | {:.1} | {} ms |",
            r.tier,
            r.state >> 10,
            r.writers,
            r.worlds,
            ROUNDS,
            writes / secs,
            r.bytes as f64 / secs / 1e6,
            r.slowest.as_millis(),
        );
    }
    Ok(())
}

/// `worlds` worlds split across `stores` (one writer each), one warm-up round, then
/// [`ROUNDS`] timed rounds with every writer sending its batch at once.
async fn measure(tier: &'static str, stores: &[Arc<dyn Store>], state: usize, worlds: usize) -> anyhow::Result<Row> {
    let run = uuid::Uuid::new_v4();
    let ids: Vec<String> = (0..worlds).map(|i| format!("bench-{run}-{i}")).collect();
    let batches = |tick: u64| -> Vec<Vec<Arc<Checkpoint>>> {
        let per = worlds.div_ceil(stores.len());
        ids.chunks(per)
            .map(|ids| {
                ids.iter()
                    .map(|id| {
                        let body: Vec<u8> = (0..state).map(|i| (i as u64 ^ tick) as u8).collect();
                        Arc::new(Checkpoint::new(id, 1, tick, 1, &body))
                    })
                    .collect()
            })
            .collect()
    };
    round(stores, &batches(0)).await?;

    let rounds: Vec<_> = (1..=ROUNDS).map(batches).collect();
    let mut slowest = Duration::ZERO;
    let mut bytes = 0;
    let started = Instant::now();
    for batches in &rounds {
        slowest = slowest.max(round(stores, batches).await?);
        bytes += batches.iter().flatten().map(|c| c.bytes().len() as u64).sum::<u64>();
    }
    let elapsed = started.elapsed();

    for id in &ids {
        stores[0].delete(id).await?;
    }
    eprintln!("{tier}: {} KiB x {worlds} worlds, {} writers: {elapsed:.2?}", state >> 10, stores.len());
    Ok(Row { tier, state, writers: stores.len(), worlds, elapsed, bytes, slowest })
}

/// Every writer sends its batch at once; answers the slowest batch's time.
async fn round(stores: &[Arc<dyn Store>], batches: &[Vec<Arc<Checkpoint>>]) -> anyhow::Result<Duration> {
    let writes = stores.iter().zip(batches).map(|(store, batch)| async move {
        let started = Instant::now();
        let answers = store.write(batch).await?;
        anyhow::ensure!(answers.iter().all(|w| *w == Written::Ok), "{}: not all written", store.kind());
        Ok(started.elapsed())
    });
    let times = futures_util::future::try_join_all(writes).await?;
    Ok(times.into_iter().max().unwrap_or_default())
}

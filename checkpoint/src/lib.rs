//! World checkpoints: what makes a world outlive the process that runs it.
//!
//! - [`format`]: the bytes of one checkpoint (header, state, checksum).
//! - [`Store`]: one tier behind one trait: [`RedisStore`] (hot), [`SqlStore`] on Postgres
//!   (durable) or SQLite (the embedded default, same sqlx code). Every write is fenced by
//!   the world's epoch, atomically in the store (a Lua script, a conditional upsert), so
//!   a server presumed dead that comes back cannot overwrite the world's new owner.
//! - [`Tiers`]: the writer a game server uses: worlds hand it their newest checkpoint
//!   ([`Tiers::put`], never waiting), and one task per tier writes what changed in
//!   batches on that tier's interval (hot ~1 s, durable ~30 s), retrying with backoff
//!   while the store is down. [`Tiers::flush`] writes everything now (drain, shutdown).
//!   [`Tiers::load`] finds the newest valid checkpoint of a world across tiers; corrupt
//!   ones are logged, counted and skipped.
//!
//! - [`MessageLog`]: the activity log (what was said in each world) on the same SQL
//!   stores, and [`LogWriter`], which batches a server's messages off the tick path.
//! - [`MemoryStore`]: agents' memories with a per-agent similarity search, on the same
//!   SQL stores or in the game server's own [`MemoryIndex`].
//!
//! Start with [`Store`], then [`Tiers`].

pub mod format;
mod log_writer;
mod memory_index;
mod memory_store;
mod message_log;
mod metrics;
mod redis_store;
mod sql_store;
mod tiers;

use async_trait::async_trait;
use bytes::Bytes;

pub use format::{Checkpoint, FormatError, Header};
pub use log_writer::{BATCH as LOG_BATCH, LogMetrics, LogWriter, QUEUE as LOG_QUEUE};
pub use memory_index::{INDEX_CAPACITY, MemoryIndex};
pub use memory_store::{MAX_K, MemoryRecord, MemoryStore, Recalled, SCANNED, cosine, rank};
pub use message_log::{Cursor, MAX_PAGE, Message, MessageLog};
pub use metrics::Metrics;
pub use redis_store::RedisStore;
pub use sql_store::SqlStore;
pub use tiers::{FlushError, LoadError, Tier, TierHealth, Tiers};

/// What a store did with one checkpoint of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// Stored: it is now the world's checkpoint in this store.
    Ok,
    /// Refused: the store holds a checkpoint of a later owner (`epoch` is theirs). The
    /// writer no longer owns the world and must stop running it.
    Fenced { epoch: u64 },
    /// Not stored: the store already holds a later tick of the same owner (a retried
    /// or reordered write). Harmless.
    Stale { tick: u64 },
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("sql: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("sql migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported store URL {0:?} (expected redis://, postgres:// or sqlite:)")]
    Url(String),
    #[error("store answered unexpectedly: {0}")]
    Protocol(String),
    /// The caller asked for something no store can do (a search for too many memories, a
    /// number past a BIGINT).
    #[error("invalid request: {0}")]
    Invalid(String),
}

impl StoreError {
    /// Short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Redis(_) => "redis",
            Self::Sql(_) => "sql",
            Self::Migrate(_) => "migrate",
            Self::Url(_) => "url",
            Self::Protocol(_) => "protocol",
            Self::Invalid(_) => "invalid",
        }
    }
}

/// One tier of checkpoint storage. Each store keeps the newest checkpoint per world.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// `redis`, `postgres` or `sqlite`: for logs and metric labels.
    fn kind(&self) -> &'static str;

    /// Writes a batch, each checkpoint fenced on its own: it is stored only if the store
    /// holds nothing for its world, or an older epoch, or the same epoch at a tick not
    /// later than its own. One answer per checkpoint, in order. A batch naming a world
    /// twice is written as if only its newest one were there. `Err` means the store
    /// could not be asked; nothing can be assumed written.
    async fn write(&self, batch: &[std::sync::Arc<Checkpoint>]) -> Result<Vec<Written>, StoreError>;

    /// The stored bytes of a world's checkpoint, unchecked ([`Checkpoint::decode`]
    /// checks them), or `None`.
    async fn read(&self, world_id: &str) -> Result<Option<Bytes>, StoreError>;

    /// Forgets a world (tests, tools).
    async fn delete(&self, world_id: &str) -> Result<(), StoreError>;
}

/// Opens a store from its URL: `redis://…`, `postgres://…`, or `sqlite:path` (created
/// if missing). SQL stores run their migrations.
pub async fn open(url: &str) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    if url.starts_with("redis://") || url.starts_with("rediss://") {
        Ok(std::sync::Arc::new(RedisStore::connect(url).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") || url.starts_with("sqlite:") {
        Ok(std::sync::Arc::new(SqlStore::connect(url).await?))
    } else {
        Err(StoreError::Url(url.to_string()))
    }
}

/// Keeps, for each world, only the newest checkpoint of `batch`; first-seen order.
pub(crate) fn newest_per_world(batch: &[std::sync::Arc<Checkpoint>]) -> Vec<usize> {
    let mut index: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    let mut order: Vec<usize> = Vec::new();
    for (i, c) in batch.iter().enumerate() {
        match index.get(c.world_id()) {
            Some(&j) if !c.is_newer_than(&batch[order[j]]) => {}
            Some(&j) => order[j] = i,
            None => {
                index.insert(c.world_id(), order.len());
                order.push(i);
            }
        }
    }
    order
}

/// One answer per checkpoint of `batch`, from the answers for the ones [`newest_per_world`]
/// kept (`order`): an older duplicate dropped from the write is answered as if written
/// just after its newer twin, against what the store then holds: `Fenced` by a later
/// owner, else `Stale`.
pub(crate) fn spread(batch: &[std::sync::Arc<Checkpoint>], order: &[usize], answers: &[Written]) -> Vec<Written> {
    let kept: std::collections::HashMap<&str, (usize, Written)> =
        order.iter().zip(answers).map(|(&i, &w)| (batch[i].world_id(), (i, w))).collect();
    batch
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let Some(&(j, answer)) = kept.get(c.world_id()) else { return Written::Stale { tick: c.tick() } };
            if j == i {
                return answer;
            }
            let twin = &batch[j];
            // (epoch, tick) the store holds after the twin's write.
            let (epoch, tick) = match answer {
                Written::Ok => (twin.epoch(), twin.tick()),
                // Stale is only ever behind the same owner.
                Written::Stale { tick } => (twin.epoch(), tick),
                Written::Fenced { epoch } => return Written::Fenced { epoch },
            };
            if epoch > c.epoch() { Written::Fenced { epoch } } else { Written::Stale { tick } }
        })
        .collect()
}

/// `url` with its password hidden, for logs and errors.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

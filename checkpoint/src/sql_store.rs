//! The durable tier: one row per world in `world_checkpoints`, on Postgres or SQLite
//! through the same sqlx `Any` code. A batch is one multi-row upsert whose `WHERE`
//! refuses older epochs and ticks (the fence), with `RETURNING` naming the rows it
//! wrote; the rest are looked up to tell fenced from stale.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, Row};

use crate::{Checkpoint, Store, StoreError, Written, newest_per_world};

/// The migrations for one kind of database. A database may hold migrations this build
/// does not know: a newer release's, run by its servers during a rolling update (or before
/// a rollback). They are left alone rather than refused, so older servers keep starting:
/// migrations only ever add (tables, columns with defaults, indexes), never change or drop
/// what an older release reads or writes.
fn migrator(sqlite: bool) -> Migrator {
    let mut migrator =
        if sqlite { sqlx::migrate!("./migrations/sqlite") } else { sqlx::migrate!("./migrations/postgres") };
    migrator.set_ignore_missing(true);
    migrator
}

/// Rows per statement: 5 parameters each, well under both databases' limits.
const ROWS: usize = 500;
/// Bytes of checkpoint data per statement.
const CHUNK_BYTES: usize = 8 << 20;

#[derive(Clone)]
pub struct SqlStore {
    pub(crate) pool: AnyPool,
    kind: &'static str,
    /// Statements of one batch in flight at once: the pool's size, so that none waits
    /// for a connection past the acquire timeout (which would fail the batch, and every
    /// retry of it).
    in_flight: usize,
}

/// Puts a SQLite file in WAL mode, so the game-server processes that share it can read
/// while one of them writes (writers wait for each other, up to the busy timeout).
///
/// Switching takes an exclusive lock that SQLite's busy timeout does not wait for: while
/// another connection reads, the switch fails with "database is locked" or leaves the
/// mode as it was. Servers opening a new file together would then fail to connect (and
/// sqlx would log an ERROR for each), so the switch is retried here until it takes. Once
/// the file is in WAL mode (a property of the file) nothing is switched.
async fn wal(conn: &mut sqlx::AnyConnection) -> Result<(), sqlx::Error> {
    const ATTEMPTS: u32 = 40;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mode = match sqlx::query_scalar::<_, String>("PRAGMA journal_mode = WAL").fetch_one(&mut *conn).await {
            Ok(mode) => mode,
            Err(e) if attempt < ATTEMPTS && is_busy(&e) => String::new(),
            Err(e) => return Err(e),
        };
        if mode.eq_ignore_ascii_case("wal") {
            return Ok(());
        }
        if attempt >= ATTEMPTS {
            return Err(sqlx::Error::Protocol(format!("SQLite stayed in journal mode {mode:?}, not WAL")));
        }
        tokio::time::sleep(Duration::from_millis(5 * u64::from(attempt))).await;
    }
}

/// SQLITE_BUSY or one of its extended codes (the low byte is the primary code).
fn is_busy(error: &sqlx::Error) -> bool {
    const SQLITE_BUSY: i64 = 5;
    match error {
        sqlx::Error::Database(e) => {
            e.code().and_then(|c| c.parse::<i64>().ok()).is_some_and(|c| c & 0xff == SQLITE_BUSY)
        }
        _ => false,
    }
}

impl SqlStore {
    /// Connects to `postgres://…` or `sqlite:path` (the file is created if missing) and
    /// runs the migrations. Acquiring a connection gives up after 2 s, so an outage is
    /// an error the writer retries, not a hang.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        install_default_drivers();
        let sqlite = url.starts_with("sqlite:");
        let url = if sqlite && !url.contains("mode=") {
            format!("{url}{}mode=rwc", if url.contains('?') { '&' } else { '?' })
        } else {
            url.to_string()
        };
        let connections = if sqlite { 2 } else { 4 };
        let pool = AnyPoolOptions::new()
            .max_connections(connections)
            .acquire_timeout(Duration::from_secs(2))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if sqlite {
                        sqlx::query("PRAGMA busy_timeout = 5000").execute(&mut *conn).await?;
                        wal(conn).await?;
                        sqlx::query("PRAGMA synchronous = NORMAL").execute(&mut *conn).await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        let migrator = migrator(sqlite);
        // Game servers of one fleet start together and may race to migrate a fresh
        // SQLite file (Postgres takes an advisory lock); the loser's retry finds it done.
        let mut attempt = 0;
        loop {
            attempt += 1;
            match migrator.run(&pool).await {
                Ok(()) => break,
                Err(e) if attempt < 5 => {
                    tracing::debug!(error = %e, attempt, "checkpoint migrations failed; retrying");
                    tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Self { pool, kind: if sqlite { "sqlite" } else { "postgres" }, in_flight: connections as usize })
    }

    /// Upserts `chunk` (one checkpoint per world); answers in order.
    async fn write_chunk(&self, chunk: &[&Arc<Checkpoint>]) -> Result<Vec<Written>, StoreError> {
        let mut sql = insert("world_checkpoints (world_id, epoch, tick, data, saved_at_ms)", chunk.len(), 5);
        sql.push_str(
            " ON CONFLICT (world_id) DO UPDATE SET epoch = excluded.epoch, tick = excluded.tick, \
             data = excluded.data, saved_at_ms = excluded.saved_at_ms \
             WHERE world_checkpoints.epoch < excluded.epoch \
             OR (world_checkpoints.epoch = excluded.epoch AND world_checkpoints.tick <= excluded.tick) \
             RETURNING world_id",
        );
        let now_ms = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        let mut query = sqlx::query(&sql);
        for c in chunk {
            query = query
                .bind(c.world_id().to_string())
                .bind(to_i64(c.epoch())?)
                .bind(to_i64(c.tick())?)
                .bind(c.bytes().to_vec())
                .bind(now_ms);
        }
        let written: std::collections::HashSet<String> = query
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|row| row.try_get::<String, _>(0))
            .collect::<Result<_, _>>()?;
        let refused: Vec<&str> = chunk.iter().map(|c| c.world_id()).filter(|id| !written.contains(*id)).collect();
        let stored = self.heads(&refused).await?;
        chunk
            .iter()
            .map(|c| {
                if written.contains(c.world_id()) {
                    return Ok(Written::Ok);
                }
                match stored.get(c.world_id()) {
                    Some(&(epoch, _)) if epoch > c.epoch() => Ok(Written::Fenced { epoch }),
                    Some(&(_, tick)) => Ok(Written::Stale { tick }),
                    None => Err(StoreError::Protocol(format!("world {:?} neither written nor stored", c.world_id()))),
                }
            })
            .collect()
    }

    /// Stored (epoch, tick) of each of `world_ids` that has a row.
    async fn heads(&self, world_ids: &[&str]) -> Result<std::collections::HashMap<String, (u64, u64)>, StoreError> {
        if world_ids.is_empty() {
            return Ok(Default::default());
        }
        let params: Vec<String> = (1..=world_ids.len()).map(|i| format!("${i}")).collect();
        let sql =
            format!("SELECT world_id, epoch, tick FROM world_checkpoints WHERE world_id IN ({})", params.join(","));
        let mut query = sqlx::query(&sql);
        for id in world_ids {
            query = query.bind(id.to_string());
        }
        let mut heads = std::collections::HashMap::new();
        for row in query.fetch_all(&self.pool).await? {
            let epoch: i64 = row.try_get(1)?;
            let tick: i64 = row.try_get(2)?;
            heads.insert(row.try_get(0)?, (epoch.max(0) as u64, tick.max(0) as u64));
        }
        Ok(heads)
    }
}

/// A number as the BIGINT columns hold it.
pub(crate) fn to_i64(n: u64) -> Result<i64, StoreError> {
    i64::try_from(n).map_err(|_| StoreError::Invalid(format!("{n} does not fit a BIGINT")))
}

/// `INSERT INTO {table} VALUES ($1, ..), ..`: `rows` rows of `columns` parameters each,
/// numbered in row order, for one statement per batch.
pub(crate) fn insert(table: &str, rows: usize, columns: usize) -> String {
    let row = |r: usize| {
        let params: Vec<String> = (1..=columns).map(|c| format!("${}", r * columns + c)).collect();
        format!("({})", params.join(","))
    };
    let values: Vec<String> = (0..rows).map(row).collect();
    format!("INSERT INTO {table} VALUES {}", values.join(","))
}

#[async_trait]
impl Store for SqlStore {
    fn kind(&self) -> &'static str {
        self.kind
    }

    async fn write(&self, batch: &[Arc<Checkpoint>]) -> Result<Vec<Written>, StoreError> {
        let mut order = newest_per_world(batch);
        // Every statement locks its rows in one global order, so two writers' overlapping
        // batches (an old and a new owner, two processes) cannot deadlock in Postgres.
        order.sort_unstable_by(|&a, &b| batch[a].world_id().cmp(batch[b].world_id()));
        let mut chunks: Vec<Vec<&Arc<Checkpoint>>> = Vec::new();
        let mut bytes = 0;
        for &i in &order {
            let c = &batch[i];
            match chunks.last_mut() {
                Some(chunk) if chunk.len() < ROWS && bytes + c.bytes().len() <= CHUNK_BYTES => chunk.push(c),
                _ => {
                    chunks.push(vec![c]);
                    bytes = 0;
                }
            }
            bytes += c.bytes().len();
        }
        // Made up front: a stream mapping borrowed chunks lazily is not provably `Send`.
        let writes: Vec<_> = chunks.iter().map(|c| self.write_chunk(c)).collect();
        let answers: Vec<Vec<Written>> =
            futures_util::stream::iter(writes).buffered(self.in_flight).try_collect().await?;
        let answers: Vec<Written> = answers.into_iter().flatten().collect();
        Ok(crate::spread(batch, &order, &answers))
    }

    async fn read(&self, world_id: &str) -> Result<Option<Bytes>, StoreError> {
        let row = sqlx::query("SELECT data FROM world_checkpoints WHERE world_id = $1")
            .bind(world_id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(row) => Some(Bytes::from(row.try_get::<Vec<u8>, _>(0)?)),
            None => None,
        })
    }

    async fn delete(&self, world_id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM world_checkpoints WHERE world_id = $1")
            .bind(world_id.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

//! The activity log: what was said in each world, kept for good (Convex kept AI Town's
//! messages in a table beside the world). A message is identified by (world, epoch, tick,
//! seq): a world restored from an older checkpoint runs at a newer epoch, so the lines
//! said after that checkpoint stay in the log beside what is said afterwards. Pages go
//! newest first, by that key ([`Cursor`]).
//!
//! [`MessageLog`] is the trait; [`crate::SqlStore`] implements it on Postgres (the table
//! hash-partitioned by world) and SQLite. [`crate::LogWriter`] batches a game server's
//! messages off the tick path.

use async_trait::async_trait;
use gaia_api::activity::WorldMessage;
use sqlx::Row;

use crate::sql_store::{insert, to_i64};
use crate::{SqlStore, StoreError};

/// One line said in a world.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub world_id: String,
    pub epoch: u64,
    pub tick: u64,
    /// Its place among the lines of the same tick.
    pub seq: u32,
    /// When it was said, Unix milliseconds.
    pub at_ms: u64,
    /// The entity that said it, and its name then.
    pub author_id: u32,
    pub author: String,
    pub text: String,
}

impl Message {
    pub fn cursor(&self) -> Cursor {
        Cursor { epoch: self.epoch, tick: self.tick, seq: self.seq }
    }

    /// As the API and the client protocol carry it (the world is known there).
    pub fn into_wire(self) -> WorldMessage {
        let Message { world_id: _, epoch, tick, seq, at_ms, author_id, author, text } = self;
        WorldMessage { epoch, tick, seq, at_ms, author_id, author, text }
    }
}

/// A place in a world's log: a page "before" it holds the messages older than it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor {
    pub epoch: u64,
    pub tick: u64,
    pub seq: u32,
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.epoch, self.tick, self.seq)
    }
}

impl std::str::FromStr for Cursor {
    type Err = String;

    /// `epoch.tick.seq` (1 to 20, 20 and 10 digits), as [`Cursor`]'s `Display` writes
    /// it. Numbers past a field's range mean its largest value: every message is before.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a cursor (epoch.tick.seq, as a page's `next` gives it)");
        let number = |part: Option<&str>, digits: usize| -> Result<u128, String> {
            let part = part.filter(|p| !p.is_empty() && p.len() <= digits && p.bytes().all(|b| b.is_ascii_digit()));
            part.and_then(|p| p.parse().ok()).ok_or_else(bad)
        };
        let mut parts = s.split('.');
        let epoch = number(parts.next(), 20)?;
        let tick = number(parts.next(), 20)?;
        let seq = number(parts.next(), 10)?;
        if parts.next().is_some() {
            return Err(bad());
        }
        let saturate = |n: u128| u64::try_from(n).unwrap_or(u64::MAX);
        Ok(Cursor { epoch: saturate(epoch), tick: saturate(tick), seq: u32::try_from(seq).unwrap_or(u32::MAX) })
    }
}

/// Most messages one page holds.
pub const MAX_PAGE: usize = 500;

#[async_trait]
pub trait MessageLog: Send + Sync + 'static {
    /// Appends a batch. A message already there (same key) is left as it was, so a
    /// retried batch writes nothing twice.
    async fn append(&self, batch: &[Message]) -> Result<(), StoreError>;

    /// Up to `limit` (at most [`MAX_PAGE`]) of the world's messages older than `before`
    /// (the newest when unset), newest first.
    async fn page(&self, world_id: &str, before: Option<Cursor>, limit: usize) -> Result<Vec<Message>, StoreError>;
}

/// Rows per insert: 8 parameters each, under SQLite's limit of 32,766.
const ROWS: usize = 1000;

#[async_trait]
impl MessageLog for SqlStore {
    async fn append(&self, batch: &[Message]) -> Result<(), StoreError> {
        for chunk in batch.chunks(ROWS) {
            let columns = "world_messages (world_id, epoch, tick, seq, at_ms, author_id, author, text)";
            let mut sql = insert(columns, chunk.len(), 8);
            sql.push_str(" ON CONFLICT (world_id, epoch, tick, seq) DO NOTHING");
            let mut query = sqlx::query(&sql);
            for m in chunk {
                query = query
                    .bind(m.world_id.clone())
                    .bind(to_i64(m.epoch)?)
                    .bind(to_i64(m.tick)?)
                    .bind(i64::from(m.seq) as i32)
                    .bind(to_i64(m.at_ms)?)
                    .bind(i64::from(m.author_id))
                    .bind(m.author.clone())
                    .bind(m.text.clone());
            }
            query.execute(&self.pool).await?;
        }
        Ok(())
    }

    async fn page(&self, world_id: &str, before: Option<Cursor>, limit: usize) -> Result<Vec<Message>, StoreError> {
        let limit = to_i64(limit.clamp(1, MAX_PAGE) as u64)?;
        let columns = "world_id, epoch, tick, seq, at_ms, author_id, author, text";
        let rows = match before {
            // Row-value comparison: both databases order (epoch, tick, seq) by the key.
            Some(c) => {
                let sql = format!(
                    "SELECT {columns} FROM world_messages WHERE world_id = $1 AND (epoch, tick, seq) < ($2, $3, $4) \
                     ORDER BY epoch DESC, tick DESC, seq DESC LIMIT $5"
                );
                // Past the columns' range, everything stored is before the cursor.
                let big = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
                sqlx::query(&sql)
                    .bind(world_id.to_string())
                    .bind(big(c.epoch))
                    .bind(big(c.tick))
                    .bind(i32::try_from(c.seq).unwrap_or(i32::MAX))
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?
            }
            None => {
                let sql = format!(
                    "SELECT {columns} FROM world_messages WHERE world_id = $1 \
                     ORDER BY epoch DESC, tick DESC, seq DESC LIMIT $2"
                );
                sqlx::query(&sql).bind(world_id.to_string()).bind(limit).fetch_all(&self.pool).await?
            }
        };
        rows.iter()
            .map(|row| {
                let n = |i: usize| row.try_get::<i64, _>(i).map(|v| v.max(0) as u64);
                Ok(Message {
                    world_id: row.try_get(0)?,
                    epoch: n(1)?,
                    tick: n(2)?,
                    seq: row.try_get::<i32, _>(3)?.max(0) as u32,
                    at_ms: n(4)?,
                    author_id: n(5)?.min(u64::from(u32::MAX)) as u32,
                    author: row.try_get(6)?,
                    text: row.try_get(7)?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_order_by_epoch_tick_seq() {
        let c = Cursor { epoch: 3, tick: 40, seq: 2 };
        assert_eq!(c.to_string().parse::<Cursor>(), Ok(c));
        for bad in ["", "1.2", "1.2.3.4", "a.b.c", "-1.2.3", "1.2.99999999999", "1..2", "+1.2.3"] {
            assert!(bad.parse::<Cursor>().is_err(), "{bad}");
        }
        let huge: Cursor = "99999999999999999999.1.4294967296".parse().unwrap();
        assert_eq!(huge, Cursor { epoch: u64::MAX, tick: 1, seq: u32::MAX });
        assert!(Cursor { epoch: 2, tick: 99, seq: 9 } < Cursor { epoch: 3, tick: 0, seq: 0 });
    }
}

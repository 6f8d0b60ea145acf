//! Agents' memories: what each agent of a world remembers (a text, how much it mattered,
//! its embedding), with a per-agent similarity search, as AI Town kept them beside its
//! world in Convex (with a vector index).
//!
//! [`MemoryStore`] is the trait. Two backends share one conformance suite:
//! [`crate::SqlStore`] keeps them in `agent_memories` beside the activity log (Postgres,
//! hash-partitioned by world; SQLite in embedded mode) and ranks an agent's newest
//! [`SCANNED`] rows in process; [`crate::MemoryIndex`] keeps them in the game server's
//! memory, for a server without a durable store. Both rank with [`rank`], so they answer alike.
//! pgvector, where it can be installed, would be a third backend (an index in the
//! database instead of a scan); it is not built yet.

use async_trait::async_trait;
use sqlx::Row;

use crate::sql_store::{insert, to_i64};
use crate::{SqlStore, StoreError};

/// Most memories one search answers.
pub const MAX_K: usize = 100;
/// The newest memories of an agent a search ranks (by id): older ones are kept in the
/// SQL store but no longer found, and forgotten by [`MemoryIndex`]. Bounds the work of
/// one search without an index in the database.
pub const SCANNED: usize = 2_000;

/// One memory of one agent.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryRecord {
    pub world_id: String,
    /// The agent (its entity id in the world).
    pub agent: u32,
    /// Chosen by the world, unique per agent; a later memory has a larger id (ties in a
    /// search go to the larger, and the newest [`SCANNED`] are those searched).
    pub id: u64,
    /// When it was remembered, Unix milliseconds.
    pub at_ms: u64,
    pub text: String,
    /// How much it mattered, as the world rates it (the town: 0 to 10).
    pub importance: f32,
    pub embedding: Vec<f32>,
}

/// A memory a search found, and how near it is to the query (cosine, -1 to 1).
#[derive(Debug, Clone, PartialEq)]
pub struct Recalled {
    pub record: MemoryRecord,
    pub score: f32,
}

#[async_trait]
pub trait MemoryStore: Send + Sync + 'static {
    /// Stores a batch. A memory already there (same world, agent and id) is left as it
    /// was, so a retried batch, or one run again after a restore, stores nothing twice.
    async fn remember(&self, batch: &[MemoryRecord]) -> Result<(), StoreError>;

    /// The `k` (at most [`MAX_K`]; more is [`StoreError::Invalid`]) of the agent's
    /// newest [`SCANNED`] memories nearest to `query` by cosine, nearest first, ties
    /// newest first. Memories whose embedding has another length than `query` (another
    /// embedding model) cannot be compared and are not found.
    async fn search(&self, world_id: &str, agent: u32, query: &[f32], k: usize) -> Result<Vec<Recalled>, StoreError>;
}

pub(crate) fn check_k(k: usize) -> Result<(), StoreError> {
    if k > MAX_K {
        return Err(StoreError::Invalid(format!("k = {k}: a search answers at most {MAX_K} memories")));
    }
    Ok(())
}

/// Cosine similarity; 0 when either vector is all zeros or a value is not finite.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    let score = dot / (norm(a) * norm(b));
    if score.is_finite() { score.clamp(-1.0, 1.0) } else { 0.0 }
}

/// The `k` of `records` nearest to `query`, nearest first, ties to the larger id; those
/// of another dimension are left out. Every backend ranks with this.
pub fn rank(records: impl IntoIterator<Item = MemoryRecord>, query: &[f32], k: usize) -> Vec<Recalled> {
    let mut found: Vec<Recalled> = records
        .into_iter()
        .filter(|r| r.embedding.len() == query.len())
        .map(|record| Recalled { score: cosine(query, &record.embedding), record })
        .collect();
    found.sort_by(|a, b| b.score.total_cmp(&a.score).then(b.record.id.cmp(&a.record.id)));
    found.truncate(k);
    found
}

/// Rows per insert: 7 parameters each, under SQLite's limit of 32,766.
const ROWS: usize = 1000;

/// An embedding as stored: f32s, little-endian.
fn to_bytes(embedding: &[f32]) -> Vec<u8> {
    embedding.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// `None` for bytes that are not whole f32s (the row is then not found).
fn from_bytes(bytes: &[u8]) -> Option<Vec<f32>> {
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    Some(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
}

#[async_trait]
impl MemoryStore for SqlStore {
    async fn remember(&self, batch: &[MemoryRecord]) -> Result<(), StoreError> {
        for chunk in batch.chunks(ROWS) {
            let mut sql =
                insert("agent_memories (world_id, agent, id, at_ms, text, importance, embedding)", chunk.len(), 7);
            sql.push_str(" ON CONFLICT (world_id, agent, id) DO NOTHING");
            let mut query = sqlx::query(&sql);
            for m in chunk {
                query = query
                    .bind(m.world_id.clone())
                    .bind(i64::from(m.agent))
                    .bind(to_i64(m.id)?)
                    .bind(to_i64(m.at_ms)?)
                    .bind(m.text.clone())
                    // A double in both databases: sqlx's `Any` reads SQLite's REAL as one.
                    .bind(f64::from(m.importance))
                    .bind(to_bytes(&m.embedding));
            }
            query.execute(&self.pool).await?;
        }
        Ok(())
    }

    async fn search(&self, world_id: &str, agent: u32, query: &[f32], k: usize) -> Result<Vec<Recalled>, StoreError> {
        check_k(k)?;
        if k == 0 {
            return Ok(Vec::new());
        }
        // The key's prefix: one partition, one index range, newest first.
        let rows = sqlx::query(
            "SELECT id, at_ms, text, importance, embedding FROM agent_memories \
             WHERE world_id = $1 AND agent = $2 ORDER BY id DESC LIMIT $3",
        )
        .bind(world_id.to_string())
        .bind(i64::from(agent))
        .bind(SCANNED as i64)
        .fetch_all(&self.pool)
        .await?;
        let mut records = Vec::with_capacity(rows.len());
        for row in &rows {
            let bytes: Vec<u8> = row.try_get(4)?;
            let Some(embedding) = from_bytes(&bytes) else { continue };
            records.push(MemoryRecord {
                world_id: world_id.to_string(),
                agent,
                id: row.try_get::<i64, _>(0)?.max(0) as u64,
                at_ms: row.try_get::<i64, _>(1)?.max(0) as u64,
                text: row.try_get(2)?,
                importance: row.try_get::<f64, _>(3)? as f32,
                embedding,
            });
        }
        Ok(rank(records, query, k))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embeddings_round_trip_as_little_endian_bytes() {
        let v = vec![1.0, -0.5, f32::MIN_POSITIVE, 3.25];
        assert_eq!(from_bytes(&to_bytes(&v)), Some(v));
        assert_eq!(to_bytes(&[1.0]), [0, 0, 0x80, 0x3f]);
        assert_eq!(from_bytes(&[1, 2, 3]), None);
    }

    #[test]
    fn cosine_is_zero_without_a_direction() {
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 0.0]), 0.0);
        assert_eq!(cosine(&[f32::NAN, 1.0], &[1.0, 0.0]), 0.0);
        assert!((cosine(&[2.0, 0.0], &[1.0, 0.0]) - 1.0).abs() < 1e-6);
    }
}

//! Agents' memories: what each agent of a world remembers (a text, how much it mattered,
//! its embedding), with a per-agent similarity search, as AI Town kept them beside its
//! world in Convex (with a vector index).
//!
//! [`MemoryStore`] is the trait. Two backends share one conformance suite:
//! [`crate::SqlStore`] keeps them in `agent_memories` beside the activity log (Postgres,
//! hash-partitioned by world; SQLite in embedded mode) and ranks an agent's newest
//! [`SCANNED`] rows in process; [`MemoryIndex`] keeps them in the game server's memory,
//! for a server without a durable store. Both rank with [`rank`], so they answer alike.
//! pgvector, where it can be installed, would be a third backend (an index in the
//! database instead of a scan); it is not built yet.

use std::collections::{BTreeMap, HashMap, VecDeque};

use async_trait::async_trait;
use parking_lot::Mutex;
use sqlx::Row;

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

fn check_k(k: usize) -> Result<(), StoreError> {
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

/// Memories a [`MemoryIndex`] holds by default, all agents of all worlds together.
pub const INDEX_CAPACITY: usize = 100_000;

/// The game server's own index: every agent's newest [`SCANNED`] memories, in process,
/// and at most a capacity in all (past it, the memories stored first go first: worlds
/// come and go on a server, and nothing else would ever forget theirs). Gone with the
/// process, so only for a server without a durable store.
pub struct MemoryIndex {
    inner: Mutex<Indexed>,
    capacity: usize,
}

#[derive(Default)]
struct Indexed {
    agents: HashMap<(String, u32), BTreeMap<u64, MemoryRecord>>,
    /// Every memory held, in the order stored (some may have gone already, trimmed as
    /// older than their agent's newest [`SCANNED`]).
    order: VecDeque<((String, u32), u64)>,
    held: usize,
}

impl Default for MemoryIndex {
    fn default() -> Self {
        Self::with_capacity(INDEX_CAPACITY)
    }
}

impl MemoryIndex {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_capacity(capacity: usize) -> Self {
        Self { inner: Mutex::new(Indexed::default()), capacity: capacity.max(1) }
    }

    /// Memories held now.
    pub fn len(&self) -> usize {
        self.inner.lock().held
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Indexed {
    fn forget(&mut self, key: &(String, u32), id: u64) {
        let Some(memories) = self.agents.get_mut(key) else { return };
        if memories.remove(&id).is_some() {
            self.held -= 1;
        }
        if memories.is_empty() {
            self.agents.remove(key);
        }
    }
}

#[async_trait]
impl MemoryStore for MemoryIndex {
    async fn remember(&self, batch: &[MemoryRecord]) -> Result<(), StoreError> {
        let mut inner = self.inner.lock();
        for record in batch {
            let key = (record.world_id.clone(), record.agent);
            let memories = inner.agents.entry(key.clone()).or_default();
            if memories.contains_key(&record.id) {
                continue;
            }
            memories.insert(record.id, record.clone());
            // Only the newest are ever searched: forget the rest.
            let oldest = (memories.len() > SCANNED).then(|| memories.keys().next().copied()).flatten();
            inner.held += 1;
            inner.order.push_back((key.clone(), record.id));
            if let Some(oldest) = oldest {
                inner.forget(&key, oldest);
            }
            while inner.held > self.capacity {
                let Some((key, id)) = inner.order.pop_front() else { break };
                inner.forget(&key, id);
            }
            // The order also lists memories trimmed above: drop them once they are most.
            if inner.order.len() > 2 * inner.held.max(SCANNED) {
                let Indexed { agents, order, .. } = &mut *inner;
                order.retain(|(key, id)| agents.get(key).is_some_and(|m| m.contains_key(id)));
            }
        }
        Ok(())
    }

    async fn search(&self, world_id: &str, agent: u32, query: &[f32], k: usize) -> Result<Vec<Recalled>, StoreError> {
        check_k(k)?;
        // Ranked outside the lock: a copy of at most SCANNED records.
        let records: Vec<MemoryRecord> = match self.inner.lock().agents.get(&(world_id.to_string(), agent)) {
            Some(memories) => memories.values().cloned().collect(),
            None => return Ok(Vec::new()),
        };
        Ok(rank(records, query, k))
    }
}

/// Rows per insert: 7 parameters each, under SQLite's limit of 32,766.
const ROWS: usize = 1000;

fn to_i64(n: u64) -> Result<i64, StoreError> {
    i64::try_from(n).map_err(|_| StoreError::Invalid(format!("{n} does not fit a BIGINT")))
}

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
            let mut sql = String::from(
                "INSERT INTO agent_memories (world_id, agent, id, at_ms, text, importance, embedding) VALUES ",
            );
            for i in 0..chunk.len() {
                let p = i * 7;
                if i > 0 {
                    sql.push(',');
                }
                let params: Vec<String> = (1..=7).map(|k| format!("${}", p + k)).collect();
                sql.push_str(&format!("({})", params.join(",")));
            }
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

    fn record(world_id: &str, agent: u32, id: u64) -> MemoryRecord {
        MemoryRecord {
            world_id: world_id.into(),
            agent,
            id,
            at_ms: 0,
            text: format!("{world_id}/{agent}/{id}"),
            importance: 0.0,
            embedding: vec![1.0],
        }
    }

    #[tokio::test]
    async fn the_index_holds_its_capacity_and_forgets_what_was_stored_first() {
        let index = MemoryIndex::with_capacity(3);
        index.remember(&[record("a", 1, 1), record("a", 1, 2), record("b", 1, 1)]).await.unwrap();
        index.remember(&[record("a", 1, 1)]).await.unwrap();
        assert_eq!(index.len(), 3, "a memory stored again is not held twice");
        index.remember(&[record("b", 2, 1), record("b", 2, 2)]).await.unwrap();
        assert_eq!(index.len(), 3);
        let texts = |found: Vec<Recalled>| found.into_iter().map(|r| r.record.text).collect::<Vec<_>>();
        assert!(index.search("a", 1, &[1.0], 10).await.unwrap().is_empty(), "world a's went first");
        assert_eq!(texts(index.search("b", 2, &[1.0], 10).await.unwrap()), ["b/2/2", "b/2/1"]);
        assert_eq!(texts(index.search("b", 1, &[1.0], 10).await.unwrap()), ["b/1/1"]);
    }

    #[tokio::test]
    async fn the_index_keeps_an_agents_newest_and_its_books_stay_small() {
        let index = MemoryIndex::new();
        for id in 0..(3 * SCANNED as u64) {
            index.remember(&[record("w", 1, id)]).await.unwrap();
        }
        assert_eq!(index.len(), SCANNED);
        assert!(index.inner.lock().order.len() <= 2 * SCANNED + 1);
        let found = index.search("w", 1, &[1.0], 1).await.unwrap();
        assert_eq!(found[0].record.id, 3 * SCANNED as u64 - 1);
    }

    #[test]
    fn cosine_is_zero_without_a_direction() {
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 0.0]), 0.0);
        assert_eq!(cosine(&[f32::NAN, 1.0], &[1.0, 0.0]), 0.0);
        assert!((cosine(&[2.0, 0.0], &[1.0, 0.0]) - 1.0).abs() < 1e-6);
    }
}

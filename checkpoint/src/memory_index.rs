//! The game server's own memory store ([`MemoryIndex`]), for a server without a durable
//! one: the agents' memories in this process, ranked as the SQL store ranks them.

use std::collections::{BTreeMap, HashMap, VecDeque};

use async_trait::async_trait;
use parking_lot::Mutex;

use crate::StoreError;
use crate::memory_store::{MemoryRecord, MemoryStore, Recalled, SCANNED, check_k, rank};

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

#[cfg(test)]
mod tests {
    use super::*;

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
}

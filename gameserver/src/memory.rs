//! The memory lane: runs worlds' `Remember` and `Recall` operations against the server's
//! memory store ([`gaia_checkpoint::MemoryStore`]): the durable SQL store the checkpoints
//! and the activity log use when the server has one (so memories outlive the server and
//! follow a world that moves), else an index in this process ([`MemoryIndex`]).

use std::sync::Arc;

use gaia_checkpoint::{MAX_K, MemoryIndex, MemoryRecord, MemoryStore, StoreError};
use gaia_ops::{LaneConfig, Provider, ProviderError, RecalledMemory, Request, Response};

/// Store calls at once: a few connections' worth (the SQL pool has 2 to 4, shared with
/// the checkpoints and the log).
const CONCURRENCY: usize = 4;
/// Operations that may wait behind them.
const QUEUE: usize = 4096;

pub struct Memories {
    store: Arc<dyn MemoryStore>,
}

impl Memories {
    pub fn new(store: Arc<dyn MemoryStore>) -> Self {
        Self { store }
    }

    /// Over `store` when there is one, else over a new [`MemoryIndex`].
    pub fn over(store: Option<Arc<dyn MemoryStore>>) -> Self {
        Self::new(store.unwrap_or_else(|| Arc::new(MemoryIndex::new())))
    }

    pub fn lane() -> LaneConfig {
        LaneConfig { concurrency: CONCURRENCY, queue: QUEUE, ..LaneConfig::default() }
    }
}

/// A store that cannot be asked (down, timed out) may answer later; a request it refuses
/// never will.
fn failed(e: StoreError) -> ProviderError {
    match e {
        StoreError::Invalid(_) => ProviderError::permanent(e.to_string()),
        _ => ProviderError::retryable(e.to_string()),
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[async_trait::async_trait]
impl Provider for Memories {
    async fn run(&self, request: &Request) -> Result<Response, ProviderError> {
        match request {
            Request::Remember(r) => {
                let record = MemoryRecord {
                    world_id: r.world_id.clone(),
                    agent: r.agent,
                    id: r.id,
                    // A retry stamps a later time, but the first one stored is kept.
                    at_ms: now_ms(),
                    text: r.text.clone(),
                    importance: r.importance,
                    embedding: r.embedding.clone(),
                };
                self.store.remember(&[record]).await.map_err(failed)?;
                Ok(Response::Remembered)
            }
            Request::Recall(r) => {
                let k = usize::try_from(r.k).unwrap_or(MAX_K);
                let found = self.store.search(&r.world_id, r.agent, &r.query, k).await.map_err(failed)?;
                let memories = found
                    .into_iter()
                    .map(|f| RecalledMemory {
                        id: f.record.id,
                        at_ms: f.record.at_ms,
                        text: f.record.text,
                        importance: f.record.importance,
                        score: f.score,
                    })
                    .collect();
                Ok(Response::Memories { memories })
            }
            other => Err(ProviderError::permanent(format!("the memory lane does not run {:?}", other.kind()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use gaia_ops::{RecallRequest, RememberRequest};

    use super::*;

    #[tokio::test]
    async fn remembers_and_recalls_through_the_store() {
        let memories = Memories::over(None);
        let remember = |id: u64, text: &str, embedding: Vec<f32>| {
            Request::Remember(RememberRequest {
                world_id: "w".into(),
                agent: 1,
                id,
                text: text.into(),
                importance: 2.0,
                embedding,
            })
        };
        assert_eq!(memories.run(&remember(1, "bread", vec![1.0, 0.0])).await, Ok(Response::Remembered));
        assert_eq!(memories.run(&remember(2, "rain", vec![0.0, 1.0])).await, Ok(Response::Remembered));
        let recall =
            |k: u32| Request::Recall(RecallRequest { world_id: "w".into(), agent: 1, query: vec![1.0, 0.1], k });
        let Ok(Response::Memories { memories: found }) = memories.run(&recall(1)).await else { panic!() };
        assert_eq!(found.len(), 1);
        assert_eq!((found[0].id, found[0].text.as_str(), found[0].importance), (1, "bread", 2.0));
        // Too many asked for: refused for good, not retried.
        let e = memories.run(&recall(u32::MAX)).await.unwrap_err();
        assert!(!e.retryable, "{e}");
        let chat = Request::Embed(gaia_ops::EmbedRequest { input: "x".into() });
        assert!(!memories.run(&chat).await.unwrap_err().retryable);
    }
}

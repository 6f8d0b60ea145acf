//! Agents' memories: one conformance suite for every [`MemoryStore`], run against the
//! game server's in-process [`MemoryIndex`], SQLite and real Postgres (partitioned table;
//! skipped when unreachable unless `REQUIRE_SERVICES` is set, see `common`): nearest
//! first by cosine with ties newest first, agents and worlds kept apart, a retried batch
//! stores nothing twice, only the newest `SCANNED` searched, bad input refused.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod common;

use gaia_checkpoint::{MAX_K, MemoryIndex, MemoryRecord, MemoryStore, SCANNED, StoreError};

use common::world;

fn memory(world_id: &str, agent: u32, id: u64, text: &str, embedding: &[f32]) -> MemoryRecord {
    MemoryRecord {
        world_id: world_id.into(),
        agent,
        id,
        at_ms: 1_700_000_000_000 + id,
        text: text.into(),
        importance: id as f32 / 2.0,
        embedding: embedding.to_vec(),
    }
}

async fn texts(store: &dyn MemoryStore, world_id: &str, agent: u32, query: &[f32], k: usize) -> Vec<String> {
    let found = store.search(world_id, agent, query, k).await.unwrap();
    found.into_iter().map(|r| r.record.text).collect()
}

async fn nearest_first_with_every_field_and_its_score(store: &dyn MemoryStore) {
    let w = world();
    let batch = [
        memory(&w, 1, 1, "bob likes the harbour", &[1.0, 0.0, 0.0]),
        memory(&w, 1, 2, "the well is dry", &[0.0, 1.0, 0.0]),
        memory(&w, 1, 3, "boats in the harbour", &[0.9, 0.1, 0.0]),
        memory(&w, 1, 4, "rain tomorrow", &[0.0, 0.2, 0.9]),
    ];
    store.remember(&batch).await.unwrap();
    let found = store.search(&w, 1, &[2.0, 0.0, 0.0], 3).await.unwrap();
    let got: Vec<&str> = found.iter().map(|r| r.record.text.as_str()).collect();
    // The last two both score 0: the newer comes first.
    assert_eq!(got, ["bob likes the harbour", "boats in the harbour", "rain tomorrow"]);
    assert_eq!(found[0].record, batch[0], "every field comes back");
    assert!((found[0].score - 1.0).abs() < 1e-6, "{}", found[0].score);
    assert!((found[1].score - 0.9 / 0.82f32.sqrt()).abs() < 1e-5, "{}", found[1].score);
    assert_eq!(found[2].score, 0.0);
    assert_eq!(texts(store, &w, 1, &[0.0, 0.0, 1.0], 1).await, ["rain tomorrow"]);
    assert_eq!(texts(store, &w, 1, &[1.0, 0.0, 0.0], 10).await.len(), 4, "k past what there is: all");
    assert!(texts(store, &w, 1, &[1.0, 0.0, 0.0], 0).await.is_empty());
}

async fn ties_go_to_the_newest(store: &dyn MemoryStore) {
    let w = world();
    // Stored out of order: the id, not the order of arrival, says which is newer.
    let batch: Vec<MemoryRecord> =
        [3, 1, 4, 2].into_iter().map(|id| memory(&w, 1, id, &format!("m{id}"), &[1.0, 1.0])).collect();
    store.remember(&batch).await.unwrap();
    assert_eq!(texts(store, &w, 1, &[1.0, 1.0], 4).await, ["m4", "m3", "m2", "m1"]);
    // A query without a direction scores every memory 0: the newest.
    assert_eq!(texts(store, &w, 1, &[0.0, 0.0], 2).await, ["m4", "m3"]);
}

async fn agents_and_worlds_are_kept_apart(store: &dyn MemoryStore) {
    let (w, other) = (world(), world());
    store
        .remember(&[
            memory(&w, 1, 1, "ada's", &[1.0]),
            memory(&w, 2, 1, "bob's", &[1.0]),
            memory(&other, 1, 1, "another world's ada's", &[1.0]),
        ])
        .await
        .unwrap();
    assert_eq!(texts(store, &w, 1, &[1.0], 10).await, ["ada's"]);
    assert_eq!(texts(store, &w, 2, &[1.0], 10).await, ["bob's"]);
    assert_eq!(texts(store, &other, 1, &[1.0], 10).await, ["another world's ada's"]);
    assert!(texts(store, &w, 3, &[1.0], 10).await.is_empty(), "an agent that remembered nothing");
    assert!(texts(store, &world(), 1, &[1.0], 10).await.is_empty(), "a world that remembered nothing");
}

async fn a_retried_batch_stores_nothing_twice(store: &dyn MemoryStore) {
    let w = world();
    let batch = [memory(&w, 1, 1, "first", &[1.0, 0.0]), memory(&w, 1, 2, "second", &[0.0, 1.0])];
    store.remember(&batch).await.unwrap();
    store.remember(&batch).await.unwrap();
    // The same id again, whatever it says: the memory is kept as first stored.
    store.remember(&[memory(&w, 1, 1, "rewritten", &[1.0, 0.0])]).await.unwrap();
    assert_eq!(texts(store, &w, 1, &[1.0, 0.0], 10).await, ["first", "second"]);
}

async fn other_dimensions_are_not_found(store: &dyn MemoryStore) {
    let w = world();
    store.remember(&[memory(&w, 1, 1, "two", &[1.0, 0.0]), memory(&w, 1, 2, "three", &[1.0, 0.0, 0.0])]).await.unwrap();
    assert_eq!(texts(store, &w, 1, &[1.0, 0.0], 10).await, ["two"]);
    assert_eq!(texts(store, &w, 1, &[1.0, 0.0, 0.0], 10).await, ["three"]);
    assert!(texts(store, &w, 1, &[], 10).await.is_empty());
}

async fn only_the_newest_are_searched(store: &dyn MemoryStore) {
    let w = world();
    // The oldest memory is the nearest, but past the newest SCANNED.
    let mut batch = vec![memory(&w, 1, 0, "too old", &[1.0, 0.0])];
    batch.extend((1..=SCANNED as u64).map(|id| memory(&w, 1, id, &id.to_string(), &[0.0, 1.0])));
    store.remember(&batch).await.unwrap();
    let found = texts(store, &w, 1, &[1.0, 0.0], MAX_K).await;
    assert_eq!(found.len(), MAX_K);
    assert!(!found.iter().any(|t| t == "too old"));
    assert_eq!(found[0], SCANNED.to_string(), "all tie at 0: newest first");
}

async fn bad_input_is_refused_not_a_panic(store: &dyn MemoryStore) {
    let w = world();
    store.remember(&[memory(&w, 1, 1, "x", &[1.0])]).await.unwrap();
    let e = store.search(&w, 1, &[1.0], MAX_K + 1).await.unwrap_err();
    assert!(matches!(e, StoreError::Invalid(_)), "{e}");
    assert_eq!(e.metric_label(), "invalid");
    assert!(texts(store, &w, 1, &[f32::NAN], 1).await.len() == 1, "a NaN query scores 0, it does not fail");
    store.remember(&[]).await.unwrap();
}

async fn suite(store: &dyn MemoryStore) {
    nearest_first_with_every_field_and_its_score(store).await;
    ties_go_to_the_newest(store).await;
    agents_and_worlds_are_kept_apart(store).await;
    a_retried_batch_stores_nothing_twice(store).await;
    other_dimensions_are_not_found(store).await;
    only_the_newest_are_searched(store).await;
    bad_input_is_refused_not_a_panic(store).await;
}

#[tokio::test]
async fn in_process() {
    suite(&MemoryIndex::new()).await;
}

#[tokio::test]
async fn sqlite() {
    let (store, _file) = common::sqlite_store().await;
    suite(&store).await;
}

#[tokio::test]
async fn postgres() {
    let Some(store) = common::postgres_store().await else { return };
    suite(&store).await;
}

//! The activity log's conformance suite, against real Postgres (partitioned table) and
//! SQLite: pages newest first and before a cursor, a retried batch writes nothing twice,
//! worlds are kept apart, a restored world's new epoch keeps both histories.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod common;

use gaia_checkpoint::{Cursor, MAX_PAGE, Message, MessageLog, SqlStore};

use common::world;

fn said(world_id: &str, epoch: u64, tick: u64, seq: u32, text: &str) -> Message {
    Message {
        world_id: world_id.into(),
        epoch,
        tick,
        seq,
        at_ms: 1_700_000_000_000 + tick,
        author_id: 7,
        author: "ada-0".into(),
        text: text.into(),
    }
}

fn texts(page: &[Message]) -> Vec<&str> {
    page.iter().map(|m| m.text.as_str()).collect()
}

async fn pages_go_newest_first_and_before_a_cursor(log: &dyn MessageLog) {
    let w = world();
    let batch: Vec<Message> = (1..=5).map(|t| said(&w, 1, t * 10, 0, &format!("line {t}"))).collect();
    log.append(&batch).await.unwrap();
    let first = log.page(&w, None, 2).await.unwrap();
    assert_eq!(texts(&first), ["line 5", "line 4"]);
    assert_eq!(first[0], batch[4], "every field comes back");
    let next = log.page(&w, Some(first[1].cursor()), 2).await.unwrap();
    assert_eq!(texts(&next), ["line 3", "line 2"]);
    let last = log.page(&w, Some(next[1].cursor()), 2).await.unwrap();
    assert_eq!(texts(&last), ["line 1"]);
    assert!(log.page(&w, Some(last[0].cursor()), 2).await.unwrap().is_empty());
    assert!(log.page(&world(), None, 10).await.unwrap().is_empty(), "another world has nothing");
}

async fn a_retried_batch_writes_nothing_twice(log: &dyn MessageLog) {
    let w = world();
    let batch = vec![said(&w, 1, 1, 0, "a"), said(&w, 1, 1, 1, "b")];
    log.append(&batch).await.unwrap();
    log.append(&batch).await.unwrap();
    assert_eq!(texts(&log.page(&w, None, 10).await.unwrap()), ["b", "a"]);
}

async fn a_new_epoch_keeps_the_lines_of_the_old_one(log: &dyn MessageLog) {
    let w = world();
    // Said at ticks 10 and 20 at epoch 1; restored from tick 10's checkpoint at epoch 2,
    // the world says other things at tick 20.
    let old = [said(&w, 1, 10, 0, "kept"), said(&w, 1, 20, 0, "said before the crash")];
    log.append(&old).await.unwrap();
    log.append(&[said(&w, 2, 20, 0, "said after the restore")]).await.unwrap();
    assert_eq!(
        texts(&log.page(&w, None, 10).await.unwrap()),
        ["said after the restore", "said before the crash", "kept"]
    );
}

async fn large_batches_and_page_limits(log: &dyn MessageLog) {
    let w = world();
    let batch: Vec<Message> = (0..2_500).map(|i| said(&w, 1, i / 3, (i % 3) as u32, &i.to_string())).collect();
    log.append(&batch).await.unwrap();
    let page = log.page(&w, None, 10_000).await.unwrap();
    assert_eq!(page.len(), MAX_PAGE);
    assert_eq!(page[0].text, "2499");
    let mut all = Vec::new();
    let mut before: Option<Cursor> = None;
    loop {
        let page = log.page(&w, before, 400).await.unwrap();
        let Some(last) = page.last() else { break };
        before = Some(last.cursor());
        all.extend(page);
    }
    assert_eq!(all.len(), 2_500);
    assert!(all.windows(2).all(|p| p[0].cursor() > p[1].cursor()));
}

async fn suite(log: SqlStore) {
    pages_go_newest_first_and_before_a_cursor(&log).await;
    a_retried_batch_writes_nothing_twice(&log).await;
    a_new_epoch_keeps_the_lines_of_the_old_one(&log).await;
    large_batches_and_page_limits(&log).await;
}

#[tokio::test]
async fn sqlite() {
    let (store, _file) = common::sqlite_store().await;
    suite(store).await;
}

#[tokio::test]
async fn postgres() {
    let Some(store) = common::postgres_store().await else { return };
    suite(store).await;
}

//! The activity-log writer on tokio's paused clock, over a log that can be down: batches by
//! size and time, a failed batch retried until the log is back (nothing lost, nothing
//! twice), a full queue drops and counts, and a stop writes what is held.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use gaia_checkpoint::{Cursor, LogMetrics, LogWriter, Message, MessageLog, StoreError};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct Fake {
    down: AtomicBool,
    batches: Mutex<Vec<Vec<u64>>>,
}

#[async_trait]
impl MessageLog for Fake {
    async fn append(&self, batch: &[Message]) -> Result<(), StoreError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::Protocol("down".into()));
        }
        self.batches.lock().push(batch.iter().map(|m| m.tick).collect());
        Ok(())
    }

    async fn page(&self, _: &str, _: Option<Cursor>, _: usize) -> Result<Vec<Message>, StoreError> {
        Ok(Vec::new())
    }
}

fn message(tick: u64) -> Message {
    Message {
        world_id: "w".into(),
        epoch: 1,
        tick,
        seq: 0,
        at_ms: 0,
        author_id: 1,
        author: "a".into(),
        text: "hi".into(),
    }
}

#[tokio::test(start_paused = true)]
async fn batches_wait_a_second_and_survive_an_outage() {
    let log = Arc::new(Fake::default());
    let metrics = LogMetrics::default();
    let stop = CancellationToken::new();
    let (writer, task) = LogWriter::start(Arc::clone(&log) as Arc<dyn MessageLog>, metrics.clone(), stop.clone());
    writer.push(message(1));
    writer.push(message(2));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(log.batches.lock().is_empty(), "a batch waits up to a second to fill");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(*log.batches.lock(), [vec![1, 2]]);

    log.down.store(true, Ordering::SeqCst);
    writer.push(message(3));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(metrics.failed.get() >= 2, "retried while down");
    writer.push(message(4));
    log.down.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(30)).await;
    let written: Vec<u64> = log.batches.lock().iter().flatten().copied().collect();
    assert_eq!(written, [1, 2, 3, 4], "each once, in order");
    assert_eq!((metrics.written.get(), metrics.queued.get(), metrics.dropped.get()), (4, 0, 0));

    writer.push(message(5));
    stop.cancel();
    task.await.unwrap();
    assert_eq!(log.batches.lock().last().unwrap(), &[5], "a stop writes what is held");
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_drops_and_counts() {
    let log = Arc::new(Fake::default());
    log.down.store(true, Ordering::SeqCst);
    let metrics = LogMetrics::default();
    let (writer, _task) =
        LogWriter::start(Arc::clone(&log) as Arc<dyn MessageLog>, metrics.clone(), CancellationToken::new());
    for tick in 0..(gaia_checkpoint::LOG_QUEUE as u64 + gaia_checkpoint::LOG_BATCH as u64 + 10) {
        writer.push(message(tick));
        if tick == 0 {
            tokio::task::yield_now().await;
        }
    }
    assert!(metrics.dropped.get() > 0);
    assert!(metrics.queued.get() as usize <= gaia_checkpoint::LOG_QUEUE + gaia_checkpoint::LOG_BATCH);
}

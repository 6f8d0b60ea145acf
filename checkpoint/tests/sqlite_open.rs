#![allow(clippy::unwrap_used)]
//! Game servers of an embedded fleet open one new SQLite file at once; one of them may be
//! writing (its migrations) while another switches the file to WAL mode. Each gets its
//! store, the file ends up in WAL mode, and nothing is logged as an ERROR on the way (a
//! user reads an ERROR line at start as a failure).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use gaia_checkpoint::SqlStore;
use sqlx::Connection;
use tracing_subscriber::layer::SubscriberExt;

/// Counts ERROR events of every target.
struct Errors(Arc<AtomicUsize>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Errors {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if *event.metadata().level() == tracing::Level::ERROR {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
}

// One thread: every task of the test logs through the subscriber set for it.
#[tokio::test(flavor = "current_thread")]
async fn a_store_opened_while_another_writes_logs_no_error() {
    let errors = Arc::new(AtomicUsize::new(0));
    let _logs = tracing::subscriber::set_default(tracing_subscriber::registry().with(Errors(errors.clone())));
    let file = common::TempFile::new("db");
    let url = format!("sqlite:{}", file.path.display());

    // Another server, still in the new file's first journal mode, in a write transaction.
    let mut writer = sqlx::SqliteConnection::connect(&format!("{url}?mode=rwc")).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE").execute(&mut writer).await.unwrap();
    sqlx::query("CREATE TABLE other (x INTEGER)").execute(&mut writer).await.unwrap();

    let opening = tokio::spawn({
        let url = url.clone();
        async move { SqlStore::connect(&url).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    sqlx::query("COMMIT").execute(&mut writer).await.unwrap();
    opening.await.unwrap().unwrap();

    let mut fresh = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode").fetch_one(&mut fresh).await.unwrap();
    assert_eq!(mode, "wal");
    assert_eq!(errors.load(Ordering::Relaxed), 0, "opening the store logged ERRORs");
}

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

/// A rolling update: servers of a newer release migrated the database further than this
/// build knows. This build's servers still open it (and write to it).
#[tokio::test]
async fn a_database_a_newer_release_migrated_still_opens() {
    let file = common::TempFile::new("db");
    let url = format!("sqlite:{}", file.path.display());
    SqlStore::connect(&url).await.unwrap();
    let mut newer = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (99991231000001, 'a newer release', TRUE, x'00', 0)",
    )
    .execute(&mut newer)
    .await
    .unwrap();
    sqlx::query("CREATE TABLE from_a_newer_release (x INTEGER)").execute(&mut newer).await.unwrap();
    newer.close().await.unwrap();

    let store = SqlStore::connect(&url).await.expect("a database migrated further is refused");
    let checkpoint = gaia_checkpoint::Checkpoint::new("w", 1, 1, 1, b"state");
    gaia_checkpoint::Store::write(&store, &[Arc::new(checkpoint)]).await.unwrap();
}

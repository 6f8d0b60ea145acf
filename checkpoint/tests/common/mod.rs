//! Real stores for the tests, each isolated: Redis under a key prefix of its own, Postgres
//! with world ids of its own (the callers' `world()`), SQLite in a file of its own.
//!
//! Redis and Postgres are the real servers (`GAIA_TEST_REDIS_URL`, `GAIA_TEST_DATABASE_URL`).
//! When one cannot be reached the test prints why and passes, unless `REQUIRE_SERVICES` is
//! set: then it fails.
#![allow(dead_code)] // each test crate uses a part of this module

use std::sync::Arc;

use gaia_checkpoint::{Checkpoint, RedisStore, SqlStore, Store};

pub use gaia_testkit::services::{database_url, redis_prefix, redis_url, unavailable};

/// A store for one test, with whatever must live as long as it (a SQLite file).
pub struct TestStore {
    pub store: Arc<dyn Store>,
    _file: Option<TempFile>,
}

impl TestStore {
    pub fn store(&self) -> Arc<dyn Store> {
        Arc::clone(&self.store)
    }
}

pub async fn redis_store() -> Option<RedisStore> {
    let url = redis_url();
    match RedisStore::connect(&url).await {
        Ok(store) => Some(store.with_prefix(redis_prefix())),
        Err(e) => unavailable("Redis", &url, e),
    }
}

pub async fn postgres_store() -> Option<SqlStore> {
    let url = database_url();
    match SqlStore::connect(&url).await {
        Ok(store) => Some(store),
        Err(e) => unavailable("Postgres", &url, e),
    }
}

pub async fn redis() -> Option<TestStore> {
    Some(TestStore { store: Arc::new(redis_store().await?), _file: None })
}

pub async fn postgres() -> Option<TestStore> {
    Some(TestStore { store: Arc::new(postgres_store().await?), _file: None })
}

pub async fn sqlite() -> Option<TestStore> {
    let (store, file) = sqlite_store().await;
    Some(TestStore { store: Arc::new(store), _file: Some(file) })
}

/// A SQLite store in a new file, removed with the returned guard.
pub async fn sqlite_store() -> (SqlStore, TempFile) {
    let file = TempFile::new("db");
    let store = SqlStore::connect(&format!("sqlite:{}", file.path.display())).await.unwrap();
    (store, file)
}

pub use gaia_testkit::files::TempFile;

/// A world id no other test uses.
pub fn world() -> String {
    format!("w-{}", uuid::Uuid::new_v4())
}

/// A checkpoint whose state names it, so a wrong one read back shows which it is.
pub fn checkpoint(world: &str, epoch: u64, tick: u64) -> Checkpoint {
    Checkpoint::new(world, epoch, tick, 1, format!("{world} at epoch {epoch}, tick {tick}").as_bytes())
}

/// [`checkpoint`], as batches hold it.
pub fn ck(world: &str, epoch: u64, tick: u64) -> Arc<Checkpoint> {
    Arc::new(checkpoint(world, epoch, tick))
}

/// The (epoch, tick) `store` holds for `world`, checked by [`Checkpoint::decode`].
pub async fn head(store: &Arc<dyn Store>, world: &str) -> Option<(u64, u64)> {
    let bytes = store.read(world).await.unwrap()?;
    let c = Checkpoint::decode(world, bytes).unwrap();
    Some((c.epoch(), c.tick()))
}

/// Removes what a test wrote (the Redis prefix and world ids are its own anyway).
pub async fn forget(store: &Arc<dyn Store>, worlds: impl IntoIterator<Item = &String>) {
    use futures_util::StreamExt;
    futures_util::stream::iter(worlds)
        .map(|w| store.delete(w))
        .buffer_unordered(32)
        .for_each(|r| async move { r.unwrap() })
        .await;
}

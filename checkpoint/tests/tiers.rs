//! The tiered writer over real stores (SQLite files; Redis and Postgres together in one
//! test; Redis behind a proxy that can be cut), and its timers on tokio's paused clock
//! over `Flaky`, a store double that only ever is down, hung or answering `Ok`.
#![allow(clippy::unwrap_used)]

mod common;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use gaia_checkpoint::{
    Checkpoint, FlushError, LoadError, Metrics, RedisStore, Store, StoreError, Tier, TierHealth, Tiers, Written,
};
use parking_lot::Mutex;
use prometheus_client::registry::Registry;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use common::{checkpoint, ck, forget, head, world};

const NEVER: Duration = Duration::from_secs(3600);

/// Writers for `tiers` until the returned token is cancelled, with metrics in `registry`.
fn start(tiers: &[(&Arc<dyn Store>, Duration)], registry: &mut Registry) -> (Arc<Tiers>, CancellationToken) {
    let stop = CancellationToken::new();
    let tiers = tiers.iter().map(|(store, every)| Tier { store: Arc::clone(store), every: *every }).collect();
    (Tiers::start(tiers, Arc::new(Metrics::new(registry)), stop.clone()), stop)
}

/// The value of the sample `name{labels}` (as written in the exposition), if any.
fn metric(registry: &Registry, sample: &str) -> Option<f64> {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
    text.lines().find_map(|line| line.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
}

fn heads(found: &[Checkpoint]) -> Vec<(u64, u64)> {
    found.iter().map(|c| (c.epoch(), c.tick())).collect()
}

/// Polls `done` every 20 ms for up to `limit`.
async fn eventually<F: Future<Output = bool>>(limit: Duration, mut done: impl FnMut() -> F) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    done().await
}

#[tokio::test]
async fn put_then_flush_writes_every_tier() {
    let ((hot, _h), (durable, _d)) = (common::sqlite_store().await, common::sqlite_store().await);
    let (hot, durable): (Arc<dyn Store>, Arc<dyn Store>) = (Arc::new(hot), Arc::new(durable));
    let mut registry = Registry::default();
    let (tiers, stop) = start(&[(&hot, NEVER), (&durable, NEVER)], &mut registry);
    let (a, b) = (world(), world());

    tiers.put(checkpoint(&a, 1, 1));
    tiers.put(checkpoint(&a, 1, 2));
    tiers.put(checkpoint(&a, 1, 1)); // late and older: ignored
    tiers.put(checkpoint(&b, 1, 7));
    assert!(tiers.health().iter().all(|h| h.backlog == 2 && h.failing.is_none()));
    assert_eq!(metric(&registry, r#"gaia_checkpoint_backlog_worlds{tier="sqlite"}"#), Some(2.0));
    assert_eq!(hot.read(&a).await.unwrap(), None, "put never writes by itself");

    tiers.flush().await.unwrap();
    for store in [&hot, &durable] {
        assert_eq!(head(store, &a).await, Some((1, 2)));
        assert_eq!(head(store, &b).await, Some((1, 7)));
    }
    assert_eq!(tiers.health(), vec![TierHealth { kind: "sqlite", backlog: 0, failing: None }; 2]);
    assert_eq!(metric(&registry, r#"gaia_checkpoint_writes_total{tier="sqlite",result="ok"}"#), Some(4.0));
    assert_eq!(metric(&registry, r#"gaia_checkpoint_backlog_worlds{tier="sqlite"}"#), Some(0.0));
    stop.cancel();
}

#[tokio::test]
async fn forget_drops_what_is_pending() {
    let (store, _file) = common::sqlite_store().await;
    let store: Arc<dyn Store> = Arc::new(store);
    let (tiers, stop) = start(&[(&store, NEVER)], &mut Registry::default());
    let (gone, kept) = (world(), world());
    tiers.put(checkpoint(&gone, 1, 1));
    tiers.put(checkpoint(&kept, 1, 1));
    tiers.forget(&gone);
    assert_eq!(tiers.health()[0].backlog, 1);
    tiers.flush().await.unwrap();
    assert_eq!(store.read(&gone).await.unwrap(), None);
    assert_eq!(head(&store, &kept).await, Some((1, 1)));
    stop.cancel();
}

#[tokio::test]
async fn stop_writes_what_is_pending() {
    let (store, _file) = common::sqlite_store().await;
    let store: Arc<dyn Store> = Arc::new(store);
    let (tiers, stop) = start(&[(&store, NEVER)], &mut Registry::default());
    let w = world();
    tiers.put(checkpoint(&w, 1, 1));
    stop.cancel();
    assert!(eventually(Duration::from_secs(5), || async { head(&store, &w).await == Some((1, 1)) }).await);
    let stopped = FlushError(vec!["sqlite: writer stopped".into()]);
    assert!(eventually(Duration::from_secs(5), || async { tiers.flush().await == Err(stopped.clone()) }).await);
}

/// Newest first across tiers and what is still pending; a corrupt checkpoint in the hot
/// tier is skipped (and counted), the durable one's is loaded instead.
#[tokio::test]
async fn load_takes_the_newest_valid_checkpoint() {
    let ((hot, _h), (durable, _d)) = (common::sqlite_store().await, common::sqlite_store().await);
    let (hot, durable): (Arc<dyn Store>, Arc<dyn Store>) = (Arc::new(hot), Arc::new(durable));
    let mut registry = Registry::default();
    let (tiers, stop) = start(&[(&hot, NEVER), (&durable, NEVER)], &mut registry);
    let w = world();

    assert!(tiers.load(&w).await.unwrap().is_empty());
    tiers.put(checkpoint(&w, 1, 10));
    tiers.flush().await.unwrap();
    assert_eq!(heads(&tiers.load(&w).await.unwrap()), [(1, 10)]);

    assert_eq!(hot.write(&[ck(&w, 1, 20)]).await.unwrap(), [Written::Ok]);
    let found = tiers.load(&w).await.unwrap();
    assert_eq!(heads(&found), [(1, 20), (1, 10)]);
    assert_eq!(found[0], *ck(&w, 1, 20));

    let garbage = Arc::new(Checkpoint::raw(&w, 1, 30, Bytes::from_static(b"GCK1 but not really")));
    assert_eq!(hot.write(&[garbage]).await.unwrap(), [Written::Ok]);
    assert_eq!(heads(&tiers.load(&w).await.unwrap()), [(1, 10)]);
    assert_eq!(metric(&registry, r#"gaia_checkpoint_corrupt_total{tier="sqlite"}"#), Some(1.0));

    tiers.put(checkpoint(&w, 1, 40));
    assert_eq!(heads(&tiers.load(&w).await.unwrap()), [(1, 40), (1, 10)]);
    assert_eq!(metric(&registry, r#"gaia_checkpoint_loads_total{result="restored"}"#), Some(4.0));
    assert_eq!(metric(&registry, r#"gaia_checkpoint_loads_total{result="none"}"#), Some(1.0));
    stop.cancel();
}

#[tokio::test]
async fn a_fenced_write_names_the_new_owner() {
    let (store, _file) = common::sqlite_store().await;
    let store: Arc<dyn Store> = Arc::new(store);
    let mut registry = Registry::default();
    let (tiers, stop) = start(&[(&store, NEVER)], &mut registry);
    let (taken, ours) = (world(), world());
    // Another server owns `taken` now (epoch 5) and has checkpointed it.
    assert_eq!(store.write(&[ck(&taken, 5, 1)]).await.unwrap(), [Written::Ok]);

    tiers.put(checkpoint(&taken, 4, 100));
    tiers.put(checkpoint(&ours, 4, 100));
    tiers.flush().await.unwrap();
    assert_eq!(tiers.take_fenced(&taken), Some(5));
    assert_eq!(tiers.take_fenced(&taken), None, "taken once");
    assert_eq!(tiers.take_fenced(&ours), None);
    assert_eq!(head(&store, &taken).await, Some((5, 1)));
    assert_eq!(head(&store, &ours).await, Some((4, 100)));
    assert_eq!(tiers.health()[0].backlog, 0, "a fenced checkpoint is not retried");
    assert_eq!(metric(&registry, r#"gaia_checkpoint_writes_total{tier="sqlite",result="fenced"}"#), Some(1.0));
    stop.cancel();
}

/// The deployed pair: each tier writes on its own interval; a fence in the durable tier
/// is reported even though the hot tier accepted the same checkpoint; load goes by epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_and_postgres_each_on_its_own_interval() {
    let Some(hot) = common::redis_store().await else { return };
    let Some(durable) = common::postgres_store().await else { return };
    let (hot, durable): (Arc<dyn Store>, Arc<dyn Store>) = (Arc::new(hot), Arc::new(durable));
    let (tiers, stop) = start(&[(&hot, Duration::from_millis(100)), (&durable, NEVER)], &mut Registry::default());
    let (w, taken) = (world(), world());

    tiers.put(checkpoint(&w, 2, 1));
    assert!(eventually(Duration::from_secs(5), || async { head(&hot, &w).await == Some((2, 1)) }).await);
    assert_eq!(durable.read(&w).await.unwrap(), None, "the durable tier waits for its interval");
    assert_eq!(tiers.health()[1].backlog, 1);

    tiers.put(checkpoint(&w, 2, 2));
    assert_eq!(durable.write(&[ck(&taken, 7, 1)]).await.unwrap(), [Written::Ok]);
    tiers.put(checkpoint(&taken, 6, 500));
    tiers.flush().await.unwrap();
    for store in [&hot, &durable] {
        assert_eq!(head(store, &w).await, Some((2, 2)), "{}", store.kind());
    }
    assert_eq!(tiers.take_fenced(&taken), Some(7));
    assert_eq!(head(&hot, &taken).await, Some((6, 500)), "Redis had never seen the new owner");
    assert_eq!(heads(&tiers.load(&taken).await.unwrap()), [(7, 1), (6, 500)]);
    assert_eq!(heads(&tiers.load(&w).await.unwrap()), [(2, 2)]);
    stop.cancel();
    forget(&hot, [&w, &taken]).await;
    forget(&durable, [&w, &taken]).await;
}

/// A TCP proxy to Redis that can be cut: while down it drops every connection, so the
/// store sees Redis vanish and come back at the same address.
struct Proxy {
    url: String,
    up: watch::Sender<bool>,
    /// Connections still open: cutting waits until they are all closed, so no write
    /// already on its way slips through after the cut.
    open: Arc<watch::Sender<usize>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(redis_url: &str) -> Self {
        let client = redis::Client::open(redis_url).unwrap();
        let redis::ConnectionAddr::Tcp(host, port) = client.get_connection_info().addr() else {
            panic!("{redis_url} is not a TCP address");
        };
        let upstream = format!("{host}:{port}");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = redis_url.replacen(&upstream, &listener.local_addr().unwrap().to_string(), 1);
        assert_ne!(url, redis_url, "the Redis URL must name its port");
        let (up, mut state) = watch::channel(true);
        let open = Arc::new(watch::Sender::new(0usize));
        let counter = open.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !*state.borrow_and_update() {
                    continue;
                }
                let (upstream, mut state, counter) = (upstream.clone(), state.clone(), counter.clone());
                counter.send_modify(|n| *n += 1);
                tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(&upstream).await {
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                            _ = state.wait_for(|up| !*up) => {}
                        }
                    }
                    drop((client, state));
                    counter.send_modify(|n| *n -= 1);
                });
            }
        });
        Self { url, up, open, accept }
    }

    /// Cuts (returning once every connection is closed) or restores the proxy.
    async fn set_up(&self, up: bool) {
        self.up.send_replace(up);
        if !up {
            let _ = self.open.subscribe().wait_for(|n| *n == 0).await;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Redis goes away: its checkpoints stay pending (the newest of each world), health and
/// metrics say so, flush names the tier, load refuses to guess; Redis comes back: the
/// backlog is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_tier_keeps_its_checkpoints_until_it_is_back() {
    let Some(direct) = common::redis_store().await else { return };
    let proxy = Proxy::start(&common::redis_url()).await;
    let prefix = common::redis_prefix();
    let hot: Arc<dyn Store> = Arc::new(RedisStore::connect(&proxy.url).await.unwrap().with_prefix(prefix.clone()));
    let direct: Arc<dyn Store> = Arc::new(direct.with_prefix(prefix));
    let (durable, _file) = common::sqlite_store().await;
    let durable: Arc<dyn Store> = Arc::new(durable);
    let mut registry = Registry::default();
    let (tiers, stop) = start(&[(&hot, Duration::from_millis(50)), (&durable, NEVER)], &mut registry);
    let worlds: Vec<String> = (0..3).map(|_| world()).collect();
    for w in &worlds {
        tiers.put(checkpoint(w, 1, 1));
    }
    tiers.flush().await.unwrap();

    proxy.set_up(false).await;
    for w in &worlds {
        tiers.put(checkpoint(w, 1, 2));
    }
    let FlushError(failed) = tiers.flush().await.unwrap_err();
    assert!(matches!(&failed[..], [only] if only.starts_with("redis: ")), "{failed:?}");
    let health = tiers.health();
    assert_eq!((health[0].kind, health[0].backlog), ("redis", 3));
    assert!(health[0].failing.is_some());
    assert_eq!(health[1], TierHealth { kind: "sqlite", backlog: 0, failing: None });
    assert_eq!(metric(&registry, r#"gaia_checkpoint_backlog_worlds{tier="redis"}"#), Some(3.0));
    assert!(metric(&registry, r#"gaia_checkpoint_writes_total{tier="redis",result="error"}"#).unwrap() >= 3.0);
    for w in &worlds {
        assert_eq!(head(&durable, w).await, Some((1, 2)), "the other tier goes on");
        assert_eq!(head(&direct, w).await, Some((1, 1)));
    }
    match tiers.load(&worlds[0]).await {
        Err(LoadError::Unavailable { kind: "redis", .. }) => {}
        other => panic!("load while Redis is away: {other:?}"),
    }
    assert_eq!(metric(&registry, r#"gaia_checkpoint_loads_total{result="unavailable"}"#), Some(1.0));
    tiers.put(checkpoint(&worlds[0], 1, 3));

    proxy.set_up(true).await;
    let caught_up = eventually(Duration::from_secs(20), || async {
        let h = &tiers.health()[0];
        h.backlog == 0 && h.failing.is_none()
    })
    .await;
    assert!(caught_up, "{:?}", tiers.health());
    assert_eq!(head(&direct, &worlds[0]).await, Some((1, 3)));
    for w in &worlds[1..] {
        assert_eq!(head(&direct, w).await, Some((1, 2)));
    }
    tiers.flush().await.unwrap();
    assert_eq!(heads(&tiers.load(&worlds[0]).await.unwrap()), [(1, 3)]);
    stop.cancel();
    forget(&direct, &worlds).await;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Every call fails the way a pool fails when its database is gone.
    Down,
    /// Writes never answer; reads find nothing.
    Hung,
    /// Writes answer `Ok`; reads find nothing.
    Up,
}

/// A store double for the writer's timers (on the paused clock, so no real I/O): records
/// when it was asked to write and what it accepted.
struct Flaky {
    mode: Mutex<Mode>,
    t0: Instant,
    attempts: Mutex<Vec<u64>>,
    written: Mutex<Vec<(String, u64, u64)>>,
}

impl Flaky {
    fn new(mode: Mode) -> Arc<Self> {
        Arc::new(Self {
            mode: Mutex::new(mode),
            t0: Instant::now(),
            attempts: Mutex::default(),
            written: Mutex::default(),
        })
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock() = mode;
    }

    /// When writes were asked for, in ms since the double was made.
    fn attempts(&self) -> Vec<u64> {
        self.attempts.lock().clone()
    }

    fn written(&self) -> Vec<(String, u64, u64)> {
        self.written.lock().clone()
    }

    fn down() -> StoreError {
        StoreError::Sql(sqlx::Error::PoolTimedOut)
    }
}

#[async_trait]
impl Store for Flaky {
    fn kind(&self) -> &'static str {
        "flaky"
    }

    async fn write(&self, batch: &[Arc<Checkpoint>]) -> Result<Vec<Written>, StoreError> {
        self.attempts.lock().push(self.t0.elapsed().as_millis() as u64);
        let mode = *self.mode.lock();
        match mode {
            Mode::Down => Err(Self::down()),
            Mode::Hung => std::future::pending().await,
            Mode::Up => {
                let mut written = self.written.lock();
                written.extend(batch.iter().map(|c| (c.world_id().to_string(), c.epoch(), c.tick())));
                Ok(vec![Written::Ok; batch.len()])
            }
        }
    }

    async fn read(&self, _: &str) -> Result<Option<Bytes>, StoreError> {
        match *self.mode.lock() {
            Mode::Down => Err(Self::down()),
            Mode::Hung | Mode::Up => Ok(None),
        }
    }

    async fn delete(&self, _: &str) -> Result<(), StoreError> {
        Ok(())
    }
}

fn start_flaky(store: &Arc<Flaky>, every: Duration) -> (Arc<Tiers>, CancellationToken) {
    let store: Arc<dyn Store> = Arc::clone(store) as Arc<dyn Store>;
    start(&[(&store, every)], &mut Registry::default())
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Retries double from 100 ms up to the tier's interval; a put while failing replaces
/// the pending checkpoint; the first write after the store is back catches up.
#[tokio::test(start_paused = true)]
async fn a_failing_tier_backs_off_then_catches_up() {
    let store = Flaky::new(Mode::Down);
    let t0 = Instant::now();
    let (tiers, stop) = start_flaky(&store, Duration::from_secs(1));
    tiers.put(checkpoint("w", 1, 1));

    tokio::time::sleep_until(t0 + ms(4600)).await;
    assert_eq!(store.attempts(), [1000, 1100, 1300, 1700, 2500, 3500, 4500]);
    let error = format!("{}", Flaky::down());
    assert_eq!(tiers.health(), [TierHealth { kind: "flaky", backlog: 1, failing: Some((ms(3600), error.clone())) }]);
    assert_eq!(tiers.flush().await, Err(FlushError(vec![format!("flaky: {error}")])));
    assert!(matches!(tiers.load("w").await, Err(LoadError::Unavailable { kind: "flaky", .. })));

    tiers.put(checkpoint("w", 1, 2));
    store.set(Mode::Up);
    tokio::time::sleep_until(t0 + ms(5700)).await;
    assert_eq!(store.attempts()[7..], [4600, 5600]);
    assert_eq!(store.written(), [("w".to_string(), 1, 2)]);
    assert_eq!(tiers.health(), [TierHealth { kind: "flaky", backlog: 0, failing: None }]);

    // Back to the interval, counted from the last write.
    tiers.put(checkpoint("w", 1, 3));
    tokio::time::sleep_until(t0 + ms(6700)).await;
    assert_eq!(store.attempts()[9..], [6600]);
    stop.cancel();
}

/// A write that never answers is given up after 10 s and retried; meanwhile the
/// checkpoint being written still counts for `load`, and a newer one replaces it.
#[tokio::test(start_paused = true)]
async fn a_tier_that_never_answers_times_out() {
    let store = Flaky::new(Mode::Hung);
    let t0 = Instant::now();
    let (tiers, stop) = start_flaky(&store, Duration::from_secs(1));
    tiers.put(checkpoint("w", 1, 1));

    tokio::time::sleep_until(t0 + ms(2000)).await;
    assert_eq!(store.attempts(), [1000]);
    assert_eq!(heads(&tiers.load("w").await.unwrap()), [(1, 1)], "being written is still ours to load");
    tiers.put(checkpoint("w", 1, 2));
    assert_eq!(heads(&tiers.load("w").await.unwrap()), [(1, 2), (1, 1)]);

    tokio::time::sleep_until(t0 + ms(11_050)).await;
    let failing = Some((ms(50), "no answer within 10s".to_string()));
    assert_eq!(tiers.health(), [TierHealth { kind: "flaky", backlog: 1, failing }]);

    store.set(Mode::Up);
    tiers.flush().await.unwrap();
    assert_eq!(store.written(), [("w".to_string(), 1, 2)], "the newer checkpoint replaced the timed-out one");
    assert_eq!(tiers.health(), [TierHealth { kind: "flaky", backlog: 0, failing: None }]);
    stop.cancel();
}

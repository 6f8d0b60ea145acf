//! Two `gaia allocator` processes sharing one Redis registry: a slot is never handed out
//! twice, however the requests race across the processes.
//!
//! Needs the real Redis (`GAIA_TEST_REDIS_URL`, default redis://127.0.0.1:6379): skipped
//! with a printed reason when it is unreachable, failed under `REQUIRE_SERVICES`.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashSet};
use std::process::Stdio;
use std::time::Duration;

use futures_util::StreamExt;
use gaia_api::allocation::AllocationResponse;
use gaia_api::gameserver::GameServer;
use gaia_testkit::services::{redis_url, unavailable};
use serde_json::json;

const SERVERS: usize = 600;
const WORLDS: u32 = 10;
const REQUESTS: usize = 10_000;
const MATCHMAKER_TOKEN: &str = "mm-token";
const SDK_SECRET: &str = "sdk-secret";

/// `None` (after saying why) when Redis is unreachable and the services are optional.
async fn redis_reachable() -> Option<()> {
    let url = redis_url();
    let reachable = async {
        let client = redis::Client::open(url.as_str())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await
    };
    match tokio::time::timeout(Duration::from_secs(3), reachable).await {
        Ok(Ok(_)) => Some(()),
        Ok(Err(e)) => unavailable("Redis", &url, e),
        Err(_) => unavailable("Redis", &url, "timed out"),
    }
}

/// A `gaia allocator` child process; killed when dropped.
struct Allocator {
    url: String,
    child: tokio::process::Child,
}

impl Allocator {
    async fn start(prefix: &str) -> Allocator {
        Self::start_with(&["--redis-url", &redis_url(), "--redis-prefix", prefix]).await
    }

    async fn start_with(args: &[&str]) -> Allocator {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_gaia"))
            .args(["allocator", "--listen", &format!("127.0.0.1:{port}")])
            .args(args)
            .args(["--join-secret", "join-secret", "--sdk-secret", SDK_SECRET])
            .args(["--allocator-token", MATCHMAKER_TOKEN])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        for _ in 0..100 {
            if http.get(format!("{url}/livez")).send().await.is_ok_and(|r| r.status().is_success()) {
                return Allocator { url, child };
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("allocator on port {port} did not come up");
    }
}

async fn register(http: &reqwest::Client, url: &str, i: usize) {
    let name = format!("race-{i:04}");
    let token = gaia_api::token::TokenKey::new(SDK_SECRET).sdk_token(&name);
    let region = ["eu", "us"][i % 2];
    let body = json!({"fleet":"race","region":region,"address":format!("ws://192.0.2.1:1/{name}"),
        "worldCapacity":WORLDS,"playerCapacity":1000,
        "health":{"periodSeconds":3600,"failureThreshold":1,"initialDelaySeconds":3600}});
    for (call, body) in [("register", Some(body)), ("ready", None)] {
        let mut req = http.post(format!("{url}/v1/gameservers/{name}/{call}")).bearer_auth(&token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.unwrap();
        assert!(resp.status().is_success(), "{call} {name}: {}", resp.text().await.unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_allocators_hand_out_each_slot_exactly_once() {
    if redis_reachable().await.is_none() {
        return;
    }
    let prefix = format!("gaia-test:{}:", uuid::Uuid::new_v4());
    let (a, b) = (Allocator::start(&prefix).await, Allocator::start(&prefix).await);
    let http = reqwest::Client::new();
    futures_util::stream::iter(0..SERVERS)
        .for_each_concurrent(64, |i| register(&http, if i % 2 == 0 { &a.url } else { &b.url }, i))
        .await;

    // 512 requests in flight at a time, alternating between the two processes: enough to
    // race every slot, while each connection is read within the servers' header timeout
    // on a loaded machine (10,000 connections at once were not, once, in CI).
    let answers: Vec<_> = futures_util::stream::iter((0..REQUESTS).map(|i| {
        let url = if i % 2 == 0 { &a.url } else { &b.url };
        let req = http.post(format!("{url}/v1/allocations")).bearer_auth(MATCHMAKER_TOKEN);
        let region = ["eu", "us"][i % 2];
        async move {
            let resp = req.json(&json!({"fleet":"race","regions":[region]})).send().await.unwrap();
            let status = resp.status().as_u16();
            let body = resp.bytes().await.unwrap();
            (status, body)
        }
    }))
    .buffer_unordered(512)
    .collect()
    .await;

    let mut by_status: BTreeMap<u16, usize> = BTreeMap::new();
    let mut worlds = HashSet::new();
    let mut per_server: BTreeMap<String, u32> = BTreeMap::new();
    for (status, body) in &answers {
        *by_status.entry(*status).or_default() += 1;
        if *status == 200 {
            let a: AllocationResponse = serde_json::from_slice(body).unwrap();
            assert!(worlds.insert(a.world_id.clone()), "world {} handed out twice", a.world_id);
            *per_server.entry(a.server).or_default() += 1;
        } else {
            let text = String::from_utf8_lossy(body);
            assert!(text.contains("no_capacity"), "{status}: {text}");
        }
    }
    let slots = SERVERS * WORLDS as usize;
    assert_eq!(by_status, BTreeMap::from([(200, slots), (429, REQUESTS - slots)]));
    assert_eq!(per_server.len(), SERVERS);
    assert!(per_server.values().all(|&n| n == WORLDS), "no server got more than its {WORLDS} slots");

    // The shared registry agrees: every server full, as seen from either process.
    for url in [&a.url, &b.url] {
        let servers: Vec<GameServer> = http
            .get(format!("{url}/v1/gameservers?fleet=race"))
            .bearer_auth(MATCHMAKER_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(servers.len(), SERVERS);
        assert!(servers.iter().all(|s| s.worlds == WORLDS), "{url}");
    }
    drop((a.child, b.child));
    clean(&prefix).await;
}

/// Deletes the test's keys.
async fn clean(prefix: &str) {
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}*")).query_async(&mut conn).await.unwrap();
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL").arg(keys).query_async(&mut conn).await.unwrap();
    }
}

/// Services mode: `gaia allocator --database-url` serves the activity log the game servers
/// write (here a SQLite file; Postgres goes through the same code, checked by the log's
/// conformance suite).
#[tokio::test]
async fn an_allocator_with_a_database_url_serves_the_activity_log() {
    let file = gaia_testkit::files::TempFile::new("db");
    let url = file.sqlite_url();
    let store = gaia_checkpoint::SqlStore::connect(&url).await.unwrap();
    let said = |tick: u64, text: &str| gaia_checkpoint::Message {
        world_id: "w-log".into(),
        epoch: 1,
        tick,
        seq: 0,
        at_ms: 1_000 + tick,
        author_id: 7,
        author: "ada".into(),
        text: text.into(),
    };
    gaia_checkpoint::MessageLog::append(&store, &[said(1, "first"), said(2, "second")]).await.unwrap();

    let allocator = Allocator::start_with(&["--database-url", &url]).await;
    let page: serde_json::Value = reqwest::Client::new()
        .get(format!("{}/v1/worlds/w-log/messages?limit=1", allocator.url))
        .bearer_auth(MATCHMAKER_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["messages"][0]["text"], "second", "{page}");
    assert_eq!(page["next"], "1.2.0", "{page}");
    drop(allocator);
}

//! Agents end to end (issue 20): an embedded fleet of real `gaia gameserver` processes
//! whose bots think through the fake OpenAI-compatible model, served in this process.
//! The bots hold conversations through it and keep memories (summaries, then embeddings,
//! stored in the fleet's SQLite file) that later prompts carry; a player who names a bot
//! gets the model's answer; and what was said is read back through
//! `GET /v1/worlds/{id}/messages`, also after the world's server was killed and the world
//! restored on another one, whose agents recall what they remembered before.
//!
//! Real processes, real time, SQLite (embedded mode's default): no external service.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{Fleet, REGION, pid_of};
use gaia_api::activity::MessagePage;
use gaia_api::allocation::AllocationResponse;
use gaia_api::fleet::FleetConfig;
use gaia_api::town::{Action, Change, ClientMsg, ServerMsg, Snapshot};
use gaia_checkpoint::{MAX_K, MemoryStore, SqlStore};
use gaia_ops::fake::{Calls, FakeConfig};
use gaia_testkit::ws::{self, Ws, send};
use nix::sys::signal::{Signal, kill};
use serde_json::json;
use tokio::time::{Instant, sleep};

/// How long the servers may stay silent.
const SILENCE: Duration = Duration::from_secs(10);

const FLEET: &str = "agents";

/// The fake model on an ephemeral port, answering in 20 to 100 ms.
async fn fake_model() -> (String, Arc<Calls>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let config =
        FakeConfig { latency: (Duration::from_millis(20), Duration::from_millis(100)), ..FakeConfig::default() };
    let (router, calls) = gaia_ops::fake::router(config);
    tokio::spawn(async move { axum::serve(listener, router).await });
    (url, calls)
}

/// Two servers of two worlds each; small towns of four agents, so bots meet often.
async fn fleet(model: &str) -> Fleet {
    let program = serde_json::to_string(env!("CARGO_BIN_EXE_gaia")).unwrap();
    let yaml = format!(
        "
fleets:
  - name: {FLEET}
    worldCapacity: 2
    playerCapacity: 100
    template:
      command: [{program}, gameserver]
      env:
        RUST_LOG: warn
        GAIA_LLM_URL: {model}
        GAIA_BOTS_PER_WORLD: '4'
        GAIA_TOWN_WIDTH: '8'
        GAIA_TOWN_HEIGHT: '6'
    health: {{ periodSeconds: 1, failureThreshold: 3, initialDelaySeconds: 5 }}
    regions:
      - {{ name: {REGION}, replicas: 2 }}
"
    );
    let mut config = gaia_embedded::Config::new(FleetConfig::from_yaml(&yaml).unwrap());
    config.data_dir = data_dir();
    let _ = std::fs::remove_dir_all(&config.data_dir);
    config.sdk_secret = Some(common::SDK_SECRET.into());
    Fleet::launch(FLEET, config).await
}

fn data_dir() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("gaia-test-{}-{FLEET}", std::process::id()))
}

/// Every memory of the world's four agents (entities 1 to 4) in the fleet's SQLite file,
/// read through the memory store's search (a query no memory is near: newest first).
async fn memories(world: &str) -> Vec<String> {
    let url = format!("sqlite:{}", data_dir().join("checkpoints.sqlite").display());
    let store = SqlStore::connect(&url).await.unwrap();
    let query = gaia_ops::fake::embed("", FakeConfig::default().dimensions);
    let mut texts = Vec::new();
    for agent in 1..=4 {
        let found = store.search(world, agent, &query, MAX_K).await.unwrap();
        texts.extend(found.into_iter().map(|r| r.record.text));
    }
    texts
}

/// The memories the chat prompts the fake model keeps carry.
fn recalled_in_prompts(calls: &Calls) -> Vec<String> {
    let prompts = calls.prompts.lock().unwrap();
    let systems = prompts.iter().filter_map(|p| p.first().and_then(|m| m.content.clone()));
    let carried = systems.filter_map(|c| c.split_once("What you remember:").map(|(_, m)| m.to_string()));
    carried
        .flat_map(|m| m.lines().filter_map(|l| l.strip_prefix("- ").map(str::to_string)).collect::<Vec<_>>())
        .collect()
}

async fn allocate(fleet: &Fleet, body: serde_json::Value) -> AllocationResponse {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let resp = fleet.http.post(format!("{}/v1/allocations", fleet.url)).json(&body).send().await.unwrap();
        if resp.status().is_success() {
            return resp.json().await.unwrap();
        }
        assert!(Instant::now() < deadline, "no allocation within 30 s: {}", resp.status());
        sleep(Duration::from_millis(200)).await;
    }
}

async fn join(alloc: &AllocationResponse) -> (Ws, u32) {
    let mut ws = ws::connect(&alloc.address).await;
    send(&mut ws, &ClientMsg::Join { token: alloc.join_token.clone() }).await;
    let welcome = ws::welcome::<Snapshot, Change>(&mut ws, SILENCE).await.unwrap();
    (ws, welcome.you)
}

/// The next message; the connection must not end.
async fn recv(ws: &mut Ws) -> ServerMsg {
    ws::recv_within(ws, SILENCE).await.unwrap_or_else(|close| panic!("connection ended: {close:?}"))
}

/// Lines said (by anyone but `you`) until `until` returns true of one, within `within`.
async fn watch(ws: &mut Ws, you: u32, within: Duration, mut until: impl FnMut(u32, &str) -> bool) -> Vec<String> {
    let mut said = Vec::new();
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let ServerMsg::Delta { changes, .. } = recv(ws).await {
            for change in changes {
                if let Change::Said { id, text } = change
                    && id != you
                {
                    let done = until(id, &text);
                    said.push(text);
                    if done {
                        return said;
                    }
                }
            }
        }
    }
    panic!("not within {within:?}; heard {said:?}");
}

/// Every line said (by anyone but `you`) within `within`.
async fn hear(ws: &mut Ws, you: u32, within: Duration) -> Vec<String> {
    let mut said = Vec::new();
    let deadline = Instant::now() + within;
    while let Ok(msg) = tokio::time::timeout_at(deadline, recv(ws)).await {
        if let ServerMsg::Delta { changes, .. } = msg {
            said.extend(changes.into_iter().filter_map(|c| match c {
                Change::Said { id, text } if id != you => Some(text),
                _ => None,
            }));
        }
    }
    said
}

async fn messages(fleet: &Fleet, world: &str) -> Vec<(u64, String, String)> {
    let url = format!("{}/v1/worlds/{world}/messages?limit=500", fleet.url);
    let resp = fleet.http.get(&url).send().await.unwrap();
    assert!(resp.status().is_success(), "GET {url}: {}", resp.status());
    let page: MessagePage = resp.json().await.unwrap();
    page.messages.into_iter().map(|m| (m.epoch, m.author, m.text)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_talk_remember_answer_and_their_words_outlive_a_killed_server() {
    let (model, calls) = fake_model().await;
    let fleet = fleet(&model).await;
    let alloc = allocate(&fleet, json!({"fleet": FLEET, "playerId": "pat"})).await;
    let (mut ws, you) = join(&alloc).await;

    // The bots talk through the model: its answers quote what they answer.
    watch(&mut ws, you, Duration::from_secs(30), |_, text| text.starts_with("You said \"")).await;

    // A player names a bot; the bot answers with the model's words for what was said.
    let say = |seq: u32, text: &str| ClientMsg::Input { seq, action: Action::Say { text: text.into() } };
    let mut answer = None;
    for asked in 1..=40u32 {
        // A named bot may be busy in a conversation: ask each in turn until one answers.
        let bot = ["ada-0", "bob-1", "cyd-2", "dot-3"][asked as usize % 4];
        let question = say(asked, &format!("{bot}, where is the well?"));
        send(&mut ws, &question).await;
        let heard = hear(&mut ws, you, Duration::from_secs(1)).await;
        answer = heard.into_iter().find(|t| t.contains("where is the well"));
        if answer.is_some() {
            break;
        }
    }
    let answer = answer.expect("no bot answered 40 questions");
    assert!(answer.starts_with("You said \"pat: "), "{answer}");

    // Memories: summaries embedded and stored, then recalled in later prompts.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if !recalled_in_prompts(&calls).is_empty() && calls.embeddings.load(Ordering::SeqCst) > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "no memory recalled within 60 s");
        // Keep reading, so the server does not drop us for falling behind.
        let _ = tokio::time::timeout(Duration::from_millis(500), recv(&mut ws)).await;
    }
    // What the prompts carried is what the store holds: summaries in the model's words.
    let stored = memories(&alloc.world_id).await;
    for memory in recalled_in_prompts(&calls) {
        assert!(stored.contains(&memory), "{memory:?} recalled, not stored: {stored:?}");
    }
    assert!(stored.iter().all(|m| m.starts_with("You said \"")), "{stored:?}");

    // The log has the player's question and the answer; it is written every second.
    sleep(Duration::from_secs(2)).await;
    let before = messages(&fleet, &alloc.world_id).await;
    assert!(before.iter().any(|(_, who, text)| who == "pat" && text.contains("where is the well")), "{before:?}");
    assert!(before.iter().any(|(_, who, text)| who != "pat" && text == &answer), "{before:?}");

    // Kill the world's server; the world comes back on the other one when we return.
    // (Forgetting the prompts so far: those from now on are the restored world's.)
    calls.prompts.lock().unwrap().clear();
    kill(pid_of(&alloc.server), Signal::SIGKILL).unwrap();
    let stored = memories(&alloc.world_id).await;
    drop(ws);
    let again = loop {
        let again = allocate(&fleet, json!({"fleet": FLEET, "worldId": alloc.world_id, "playerId": "pat"})).await;
        if again.server != alloc.server {
            break again;
        }
        sleep(Duration::from_millis(300)).await;
    };
    let (mut ws, you) = join(&again).await;
    send(&mut ws, &say(1, "back again, everyone")).await;
    watch(&mut ws, you, Duration::from_secs(30), |_, _| true).await;
    sleep(Duration::from_secs(2)).await;
    let after = messages(&fleet, &alloc.world_id).await;
    for line in &before {
        assert!(after.contains(line), "{line:?} lost after the restore: {after:?}");
    }
    let newest = after.iter().find(|(_, who, text)| who == "pat" && text == "back again, everyone");
    let (epoch, ..) = newest.unwrap_or_else(|| panic!("the new line is not in the log: {after:?}"));
    assert!(before.iter().all(|(e, ..)| e < epoch), "the restored world writes at a newer epoch");

    // The memories outlive the killed server, and its agents, restored elsewhere, recall
    // them in their new conversations.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let recalled = recalled_in_prompts(&calls);
        if recalled.iter().any(|m| stored.contains(m)) {
            break;
        }
        assert!(Instant::now() < deadline, "no memory from before the kill recalled within 60 s: {recalled:?}");
        let _ = tokio::time::timeout(Duration::from_millis(500), recv(&mut ws)).await;
    }
    let after = memories(&alloc.world_id).await;
    for memory in &stored {
        assert!(after.contains(memory), "{memory:?} lost after the restore");
    }
    fleet.stop().await;
}

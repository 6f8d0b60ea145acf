//! The OpenAI-compatible provider against the fake server over real HTTP: chat answers and
//! embeddings come back, the key is sent, and the server's refusals are sorted into
//! retryable (503, a dead server) and permanent (401). Then the runner with both: injected
//! failures are retried to success.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use gaia_ops::fake::{FakeConfig, router};
use gaia_ops::openai::{OpenAi, OpenAiConfig};
use gaia_ops::{
    ChatMessage, ChatRequest, EmbedRequest, Kind, LaneConfig, Metrics, Operation, Provider, Request, Response, Role,
    Runner,
};

async fn fake(config: FakeConfig) -> (String, Arc<gaia_ops::fake::Calls>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let (router, calls) = router(config);
    tokio::spawn(async move { axum::serve(listener, router).await });
    (url, calls)
}

fn client(base_url: &str, api_key: Option<&str>) -> OpenAi {
    OpenAi::new(OpenAiConfig {
        base_url: base_url.into(),
        api_key: api_key.map(Into::into),
        chat_model: "fake-chat".into(),
        embedding_model: "fake-embed".into(),
        request_timeout: Duration::from_secs(5),
    })
    .unwrap()
}

fn ask(text: &str) -> Request {
    let messages = vec![
        ChatMessage { role: Role::System, content: "You are Ada, a baker.".into() },
        ChatMessage { role: Role::User, content: text.into() },
    ];
    Request::Chat(ChatRequest { messages, max_tokens: Some(64), temperature: Some(0.7) })
}

#[tokio::test]
async fn chat_and_embeddings_round_trip_with_the_key() {
    let (url, calls) =
        fake(FakeConfig { api_key: Some("sk-test".into()), dimensions: 16, ..FakeConfig::default() }).await;
    let openai = client(&url, Some("sk-test"));
    let answer = openai.run(&ask("how is the bread today?")).await.unwrap();
    let Response::Chat { content } = answer else { panic!("{answer:?}") };
    assert!(content.starts_with("You said \"how is the bread today?\""), "{content}");
    let answer = openai.run(&Request::Embed(EmbedRequest { input: "bread and butter".into() })).await.unwrap();
    let Response::Embedding { vector } = answer else { panic!("{answer:?}") };
    assert_eq!(vector, gaia_ops::fake::embed("bread and butter", 16));
    assert_eq!((calls.chat.load(Ordering::SeqCst), calls.embeddings.load(Ordering::SeqCst)), (1, 1));

    // Without the key: refused, for good.
    let e = client(&url, None).run(&ask("hi")).await.unwrap_err();
    assert!(!e.retryable && e.message.contains("401") && e.message.contains("incorrect API key"), "{e:?}");
}

#[tokio::test]
async fn a_failing_or_absent_server_is_retryable() {
    let (url, _) = fake(FakeConfig { failure_rate: 1.0, ..FakeConfig::default() }).await;
    let e = client(&url, None).run(&ask("hi")).await.unwrap_err();
    assert!(e.retryable && e.message.contains("503") && e.message.contains("injected failure"), "{e:?}");

    let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let e = client(&format!("http://{unused}/v1"), None).run(&ask("hi")).await.unwrap_err();
    assert!(e.retryable, "{e:?}");
}

#[tokio::test]
async fn the_runner_retries_injected_failures_to_success() {
    let (url, calls) = fake(FakeConfig {
        failure_rate: 0.5,
        latency: (Duration::from_millis(1), Duration::from_millis(5)),
        seed: 7,
        ..FakeConfig::default()
    })
    .await;
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Arc::new(Metrics::new(&mut registry));
    let config = LaneConfig { attempts: 8, min_backoff: Duration::from_millis(1), ..LaneConfig::default() };
    let runner = Runner::builder().lane(Kind::Chat, Arc::new(client(&url, None)), config).build(metrics);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for id in 0..20 {
        runner.start(Operation { id, request: ask(&format!("question {id}")), timeout_ms: 10_000 }, tx.clone());
    }
    let mut ids = Vec::new();
    for _ in 0..20 {
        let done = rx.recv().await.unwrap();
        assert!(done.outcome.is_ok(), "{done:?}");
        ids.push(done.id);
    }
    ids.sort_unstable();
    assert_eq!(ids, (0..20).collect::<Vec<_>>());
    assert!(calls.failed.load(Ordering::SeqCst) > 0, "the fake injected no failure");
}

/// What calls cost: the tokens each answer's `usage` reports, by model.
#[tokio::test]
async fn the_tokens_answers_report_are_counted_by_model() {
    let (url, _) = fake(FakeConfig::default()).await;
    let tokens = prometheus_client::metrics::family::Family::default();
    let openai = client(&url, None).counting_tokens(tokens.clone());
    let count = |model: &str, token: &'static str| {
        tokens.get_or_create(&gaia_ops::metrics::TokenLabels { model: model.into(), token }).get()
    };
    openai.run(&ask("how is the bread today?")).await.unwrap();
    let (prompt, completion) = (count("fake-chat", "prompt"), count("fake-chat", "completion"));
    assert!(prompt > 0 && completion > 0, "{prompt} {completion}");
    openai.run(&ask("and the cake?")).await.unwrap();
    assert!(count("fake-chat", "prompt") > prompt && count("fake-chat", "completion") > completion);
    openai.run(&Request::Embed(EmbedRequest { input: "bread and butter".into() })).await.unwrap();
    assert!(count("fake-embed", "prompt") > 0);
    assert_eq!(count("fake-embed", "completion"), 0);
}

//! The runner on tokio's paused clock, with a scripted provider: outcomes in the order
//! operations finish, each exactly once; timeouts that cover queue and retries; the
//! concurrency limit and the bounded queue; retries only where safe, with backoff.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use gaia_ops::{
    ChatMessage, ChatRequest, Completed, HttpRequest, Kind, LaneConfig, Metrics, OpError, Operation, Provider,
    ProviderError, Request, Response, Role, Runner,
};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Answers each call after the latency named in its prompt (`"<ms>"`), or fails as the
/// script says, in call order; counts calls and the most running at once.
#[derive(Default)]
struct Scripted {
    failures: Mutex<VecDeque<ProviderError>>,
    calls: AtomicUsize,
    running: AtomicUsize,
    most: AtomicUsize,
    /// When each call started, from the test's start.
    starts: Mutex<Vec<Duration>>,
    epoch: Mutex<Option<Instant>>,
}

#[async_trait::async_trait]
impl Provider for Scripted {
    async fn run(&self, request: &Request) -> Result<Response, ProviderError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let epoch = *self.epoch.lock().get_or_insert_with(Instant::now);
        self.starts.lock().push(epoch.elapsed());
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        let ms: u64 = match request {
            Request::Chat(c) => c.messages[0].content.parse().unwrap(),
            _ => 10,
        };
        tokio::time::sleep(Duration::from_millis(ms)).await;
        self.running.fetch_sub(1, Ordering::SeqCst);
        if let Some(failure) = self.failures.lock().pop_front() {
            return Err(failure);
        }
        Ok(Response::Chat { content: format!("after {ms}") })
    }
}

fn chat(id: u64, latency_ms: u64, timeout_ms: u64) -> Operation {
    let messages = vec![ChatMessage { role: Role::User, content: latency_ms.to_string() }];
    Operation { id, request: Request::Chat(ChatRequest { messages, max_tokens: None, temperature: None }), timeout_ms }
}

fn lane(concurrency: usize, queue: usize, attempts: usize) -> LaneConfig {
    LaneConfig {
        concurrency,
        queue,
        attempts,
        min_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(1),
        jitter: false,
    }
}

fn chat_runner(provider: &Arc<Scripted>, config: LaneConfig) -> (Runner, prometheus_client::registry::Registry) {
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Arc::new(Metrics::new(&mut registry));
    let runner = Runner::builder().lane(Kind::Chat, Arc::clone(provider) as Arc<dyn Provider>, config).build(metrics);
    (runner, registry)
}

/// Every outcome, with when it came.
async fn collect(mut done: mpsc::UnboundedReceiver<Completed>, n: usize) -> Vec<(Completed, Duration)> {
    let start = Instant::now();
    let mut got = Vec::new();
    while got.len() < n {
        let completed = done.recv().await.unwrap();
        got.push((completed, start.elapsed()));
    }
    // And nothing more: each operation has exactly one outcome.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(done.try_recv().is_err());
    got
}

fn metric(registry: &prometheus_client::registry::Registry, series: &str) -> f64 {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .map_or(0.0, |v| v.parse().unwrap())
}

#[tokio::test(start_paused = true)]
async fn outcomes_come_in_the_order_operations_finish_each_once() {
    let provider = Arc::new(Scripted::default());
    let (runner, registry) = chat_runner(&provider, lane(8, 8, 1));
    let (tx, rx) = mpsc::unbounded_channel();
    for (id, ms) in [(1, 300), (2, 100), (3, 200)] {
        runner.start(chat(id, ms, 10_000), tx.clone());
    }
    let got = collect(rx, 3).await;
    let order: Vec<(u64, u128)> = got.iter().map(|(c, at)| (c.id, at.as_millis())).collect();
    assert_eq!(order, [(2, 100), (3, 200), (1, 300)]);
    assert_eq!(got[0].0.outcome, Ok(Response::Chat { content: "after 100".into() }));
    assert_eq!(metric(&registry, r#"gaia_ops_operations_total{kind="chat",result="ok"}"#), 3.0);
    runner.closed().await;
}

#[tokio::test(start_paused = true)]
async fn a_slow_provider_times_out_at_the_operations_timeout() {
    let provider = Arc::new(Scripted::default());
    let (runner, registry) = chat_runner(&provider, lane(8, 8, 3));
    let (tx, rx) = mpsc::unbounded_channel();
    runner.start(chat(1, 5_000, 1_000), tx);
    let got = collect(rx, 1).await;
    assert_eq!(got[0].0.outcome, Err(OpError::TimedOut { after_ms: 1_000 }));
    assert_eq!(got[0].1, Duration::from_millis(1_000));
    assert_eq!(metric(&registry, r#"gaia_ops_operations_total{kind="chat",result="timed_out"}"#), 1.0);
    assert_eq!(metric(&registry, r#"gaia_ops_in_flight{kind="chat"}"#), 0.0, "the abandoned attempt is not counted");
}

#[tokio::test(start_paused = true)]
async fn no_more_than_the_limit_run_at_once_and_a_full_queue_refuses_at_once() {
    let provider = Arc::new(Scripted::default());
    let (runner, registry) = chat_runner(&provider, lane(2, 3, 1));
    let (tx, rx) = mpsc::unbounded_channel();
    // 2 run, 3 wait, the sixth is refused without a call.
    for id in 1..=6 {
        runner.start(chat(id, 1_000, 60_000), tx.clone());
    }
    let got = collect(rx, 6).await;
    assert_eq!(got[0].0, Completed { id: 6, outcome: Err(OpError::Overloaded { kind: "chat".into() }) });
    assert_eq!(got[0].1, Duration::ZERO);
    let finished: Vec<u128> = got[1..].iter().map(|(_, at)| at.as_millis()).collect();
    assert_eq!(finished, [1_000, 1_000, 2_000, 2_000, 3_000]);
    assert_eq!(provider.most.load(Ordering::SeqCst), 2);
    assert_eq!(provider.calls.load(Ordering::SeqCst), 5);
    assert_eq!(metric(&registry, r#"gaia_ops_operations_total{kind="chat",result="overloaded"}"#), 1.0);
    assert_eq!(metric(&registry, r#"gaia_ops_pending{kind="chat"}"#), 0.0);

    // A freed queue takes operations again.
    let (tx, rx) = mpsc::unbounded_channel();
    runner.start(chat(7, 10, 60_000), tx);
    assert!(collect(rx, 1).await[0].0.outcome.is_ok());
}

#[tokio::test(start_paused = true)]
async fn retryable_failures_are_retried_with_growing_pauses() {
    let provider = Arc::new(Scripted::default());
    provider.failures.lock().extend([ProviderError::retryable("503"), ProviderError::retryable("503")]);
    let (runner, registry) = chat_runner(&provider, lane(8, 8, 3));
    let (tx, rx) = mpsc::unbounded_channel();
    runner.start(chat(1, 10, 60_000), tx);
    let got = collect(rx, 1).await;
    assert!(got[0].0.outcome.is_ok(), "{:?}", got[0].0);
    // Attempts at 0, then 10 + 100, then 10 + 100 + 10 + 200 ms (the clock rounds a
    // timer up to the next millisecond).
    let starts: Vec<u128> = provider.starts.lock().iter().map(Duration::as_millis).collect();
    assert!(matches!(starts[..], [0, 110..=111, 320..=322]), "{starts:?}");
    assert_eq!(metric(&registry, r#"gaia_ops_retries_total{kind="chat"}"#), 2.0);
}

#[tokio::test(start_paused = true)]
async fn permanent_failures_and_unsafe_requests_are_not_retried() {
    let provider = Arc::new(Scripted::default());
    provider.failures.lock().push_back(ProviderError::permanent("400 bad request"));
    let (runner, _) = chat_runner(&provider, lane(8, 8, 5));
    let (tx, rx) = mpsc::unbounded_channel();
    runner.start(chat(1, 10, 60_000), tx);
    let got = collect(rx, 1).await;
    assert_eq!(got[0].0.outcome, Err(OpError::Failed { reason: "400 bad request".into() }));
    assert_eq!(provider.calls.load(Ordering::SeqCst), 1);

    // A POST may have happened: a retryable failure is not retried.
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Arc::new(Metrics::new(&mut registry));
    let provider = Arc::new(Scripted::default());
    provider.failures.lock().push_back(ProviderError::retryable("connection reset"));
    let runner =
        Runner::builder().lane(Kind::Http, Arc::clone(&provider) as Arc<dyn Provider>, lane(8, 8, 5)).build(metrics);
    let post = HttpRequest { method: "POST".into(), url: "http://x/".into(), headers: vec![], body: vec![] };
    let (tx, rx) = mpsc::unbounded_channel();
    runner.start(Operation { id: 2, request: Request::Http(post), timeout_ms: 60_000 }, tx);
    let got = collect(rx, 1).await;
    assert_eq!(got[0].0.outcome, Err(OpError::Failed { reason: "connection reset".into() }));
    assert_eq!(provider.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn the_timeout_covers_the_queue_and_the_pauses_between_attempts() {
    let provider = Arc::new(Scripted::default());
    provider.failures.lock().extend((0..10).map(|_| ProviderError::retryable("503")));
    let (runner, _) = chat_runner(&provider, lane(1, 8, 10));
    let (tx, rx) = mpsc::unbounded_channel();
    runner.start(chat(1, 10, 500), tx.clone());
    let got = collect(rx, 1).await;
    assert_eq!(
        (got[0].0.outcome.clone(), got[0].1),
        (Err(OpError::TimedOut { after_ms: 500 }), Duration::from_millis(500))
    );

    // Waiting behind a long call counts too.
    let provider = Arc::new(Scripted::default());
    let (runner, _) = chat_runner(&provider, lane(1, 8, 1));
    let (tx, rx) = mpsc::unbounded_channel();
    runner.start(chat(1, 2_000, 60_000), tx.clone());
    runner.start(chat(2, 10, 1_000), tx);
    let got = collect(rx, 2).await;
    assert_eq!(got[0].0, Completed { id: 2, outcome: Err(OpError::TimedOut { after_ms: 1_000 }) });
    assert_eq!(provider.calls.load(Ordering::SeqCst), 1, "the second never reached the provider");
}

#[tokio::test(start_paused = true)]
async fn a_kind_without_a_provider_is_unsupported() {
    let provider = Arc::new(Scripted::default());
    let (runner, _) = chat_runner(&provider, lane(1, 1, 1));
    let (tx, rx) = mpsc::unbounded_channel();
    let embed = Request::Embed(gaia_ops::EmbedRequest { input: "x".into() });
    runner.start(Operation { id: 9, request: embed, timeout_ms: 1_000 }, tx);
    let got = collect(rx, 1).await;
    assert_eq!(got[0].0.outcome, Err(OpError::Unsupported { kind: "embed".into() }));
}

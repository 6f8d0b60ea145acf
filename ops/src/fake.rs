//! A fake OpenAI-compatible server: `POST /v1/chat/completions` and `POST /v1/embeddings`,
//! answering after a latency drawn from a range, failing a share of calls with 503, and
//! checking the bearer key when it has one. No model: a chat answer is made from the last
//! message (so a test can tell which prompt it answers), an embedding hashes the text's
//! words into a unit vector (texts sharing words are near each other, so similarity
//! search has something to find). Seeded: the same calls in the same order get the same
//! latencies and failures.
//!
//! For tests and the load generator, where no model runs; `gaia fake-llm` serves it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::Mutex;

use crate::request::Role;
use crate::wire::{
    ChatCompletionRequest, ChatCompletionResponse, Choice, Embedding, EmbeddingRequest, EmbeddingResponse, ErrorDetail,
    ErrorResponse, Usage, WireMessage,
};

#[derive(Debug, Clone)]
pub struct FakeConfig {
    /// Each answer waits a latency drawn uniformly from this range.
    pub latency: (Duration, Duration),
    /// Share of calls (0 to 1) answered 503 instead, after the latency.
    pub failure_rate: f64,
    /// When set, calls without `Authorization: Bearer {key}` are 401.
    pub api_key: Option<String>,
    /// Length of the embeddings.
    pub dimensions: usize,
    pub seed: u64,
}

impl Default for FakeConfig {
    fn default() -> Self {
        Self { latency: (Duration::ZERO, Duration::ZERO), failure_rate: 0.0, api_key: None, dimensions: 64, seed: 1 }
    }
}

/// What the fake has been asked, for tests.
#[derive(Debug, Default)]
pub struct Calls {
    pub chat: AtomicU64,
    pub embeddings: AtomicU64,
    /// Calls answered with an injected 503.
    pub failed: AtomicU64,
    /// The last [`KEPT_PROMPTS`] chat requests' messages, for tests.
    pub prompts: std::sync::Mutex<std::collections::VecDeque<Vec<WireMessage>>>,
}

/// Chat requests [`Calls::prompts`] keeps.
pub const KEPT_PROMPTS: usize = 1000;

struct Fake {
    config: FakeConfig,
    rng: Mutex<SmallRng>,
    calls: Arc<Calls>,
}

/// The fake's routes, under `/v1`, and its call counts.
pub fn router(config: FakeConfig) -> (Router, Arc<Calls>) {
    let calls = Arc::new(Calls::default());
    let rng = Mutex::new(SmallRng::seed_from_u64(config.seed));
    let fake = Arc::new(Fake { config, rng, calls: Arc::clone(&calls) });
    let router = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/embeddings", post(embeddings))
        .with_state(fake);
    (router, calls)
}

/// Serves [`router`] on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: FakeConfig,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    let (router, _) = router(config);
    axum::serve(listener, router).with_graceful_shutdown(shutdown.cancelled_owned()).await
}

fn error(status: StatusCode, kind: &str, message: impl Into<String>) -> Response {
    let body = ErrorResponse { error: ErrorDetail { message: message.into(), kind: Some(kind.into()) } };
    (status, Json(body)).into_response()
}

impl Fake {
    /// Checks the key, waits the latency, and decides on an injected failure.
    async fn admit(&self, headers: &HeaderMap) -> Result<(), Response> {
        if let Some(key) = &self.config.api_key {
            let given = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
            if given != Some(format!("Bearer {key}").as_str()) {
                return Err(error(StatusCode::UNAUTHORIZED, "invalid_request_error", "incorrect API key"));
            }
        }
        let (latency, fail) = {
            let mut rng = self.rng.lock().await;
            let (low, high) = self.config.latency;
            let latency = if high > low { rng.random_range(low..=high) } else { low };
            (latency, rng.random_bool(self.config.failure_rate.clamp(0.0, 1.0)))
        };
        tokio::time::sleep(latency).await;
        if fail {
            self.calls.failed.fetch_add(1, Ordering::Relaxed);
            return Err(error(StatusCode::SERVICE_UNAVAILABLE, "server_error", "fake provider: injected failure"));
        }
        Ok(())
    }
}

const ENDINGS: [&str; 6] = [
    "Tell me more.",
    "I was thinking the same.",
    "That reminds me of the old mill.",
    "Let us talk again soon.",
    "What do you make of it?",
    "I will remember that.",
];

/// The answer to `messages`: their last message, quoted, and an ending picked by it.
pub fn reply(messages: &[WireMessage]) -> String {
    let last = messages.last().and_then(|m| m.content.as_deref()).unwrap_or_default();
    let quoted: String = last.split_whitespace().take(12).collect::<Vec<_>>().join(" ");
    let ending = ENDINGS[(fnv(last) % ENDINGS.len() as u64) as usize];
    format!("You said \"{quoted}\". {ending}")
}

/// `text`'s words hashed into `dimensions` buckets, as a unit vector (all zeros for no words).
pub fn embed(text: &str, dimensions: usize) -> Vec<f32> {
    let mut vector = vec![0f32; dimensions.max(1)];
    for word in text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()) {
        let bucket = (fnv(&word.to_lowercase()) % vector.len() as u64) as usize;
        vector[bucket] += 1.0;
    }
    let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        vector.iter_mut().for_each(|x| *x /= norm);
    }
    vector
}

fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// Roughly a token per four bytes, as the usage a real server reports.
fn tokens(text: &str) -> u64 {
    (text.len() as u64).div_ceil(4)
}

async fn chat(
    State(fake): State<Arc<Fake>>,
    headers: HeaderMap,
    body: Result<Json<ChatCompletionRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Ok(Json(request)) = body else {
        return error(StatusCode::BAD_REQUEST, "invalid_request_error", "not a chat completion request");
    };
    if request.model.is_empty() || request.messages.is_empty() {
        return error(StatusCode::BAD_REQUEST, "invalid_request_error", "model and messages are required");
    }
    fake.calls.chat.fetch_add(1, Ordering::Relaxed);
    if let Ok(mut prompts) = fake.calls.prompts.lock() {
        if prompts.len() >= KEPT_PROMPTS {
            prompts.pop_front();
        }
        prompts.push_back(request.messages.clone());
    }
    if let Err(refused) = fake.admit(&headers).await {
        return refused;
    }
    let content = reply(&request.messages);
    let prompt: u64 = request.messages.iter().map(|m| tokens(m.content.as_deref().unwrap_or_default())).sum();
    let completion = tokens(&content);
    let usage = Usage { prompt_tokens: prompt, completion_tokens: completion, total_tokens: prompt + completion };
    let message = WireMessage { role: Role::Assistant, content: Some(content) };
    let choice = Choice { index: 0, message, finish_reason: Some("stop".into()) };
    let id = format!("chatcmpl-fake-{}", fake.calls.chat.load(Ordering::Relaxed));
    Json(ChatCompletionResponse { id, model: request.model, choices: vec![choice], usage: Some(usage) }).into_response()
}

async fn embeddings(
    State(fake): State<Arc<Fake>>,
    headers: HeaderMap,
    body: Result<Json<EmbeddingRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Ok(Json(request)) = body else {
        return error(StatusCode::BAD_REQUEST, "invalid_request_error", "not an embedding request");
    };
    fake.calls.embeddings.fetch_add(1, Ordering::Relaxed);
    if let Err(refused) = fake.admit(&headers).await {
        return refused;
    }
    let embedding = embed(&request.input, fake.config.dimensions);
    let usage =
        Usage { prompt_tokens: tokens(&request.input), completion_tokens: 0, total_tokens: tokens(&request.input) };
    Json(EmbeddingResponse { data: vec![Embedding { index: 0, embedding }], model: request.model, usage: Some(usage) })
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embeddings_of_texts_sharing_words_are_near() {
        let cos = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
        let mill = embed("we talked about the old mill by the river", 64);
        let near = embed("the mill by the river is old", 64);
        let far = embed("taxes, weather, and goats", 64);
        assert!((cos(&mill, &mill) - 1.0).abs() < 1e-5);
        assert!(cos(&mill, &near) > cos(&mill, &far) + 0.3, "{} vs {}", cos(&mill, &near), cos(&mill, &far));
        assert_eq!(embed("", 8), vec![0.0; 8]);
    }

    #[test]
    fn replies_quote_the_last_message() {
        let m = |text: &str| WireMessage { role: Role::User, content: Some(text.into()) };
        let answer = reply(&[m("ignored"), m("how is the harvest?")]);
        assert!(answer.starts_with("You said \"how is the harvest?\". "), "{answer}");
        assert_eq!(answer, reply(&[m("how is the harvest?")]), "deterministic");
    }
}

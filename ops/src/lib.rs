//! Operations: what a world asks of the outside world, run off the tick path.
//!
//! A world is pure and synchronous; an AI-Town agent thinks through model calls that take
//! seconds. So a world *starts* an [`Operation`] (a typed [`Request`]: a chat completion,
//! an embedding, an HTTP call or a game-defined job, with an id and a timeout), and the
//! [`Runner`] runs it on its own task and hands back one [`Completed`] (the [`Outcome`]:
//! the response, or why there is none) which the world applies at a later tick, like an
//! input. The runner never blocks its caller: each kind of request goes to a lane with a
//! provider ([`Provider`]), a concurrency limit and a bounded queue (past it the outcome
//! is [`OpError::Overloaded`] at once), retries where that is safe
//! ([`Request::retry_safe`]) with exponential backoff, and a timeout that covers the
//! queue, every attempt and the pauses between them.
//!
//! Providers: [`openai::OpenAi`] speaks the OpenAI-compatible HTTP API (chat completions
//! and embeddings: OpenAI, Ollama, vLLM, llama.cpp's server); [`http::Http`] makes plain
//! HTTP calls; a game registers its own for jobs; the game server registers its memory
//! store for [`Kind::Memory`] (remember and recall). [`fake`] is an OpenAI-compatible server
//! with configurable latency and failures, for tests and the load generator (no model
//! runs on the test machines): the real client code is what runs against it.
//!
//! Start with [`Request`], then [`Runner::start`].

mod config;
pub mod fake;
pub mod http;
pub mod metrics;
pub mod openai;
mod provider;
mod request;
mod runner;
pub mod wire;

pub use config::OpsConfig;
pub use metrics::Metrics;
pub use provider::{Provider, ProviderError};
pub use request::{
    ChatMessage, ChatRequest, Completed, EmbedRequest, HttpRequest, JobRequest, Kind, OpError, OpId, Operation,
    Outcome, RecallRequest, RecalledMemory, RememberRequest, Request, Response, Role,
};
pub use runner::{LaneConfig, Runner, RunnerBuilder};

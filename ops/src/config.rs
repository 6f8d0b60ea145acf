//! How a game server's runner is set up: flags and `GAIA_*` variables (the fleet's
//! template sets them; the key comes from a Secret or the environment). Without
//! `GAIA_LLM_URL` there is no model: chat and embed operations are `Unsupported`, and
//! worlds fall back to what they do without one (the town's bots follow their scripts).

use std::sync::Arc;
use std::time::Duration;

use crate::http::Http;
use crate::openai::{OpenAi, OpenAiConfig};
use crate::request::Kind;
use crate::runner::{LaneConfig, Runner, RunnerBuilder};
use crate::{Metrics, Provider};

#[derive(Debug, Clone, clap::Args)]
pub struct OpsConfig {
    /// OpenAI-compatible API base: `https://api.openai.com/v1`, Ollama's
    /// `http://host:11434/v1`, a vLLM or llama.cpp server. Unset: no model calls.
    #[arg(long, env = "GAIA_LLM_URL")]
    pub llm_url: Option<String>,
    /// Sent as `Authorization: Bearer`; from a Secret on Kubernetes.
    #[arg(long, env = "GAIA_LLM_API_KEY", hide_env_values = true)]
    pub llm_api_key: Option<String>,
    #[arg(long, env = "GAIA_LLM_CHAT_MODEL", default_value = "gpt-4o-mini")]
    pub llm_chat_model: String,
    #[arg(long, env = "GAIA_LLM_EMBEDDING_MODEL", default_value = "text-embedding-3-small")]
    pub llm_embedding_model: String,
    /// Model calls (chat and embeddings together) this server makes at once...
    #[arg(long, env = "GAIA_LLM_CONCURRENCY", default_value_t = 16)]
    pub llm_concurrency: usize,
    /// ...and how many more may wait; past that, operations are refused (`Overloaded`).
    #[arg(long, env = "GAIA_LLM_QUEUE", default_value_t = 1024)]
    pub llm_queue: usize,
    /// Tries per model call, the first included (transient failures only: 408, 429, 5xx,
    /// a failed connection).
    #[arg(long, env = "GAIA_LLM_ATTEMPTS", default_value_t = 3)]
    pub llm_attempts: usize,
    /// One HTTP call's limit; an operation's own timeout bounds all its attempts.
    #[arg(long, env = "GAIA_LLM_REQUEST_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub llm_request_timeout: Duration,
    /// Plain HTTP operations this server makes at once (no retries of non-idempotent ones).
    #[arg(long, env = "GAIA_HTTP_OPS_CONCURRENCY", default_value_t = 16)]
    pub http_concurrency: usize,
}

impl Default for OpsConfig {
    fn default() -> Self {
        Self {
            llm_url: None,
            llm_api_key: None,
            llm_chat_model: "gpt-4o-mini".into(),
            llm_embedding_model: "text-embedding-3-small".into(),
            llm_concurrency: 16,
            llm_queue: 1024,
            llm_attempts: 3,
            llm_request_timeout: Duration::from_secs(60),
            http_concurrency: 16,
        }
    }
}

impl OpsConfig {
    /// The runner: an LLM lane when there is a URL (chat and embeddings share its limit),
    /// and an HTTP lane.
    pub fn runner(&self, metrics: Arc<Metrics>) -> Result<Runner, reqwest::Error> {
        Ok(self.lanes(&metrics)?.build(metrics))
    }

    /// [`OpsConfig::runner`]'s lanes, for a server to add its own (the memory store's);
    /// the model's token counts go to `metrics`.
    pub fn lanes(&self, metrics: &Metrics) -> Result<RunnerBuilder, reqwest::Error> {
        let mut builder = Runner::builder();
        let http = Http::new(self.llm_request_timeout)?;
        builder = builder.lane(
            Kind::Http,
            Arc::new(http),
            LaneConfig { concurrency: self.http_concurrency, ..LaneConfig::default() },
        );
        if let Some(url) = &self.llm_url {
            let openai: Arc<dyn Provider> = Arc::new(
                OpenAi::new(OpenAiConfig {
                    base_url: url.clone(),
                    api_key: self.llm_api_key.clone(),
                    chat_model: self.llm_chat_model.clone(),
                    embedding_model: self.llm_embedding_model.clone(),
                    request_timeout: self.llm_request_timeout,
                })?
                .counting_tokens(metrics.tokens.clone()),
            );
            let lane = LaneConfig {
                concurrency: self.llm_concurrency,
                queue: self.llm_queue,
                attempts: self.llm_attempts.max(1),
                ..LaneConfig::default()
            };
            builder = builder.shared_lane(&[Kind::Chat, Kind::Embed], openai, lane);
        }
        Ok(builder)
    }
}

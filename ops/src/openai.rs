//! A provider speaking the OpenAI-compatible HTTP API: `POST {base}/chat/completions` and
//! `POST {base}/embeddings`, with `Authorization: Bearer {key}` when a key is set. The same
//! two endpoints are served by OpenAI (`https://api.openai.com/v1`), Ollama
//! (`http://host:11434/v1`), vLLM and llama.cpp's server, so one client serves them all.
//!
//! It is reqwest and the bodies of [`crate::wire`], not a full OpenAI SDK: two endpoints
//! are all agents need, and the runner, not the client, decides about retries, timeouts
//! and concurrency. A 408, a 429, a 5xx or a failed connection is retryable; any other
//! refusal, or an answer that does not parse, is not.

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::metrics::TokenLabels;
use crate::provider::{Provider, ProviderError};
use crate::request::{ChatRequest, EmbedRequest, Request, Response};
use crate::wire::{
    ChatCompletionRequest, ChatCompletionResponse, EmbeddingRequest, EmbeddingResponse, ErrorResponse, Usage,
};

#[derive(Debug, Clone)]
pub struct OpenAiConfig {
    /// Up to and with the API version: `https://api.openai.com/v1`.
    pub base_url: String,
    /// Sent as a bearer token when set.
    pub api_key: Option<String>,
    pub chat_model: String,
    pub embedding_model: String,
    /// One HTTP call's limit (the operation's timeout bounds all of its attempts).
    pub request_timeout: Duration,
}

pub struct OpenAi {
    http: reqwest::Client,
    config: OpenAiConfig,
    /// Where the tokens each answer's `usage` reports are counted.
    tokens: Family<TokenLabels, Counter>,
}

impl OpenAi {
    pub fn new(config: OpenAiConfig) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder().timeout(config.request_timeout).build()?;
        Ok(Self { http, config, tokens: Family::default() })
    }

    /// Counts the tokens answers report in `tokens` (the runner's
    /// `gaia_ops_model_tokens_total`).
    pub fn counting_tokens(self, tokens: Family<TokenLabels, Counter>) -> Self {
        Self { tokens, ..self }
    }

    /// Counts an answer's `usage`, under the model that answered (or the one asked).
    fn count(&self, asked: &str, answered: &str, usage: Option<Usage>) {
        let Some(usage) = usage else { return };
        let model = if answered.is_empty() { asked } else { answered };
        for (token, n) in [("prompt", usage.prompt_tokens), ("completion", usage.completion_tokens)] {
            if n > 0 {
                self.tokens.get_or_create(&TokenLabels { model: model.to_string(), token }).inc_by(n);
            }
        }
    }

    async fn post<B: serde::Serialize, R: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<R, ProviderError> {
        let url = format!("{}/{path}", self.config.base_url.trim_end_matches('/'));
        let mut call = self.http.post(&url).json(body);
        if let Some(key) = &self.config.api_key {
            call = call.bearer_auth(key);
        }
        let response = call.send().await.map_err(|e| ProviderError::retryable(format!("POST {url}: {e}")))?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| ProviderError::retryable(format!("POST {url}: {e}")))?;
        if !status.is_success() {
            let message = serde_json::from_slice::<ErrorResponse>(&bytes)
                .map(|e| e.error.message)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).chars().take(200).collect());
            let message = format!("POST {url}: {status}: {message}");
            let retryable = status.is_server_error() || matches!(status.as_u16(), 408 | 429);
            return Err(ProviderError { message, retryable });
        }
        serde_json::from_slice(&bytes).map_err(|e| ProviderError::permanent(format!("POST {url}: bad answer: {e}")))
    }

    async fn chat(&self, request: &ChatRequest) -> Result<Response, ProviderError> {
        let body = ChatCompletionRequest {
            model: self.config.chat_model.clone(),
            messages: request.messages.iter().map(Into::into).collect(),
            max_tokens: request.max_tokens,
            temperature: request.temperature,
        };
        let answer: ChatCompletionResponse = self.post("chat/completions", &body).await?;
        self.count(&body.model, &answer.model, answer.usage);
        let choice =
            answer.choices.into_iter().next().ok_or_else(|| ProviderError::permanent("an answer with no choice"))?;
        Ok(Response::Chat { content: choice.message.content.unwrap_or_default() })
    }

    async fn embed(&self, request: &EmbedRequest) -> Result<Response, ProviderError> {
        let body = EmbeddingRequest { model: self.config.embedding_model.clone(), input: request.input.clone() };
        let answer: EmbeddingResponse = self.post("embeddings", &body).await?;
        self.count(&body.model, &answer.model, answer.usage);
        let first =
            answer.data.into_iter().next().ok_or_else(|| ProviderError::permanent("an answer with no embedding"))?;
        Ok(Response::Embedding { vector: first.embedding })
    }
}

#[async_trait::async_trait]
impl Provider for OpenAi {
    async fn run(&self, request: &Request) -> Result<Response, ProviderError> {
        match request {
            Request::Chat(chat) => self.chat(chat).await,
            Request::Embed(embed) => self.embed(embed).await,
            other => Err(ProviderError::permanent(format!(
                "the OpenAI provider does not run {} requests",
                other.kind().label()
            ))),
        }
    }
}

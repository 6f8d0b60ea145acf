//! A provider for plain HTTP calls ([`Request::Http`]). Any status is an answer the world
//! sees, but 429, 502, 503 and 504, which say "later": those are retryable failures (and
//! retried if the method is idempotent). Bodies are cut at [`MAX_BODY`].

use std::time::Duration;

use crate::provider::{Provider, ProviderError};
use crate::request::{HttpRequest, Request, Response};

/// Longest response body kept (the rest is dropped): world state should stay small.
pub const MAX_BODY: usize = 1 << 20;

pub struct Http {
    client: reqwest::Client,
}

impl Http {
    /// `request_timeout` bounds one call (the operation's timeout bounds all attempts).
    pub fn new(request_timeout: Duration) -> Result<Self, reqwest::Error> {
        Ok(Self { client: reqwest::Client::builder().timeout(request_timeout).build()? })
    }

    async fn call(&self, request: &HttpRequest) -> Result<Response, ProviderError> {
        let method = reqwest::Method::from_bytes(request.method.as_bytes())
            .map_err(|_| ProviderError::permanent(format!("not an HTTP method: {:?}", request.method)))?;
        let mut call = self.client.request(method, &request.url).body(request.body.clone());
        for (name, value) in &request.headers {
            call = call.header(name, value);
        }
        let what = format!("{} {}", request.method, request.url);
        let response = call.send().await.map_err(|e| {
            if e.is_builder() {
                ProviderError::permanent(format!("{what}: {e}"))
            } else {
                ProviderError::retryable(format!("{what}: {e}"))
            }
        })?;
        let status = response.status().as_u16();
        if matches!(status, 429 | 502 | 503 | 504) {
            return Err(ProviderError::retryable(format!("{what}: {}", response.status())));
        }
        let mut body = response.bytes().await.map_err(|e| ProviderError::retryable(format!("{what}: {e}")))?.to_vec();
        body.truncate(MAX_BODY);
        Ok(Response::Http { status, body })
    }
}

#[async_trait::async_trait]
impl Provider for Http {
    async fn run(&self, request: &Request) -> Result<Response, ProviderError> {
        match request {
            Request::Http(http) => self.call(http).await,
            other => Err(ProviderError::permanent(format!(
                "the HTTP provider does not run {} requests",
                other.kind().label()
            ))),
        }
    }
}

//! The matchmaker side: `POST /v1/allocations`, retrying 429 (no capacity yet) with a
//! jittered exponential backoff until the allocate timeout.

use std::time::Duration;

use gaia_api::allocation::{AllocationRequest, AllocationResponse, ErrorBody};
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use tokio::time::Instant;

use crate::bot::micros;

/// First wait after a 429.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// One allocation request that takes longer than this is an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How long to wait before retry number `retry` (0 for the first): `first` doubling up
/// to 1 s, then a random point in the upper half of that, so bots that failed together
/// (a 429, a crashed server) do not come back together.
pub(crate) fn backoff(first: Duration, retry: u32, rng: &mut impl Rng) -> Duration {
    let full = first.saturating_mul(2u32.saturating_pow(retry.min(16))).min(MAX_BACKOFF);
    full / 2 + full.mul_f64(rng.random::<f64>() / 2.0)
}

/// One allocation, retries included.
#[derive(Debug)]
pub(crate) struct Allocation {
    pub result: Result<AllocationResponse, String>,
    /// Latency of the request that succeeded.
    pub latency_us: Option<u64>,
    /// 429 answers that were retried.
    pub retries: u64,
    pub started: Instant,
    pub ended: Instant,
}

#[derive(Debug, Clone)]
pub(crate) struct Matchmaker {
    http: reqwest::Client,
    url: String,
    timeout: Duration,
}

impl Matchmaker {
    /// `allocator_url` is the allocator's base URL; `timeout` bounds the 429 retries.
    pub(crate) fn new(http: reqwest::Client, allocator_url: &str, timeout: Duration) -> Self {
        Self { http, url: format!("{}/v1/allocations", allocator_url.trim_end_matches('/')), timeout }
    }

    pub(crate) async fn allocate(&self, request: &AllocationRequest) -> Allocation {
        self.allocate_within(request, self.timeout).await
    }

    /// [`Self::allocate`], retrying 429 for at most `timeout` (capped at the allocate
    /// timeout); one request is made however short `timeout` is.
    pub(crate) async fn allocate_within(&self, request: &AllocationRequest, timeout: Duration) -> Allocation {
        let timeout = timeout.min(self.timeout);
        let started = Instant::now();
        let mut retries = 0u64;
        let mut backoff_rng = rand::rngs::SmallRng::from_rng(&mut rand::rng());
        let result = loop {
            let sent = Instant::now();
            match self.post(request).await {
                Ok(response) => {
                    let latency = micros(sent.elapsed());
                    return Allocation {
                        result: Ok(response),
                        latency_us: Some(latency),
                        retries,
                        started,
                        ended: Instant::now(),
                    };
                }
                Err(Refused::NoCapacity(message)) => {
                    let wait = backoff(FIRST_BACKOFF, u32::try_from(retries).unwrap_or(u32::MAX), &mut backoff_rng);
                    if started.elapsed() + wait > timeout {
                        break Err(format!(
                            "no capacity within {} ({retries} retries): {message}",
                            humantime::format_duration(timeout)
                        ));
                    }
                    retries += 1;
                    tokio::time::sleep(wait).await;
                }
                Err(Refused::Other(message)) => break Err(message),
            }
        };
        Allocation { result, latency_us: None, retries, started, ended: Instant::now() }
    }

    async fn post(&self, request: &AllocationRequest) -> Result<AllocationResponse, Refused> {
        let response = self
            .http
            .post(&self.url)
            .json(request)
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await
            .map_err(|e| Refused::Other(format!("POST {}: {}", self.url, chain(&e))))?;
        let status = response.status();
        if status.is_success() {
            return response.json().await.map_err(|e| Refused::Other(format!("reading the answer: {}", chain(&e))));
        }
        let body = response.text().await.unwrap_or_default();
        let message = match serde_json::from_str::<ErrorBody>(&body) {
            Ok(ErrorBody { error }) => match error.field {
                Some(field) => format!("HTTP {} {}: {} (field {field})", status.as_u16(), error.code, error.message),
                None => format!("HTTP {} {}: {}", status.as_u16(), error.code, error.message),
            },
            Err(_) => format!("HTTP {}: {}", status.as_u16(), body.chars().take(200).collect::<String>()),
        };
        if status == StatusCode::TOO_MANY_REQUESTS {
            Err(Refused::NoCapacity(message))
        } else {
            Err(Refused::Other(message))
        }
    }
}

enum Refused {
    NoCapacity(String),
    Other(String),
}

/// An error and its causes on one line (reqwest's own message hides the cause).
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use rand::rngs::SmallRng;

    use super::*;

    #[test]
    fn backoff_doubles_to_a_second_with_jitter() {
        let mut rng = SmallRng::seed_from_u64(7);
        let ms = |d: Duration| d.as_millis();
        for (retry, full) in [(0, 50), (1, 100), (2, 200), (3, 400), (4, 800), (5, 1000), (30, 1000), (u32::MAX, 1000)]
        {
            for _ in 0..50 {
                let wait = ms(backoff(FIRST_BACKOFF, retry, &mut rng));
                assert!((full / 2..=full).contains(&wait), "retry {retry}: {wait} ms");
            }
        }
        let first = Duration::from_millis(100);
        for (retry, full) in [(0, 100), (1, 200), (2, 400), (3, 800), (4, 1000)] {
            let wait = ms(backoff(first, retry, &mut rng));
            assert!((full / 2..=full).contains(&wait), "retry {retry}: {wait} ms");
        }
    }
}

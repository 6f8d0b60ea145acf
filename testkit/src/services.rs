//! The real services tests use, never mocks: Redis at `GAIA_TEST_REDIS_URL` and Postgres
//! at `GAIA_TEST_DATABASE_URL` (local defaults), and tools such as `kubectl`.
//!
//! Without one, a test prints why and passes, so `cargo test` works on a bare machine;
//! with `REQUIRE_SERVICES` set (CI sets it), it fails instead, so a missing service can
//! never pass for a passing test.

pub const REDIS_URL: &str = "redis://127.0.0.1:6379";
pub const DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

pub fn redis_url() -> String {
    std::env::var("GAIA_TEST_REDIS_URL").unwrap_or_else(|_| REDIS_URL.into())
}

pub fn database_url() -> String {
    std::env::var("GAIA_TEST_DATABASE_URL").unwrap_or_else(|_| DATABASE_URL.into())
}

/// Whether a missing service fails the test (`REQUIRE_SERVICES` is set).
pub fn required() -> bool {
    std::env::var_os("REQUIRE_SERVICES").is_some()
}

/// A test cannot run because `why`: `None` after printing so, or a panic under
/// `REQUIRE_SERVICES`.
pub fn skip<T>(why: impl std::fmt::Display) -> Option<T> {
    if required() {
        panic!("REQUIRE_SERVICES is set, but {why}");
    }
    eprintln!("skipping: {why}; set REQUIRE_SERVICES to fail instead");
    None
}

/// [`skip`] for a service that did not answer: `what` (`"Redis"`) at `url`, and the error.
pub fn unavailable<T>(what: &str, url: &str, error: impl std::fmt::Display) -> Option<T> {
    skip(format!("{what} at {url} is unreachable ({error})"))
}

/// A Redis key prefix no other test uses, so tests share one Redis without meeting.
pub fn redis_prefix() -> String {
    format!("gaia-test:{}:", uuid::Uuid::new_v4())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_unique_and_under_gaia_test() {
        let (a, b) = (redis_prefix(), redis_prefix());
        assert!(a.starts_with("gaia-test:") && a.ends_with(':') && a != b);
    }
}

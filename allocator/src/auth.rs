//! Who may call what: bearer tokens for matchmakers and for game servers.
//!
//! Two kinds of token, both sent as `Authorization: Bearer <token>`:
//! - **Matchmaker tokens** (`Config::matchmaker_tokens`): opaque strings, any of which
//!   opens `/v1/allocations` (and `:batch`) and the reads `GET /v1/gameservers[/{name}]`.
//!   They are compared as SHA-256 digests, in constant time, against every configured
//!   token, so neither the matching token nor any token's length shows in the timing.
//! - **SDK tokens** (`Config::sdk_secret`): `TokenKey::sdk_token(name)`, which the
//!   controller hands to the game server it starts as `GAIA_SDK_TOKEN`. A game server's
//!   token opens its own `/v1/gameservers/{name}/...` calls and the read of its own
//!   record, nothing else: another server's valid token is 403, anything else 401.
//! - An operator's call on a server (`POST /v1/gameservers/{name}/drain`, from the web
//!   console or a script) takes either: a matchmaker token, or that server's own SDK token.
//!
//! No matchmaker token configured: matchmaker endpoints and operator calls are open; no
//! SDK secret: SDK endpoints are open ([`Auth::warn_if_open`] says so once at start). `/livez`,
//! `/readyz`, `/metrics` and `/openapi.json` are always open.
//!
//! Start with [`guard`], the pure rule (which path needs which token), then
//! [`Auth::check`] and the middleware [`authorize`].

use std::borrow::Cow;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use gaia_api::token::{SdkTokenError, TokenKey};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::metrics::{AllocationLabels, RefusedLabels, SdkLabels};
use crate::{ApiError, AppState};

const MISSING: &str = "missing bearer token";
const BAD: &str = "bad token";

/// What a request needs, decided by its path alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Guard<'a> {
    /// Operational endpoints: anyone.
    Open,
    /// Allocations and the fleet list: a matchmaker token.
    Matchmaker,
    /// The read of one server's record: a matchmaker token, or that server's SDK token
    /// (the SDK's `get`).
    MatchmakerOrServer(Cow<'a, str>),
    /// An SDK call on server `name` (`call` is its metric label): its own SDK token.
    Server { name: Cow<'a, str>, call: &'static str },
    /// An operator's call on server `name` (drain), also one of the server's own SDK
    /// calls: a matchmaker token, or that server's SDK token.
    Operator { name: Cow<'a, str>, call: &'static str },
}

impl Guard<'_> {
    /// The endpoint label of a refusal.
    fn endpoint(&self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Matchmaker | Self::MatchmakerOrServer(_) => "matchmaker",
            Self::Server { .. } | Self::Operator { .. } => "sdk",
        }
    }
}

/// Which token `path` needs. Everything under `/v1/` but a game server's own calls is a
/// matchmaker's, so a route added there later is guarded without a change here.
pub(crate) fn guard(path: &str) -> Guard<'_> {
    let Some(rest) = path.strip_prefix("/v1/") else {
        return Guard::Open;
    };
    let Some(server) = rest.strip_prefix("gameservers/").filter(|s| !s.is_empty()) else {
        return Guard::Matchmaker;
    };
    match server.split_once('/') {
        None => Guard::MatchmakerOrServer(decode(server)),
        Some((name, "drain")) => Guard::Operator { name: decode(name), call: "drain" },
        Some((name, tail)) => Guard::Server { name: decode(name), call: sdk_call(tail) },
    }
}

/// A path segment as the `Path` extractor sees it, so the name checked is the name the
/// handler acts on.
fn decode(segment: &str) -> Cow<'_, str> {
    percent_encoding::percent_decode_str(segment).decode_utf8().unwrap_or(Cow::Borrowed(segment))
}

/// The `call` label of an SDK path's tail, as the handlers count it.
fn sdk_call(tail: &str) -> &'static str {
    let mut parts = tail.split('/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("worlds"), Some(_), Some("started")) => "world_started",
        (Some("worlds"), Some(_), Some("ended")) => "world_ended",
        (Some("worlds"), Some(_), Some("move")) => "move_world",
        (Some("register"), None, _) => "register",
        (Some("ready"), None, _) => "ready",
        (Some("reserve"), None, _) => "reserve",
        (Some("allocate"), None, _) => "allocate",
        (Some("shutdown"), None, _) => "shutdown",
        (Some("drain"), None, _) => "drain",
        (Some("health"), None, _) => "health",
        (Some("labels"), None, _) => "set_label",
        (Some("players"), None, _) => "set_players",
        (Some("watch"), None, _) => "watch",
        _ => "unknown",
    }
}

/// The bearer token of a request: `None` when there is no `Authorization: Bearer`
/// header with a token in it.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The credentials this API accepts.
pub(crate) struct Auth {
    /// SHA-256 of each matchmaker token; empty: matchmaker endpoints are open.
    matchmakers: Vec<[u8; 32]>,
    /// Recomputes game servers' SDK tokens; `None`: SDK endpoints are open.
    sdk: Option<TokenKey>,
}

impl Auth {
    /// Empty tokens and an empty secret count as unset.
    pub(crate) fn new(matchmaker_tokens: &[String], sdk_secret: Option<&str>) -> Self {
        Self {
            matchmakers: matchmaker_tokens.iter().filter(|t| !t.is_empty()).map(|t| digest(t)).collect(),
            sdk: sdk_secret.filter(|s| !s.is_empty()).map(TokenKey::new),
        }
    }

    /// Whether matchmaker endpoints need a token (else they are open).
    pub(crate) fn has_matchmaker_tokens(&self) -> bool {
        !self.matchmakers.is_empty()
    }

    /// One warning per open kind of endpoint; called once when the API starts.
    pub(crate) fn warn_if_open(&self) {
        if self.matchmakers.is_empty() {
            tracing::warn!(
                "no matchmaker token configured: allocations, fleet reads and operator drains are not authenticated"
            );
        }
        if self.sdk.is_none() {
            tracing::warn!("no SDK secret configured: game-server SDK calls are not authenticated");
        }
    }

    /// Whether `token` is one of the matchmaker tokens. Every configured token is
    /// compared, whichever matches.
    fn is_matchmaker(&self, token: &str) -> bool {
        let presented = digest(token);
        let matched = self.matchmakers.iter().fold(subtle::Choice::from(0), |acc, t| acc | t.ct_eq(&presented));
        bool::from(matched)
    }

    pub(crate) fn check(&self, guard: &Guard<'_>, token: Option<&str>) -> Result<(), ApiError> {
        match guard {
            Guard::Open => Ok(()),
            Guard::Matchmaker | Guard::MatchmakerOrServer(_) | Guard::Operator { .. }
                if self.matchmakers.is_empty() =>
            {
                Ok(())
            }
            Guard::Server { .. } if self.sdk.is_none() => Ok(()),
            Guard::Matchmaker => {
                let token = token.ok_or(ApiError::Unauthorized(MISSING))?;
                self.is_matchmaker(token).then_some(()).ok_or(ApiError::Unauthorized(BAD))
            }
            Guard::MatchmakerOrServer(name) | Guard::Operator { name, .. } => {
                let token = token.ok_or(ApiError::Unauthorized(MISSING))?;
                if self.is_matchmaker(token) {
                    return Ok(());
                }
                self.check_server(token, name)
            }
            Guard::Server { name, .. } => self.check_server(token.ok_or(ApiError::Unauthorized(MISSING))?, name),
        }
    }

    fn check_server(&self, token: &str, name: &str) -> Result<(), ApiError> {
        let key = self.sdk.as_ref().ok_or(ApiError::Unauthorized(BAD))?;
        key.verify_sdk_token(token, name).map_err(|e| match e {
            SdkTokenError::Bad => ApiError::Unauthorized(BAD),
            SdkTokenError::OtherServer => ApiError::Forbidden { server: name.to_string() },
        })
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The middleware on every route: checks the request's bearer token against what its
/// path needs ([`guard`]); a refusal is answered here, counted, and never reaches a
/// handler.
pub(crate) async fn authorize(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let guard = guard(path);
    match s.auth.check(&guard, bearer(req.headers())) {
        Ok(()) => next.run(req).await,
        Err(error) => refuse(&s, path, &guard, error),
    }
}

fn refuse(s: &AppState, path: &str, guard: &Guard<'_>, error: ApiError) -> Response {
    let result = error.metric_label();
    s.metrics.refused.get_or_create(&RefusedLabels { endpoint: guard.endpoint(), result }).inc();
    match guard {
        Guard::Server { call, .. } | Guard::Operator { call, .. } => {
            s.metrics.sdk_calls.get_or_create(&SdkLabels { call, result }).inc();
        }
        Guard::Matchmaker if path.starts_with("/v1/allocations") => {
            s.metrics.allocations.get_or_create(&AllocationLabels { result, region: "any".into() }).inc();
        }
        _ => {}
    }
    tracing::debug!(%path, %error, "request refused");
    error.into_response()
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn server<'a>(name: &'a str, call: &'static str) -> Guard<'a> {
        Guard::Server { name: name.into(), call }
    }

    #[test]
    fn paths_decide_the_guard() {
        let table = [
            ("/livez", Guard::Open),
            ("/readyz", Guard::Open),
            ("/metrics", Guard::Open),
            ("/openapi.json", Guard::Open),
            ("/v1/allocations", Guard::Matchmaker),
            ("/v1/allocations:batch", Guard::Matchmaker),
            ("/v1/gameservers", Guard::Matchmaker),
            ("/v1/gameservers/", Guard::Matchmaker),
            ("/v1/anything-new", Guard::Matchmaker),
            ("/v1/gameservers/gs-1", Guard::MatchmakerOrServer("gs-1".into())),
            ("/v1/gameservers/gs-1/register", server("gs-1", "register")),
            ("/v1/gameservers/gs-1/ready", server("gs-1", "ready")),
            ("/v1/gameservers/gs-1/drain", Guard::Operator { name: "gs-1".into(), call: "drain" }),
            ("/v1/events", Guard::Matchmaker),
            ("/", Guard::Open),
            ("/assets/index.js", Guard::Open),
            ("/v1/gameservers/gs-1/labels", server("gs-1", "set_label")),
            ("/v1/gameservers/gs-1/players", server("gs-1", "set_players")),
            ("/v1/gameservers/gs-1/watch", server("gs-1", "watch")),
            ("/v1/gameservers/gs-1/worlds/w-1/started", server("gs-1", "world_started")),
            ("/v1/gameservers/gs-1/worlds/w-1/ended", server("gs-1", "world_ended")),
            ("/v1/gameservers/gs-1/worlds/w-1/move", server("gs-1", "move_world")),
            ("/v1/gameservers/gs-1/", server("gs-1", "unknown")),
            ("/v1/gameservers/gs-1/ready/again", server("gs-1", "unknown")),
            // The name the handler sees: percent-decoded.
            ("/v1/gameservers/gs%2D1/ready", server("gs-1", "ready")),
            ("/v1/gameservers/gs%2D1", Guard::MatchmakerOrServer("gs-1".into())),
        ];
        for (path, want) in table {
            assert_eq!(guard(path), want, "{path}");
        }
    }

    #[test]
    fn bearer_tokens_are_read_from_the_header() {
        let headers = |value: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, HeaderValue::from_static(value));
            h
        };
        assert_eq!(bearer(&HeaderMap::new()), None);
        assert_eq!(bearer(&headers("Bearer abc")), Some("abc"));
        assert_eq!(bearer(&headers("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(&headers("Bearer ")), None);
        assert_eq!(bearer(&headers("Basic abc")), None);
        assert_eq!(bearer(&headers("abc")), None);
    }

    #[test]
    fn matchmaker_tokens() {
        let auth = Auth::new(&["one".into(), "two".into(), String::new()], None);
        let code = |guard: &Guard<'_>, token| auth.check(guard, token).map_err(|e| e.to_string());
        assert_eq!(code(&Guard::Matchmaker, Some("one")), Ok(()));
        assert_eq!(code(&Guard::Matchmaker, Some("two")), Ok(()));
        assert_eq!(code(&Guard::Matchmaker, Some("")), Err(BAD.into()), "an empty configured token is no token");
        assert_eq!(code(&Guard::Matchmaker, Some("three")), Err(BAD.into()));
        assert_eq!(code(&Guard::Matchmaker, Some("on")), Err(BAD.into()));
        assert_eq!(code(&Guard::Matchmaker, None), Err(MISSING.into()));
        assert_eq!(code(&Guard::Open, None), Ok(()));
        assert_eq!(code(&server("gs-1", "ready"), None), Ok(()), "no SDK secret: SDK calls are open");

        let open = Auth::new(&[String::new()], Some(""));
        assert_eq!(open.check(&Guard::Matchmaker, None).ok(), Some(()));
        assert_eq!(open.check(&server("gs-1", "ready"), None).ok(), Some(()));
    }

    #[test]
    fn sdk_tokens_open_their_own_server_only() {
        let key = TokenKey::new("sdk-secret");
        let auth = Auth::new(&["mm".into()], Some("sdk-secret"));
        let check = |guard: &Guard<'_>, token: Option<&str>| auth.check(guard, token).map_err(|e| e.metric_label());
        let own = key.sdk_token("gs-1");
        let other = key.sdk_token("gs-2");
        assert_eq!(check(&server("gs-1", "ready"), Some(&own)), Ok(()));
        assert_eq!(check(&server("gs-1", "ready"), Some(&other)), Err("forbidden"));
        assert_eq!(check(&server("gs-1", "ready"), Some("mm")), Err("unauthorized"), "matchmakers drive no server");
        assert_eq!(check(&server("gs-1", "ready"), None), Err("unauthorized"));
        let forged = TokenKey::new("guess").sdk_token("gs-1");
        assert_eq!(check(&server("gs-1", "ready"), Some(&forged)), Err("unauthorized"));
        // Reading a record: a matchmaker, or the server itself.
        let read = Guard::MatchmakerOrServer("gs-1".into());
        assert_eq!(check(&read, Some("mm")), Ok(()));
        assert_eq!(check(&read, Some(&own)), Ok(()));
        assert_eq!(check(&read, Some(&other)), Err("forbidden"));
        assert_eq!(check(&Guard::Matchmaker, Some(&own)), Err("unauthorized"), "a server lists nothing");
        // Draining: a matchmaker (an operator), or the server itself.
        let drain = Guard::Operator { name: "gs-1".into(), call: "drain" };
        assert_eq!(check(&drain, Some("mm")), Ok(()));
        assert_eq!(check(&drain, Some(&own)), Ok(()));
        assert_eq!(check(&drain, Some(&other)), Err("forbidden"));
        assert_eq!(check(&drain, Some("wrong")), Err("unauthorized"));
        assert_eq!(check(&drain, None), Err("unauthorized"));
        let open = Auth::new(&[], Some("sdk-secret"));
        assert_eq!(open.check(&drain, None).ok(), Some(()), "no matchmaker token: operator calls are open");
        let err = auth.check(&server("gs-1", "ready"), Some(&other)).unwrap_err();
        assert_eq!(err.to_string(), "this token may not act on game server \"gs-1\"");
    }
}

//! Join tokens: what the allocator signs and the game server checks.
//!
//! A token is `base64url(json claims) "." base64url(HMAC-SHA256(key, first part))`. The
//! allocator and the game servers of one deployment share the key. A token names the
//! world, the server and the player, and expires; the game server refuses a token for
//! another server, an expired one, or one whose signature does not match.
//!
//! SDK tokens ([`TokenKey::sdk_token`]) are the other kind: `{server}.base64url(HMAC-SHA256(
//! key, "gaia-sdk-v1:" server))`, under a separate SDK secret that only the control plane
//! and the controller hold. Each game server gets its own and may act only on its own
//! record. The prefix keeps the two kinds apart: no join token's MAC input (base64url,
//! which has no ':') can equal an SDK token's.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinClaims {
    pub world_id: String,
    pub server: String,
    pub player_id: String,
    /// Unix time in milliseconds after which the token is refused.
    pub expires_at_ms: u64,
    /// The world's epoch at this placement: the registry bumps it each time the world
    /// is assigned to a server, and the server fences its checkpoints with it.
    #[serde(default)]
    pub epoch: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("join token is malformed")]
    Malformed,
    #[error("join token signature does not match")]
    BadSignature,
    #[error("join token has expired")]
    Expired,
    #[error("join token is for another server")]
    WrongServer,
}

/// The shared secret. Debug does not print it.
#[derive(Clone)]
pub struct TokenKey(Vec<u8>);

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

impl TokenKey {
    pub fn new(secret: impl Into<Vec<u8>>) -> Self {
        Self(secret.into())
    }

    fn mac(&self, payload: &[u8]) -> Hmac<Sha256> {
        // HMAC takes keys of any length; this cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).unwrap_or_else(|_| unreachable!());
        mac.update(payload);
        mac
    }

    pub fn sign(&self, claims: &JoinClaims) -> String {
        // Serialising a struct of strings and integers cannot fail.
        let json = serde_json::to_vec(claims).unwrap_or_default();
        let payload = URL_SAFE_NO_PAD.encode(json);
        let signature = URL_SAFE_NO_PAD.encode(self.mac(payload.as_bytes()).finalize().into_bytes());
        format!("{payload}.{signature}")
    }

    /// Checks signature, expiry and that the token is meant for `server`.
    pub fn verify(&self, token: &str, server: &str, now_ms: u64) -> Result<JoinClaims, TokenError> {
        let (payload, signature) = token.split_once('.').ok_or(TokenError::Malformed)?;
        let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| TokenError::Malformed)?;
        // verify_slice compares in constant time.
        self.mac(payload.as_bytes()).verify_slice(&signature).map_err(|_| TokenError::BadSignature)?;
        let json = URL_SAFE_NO_PAD.decode(payload).map_err(|_| TokenError::Malformed)?;
        let claims: JoinClaims = serde_json::from_slice(&json).map_err(|_| TokenError::Malformed)?;
        if claims.expires_at_ms <= now_ms {
            return Err(TokenError::Expired);
        }
        if claims.server != server {
            return Err(TokenError::WrongServer);
        }
        Ok(claims)
    }
}

/// What a resume token carries: the member a dropped connection may take back on the
/// same server, within the server's resume grace. Signed like a join token but under a
/// MAC prefix of its own, so neither kind passes for the other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResumeClaims {
    pub world_id: String,
    pub server: String,
    /// The member the connection was, on `server`.
    pub member: u64,
    /// The world's epoch when the token was made: a world restored at a newer one since
    /// refuses it.
    pub epoch: u64,
    pub expires_at_ms: u64,
}

const RESUME_TOKEN_PREFIX: &[u8] = b"gaia-resume-v1:";

/// What a spectate token carries: a read-only seat in a running world on `server`. The
/// connection gets the world's Welcome and deltas but is not a member of the world: it
/// takes no player slot, counts toward no player count, and its inputs are refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SpectateClaims {
    pub world_id: String,
    pub server: String,
    pub expires_at_ms: u64,
}

const SPECTATE_TOKEN_PREFIX: &[u8] = b"gaia-spectate-v1:";

/// The claims of a token kind signed under a MAC prefix of its own.
trait Prefixed: Serialize + serde::de::DeserializeOwned {
    const PREFIX: &'static [u8];
    fn server(&self) -> &str;
    fn expires_at_ms(&self) -> u64;
}

impl Prefixed for ResumeClaims {
    const PREFIX: &'static [u8] = RESUME_TOKEN_PREFIX;
    fn server(&self) -> &str {
        &self.server
    }
    fn expires_at_ms(&self) -> u64 {
        self.expires_at_ms
    }
}

impl Prefixed for SpectateClaims {
    const PREFIX: &'static [u8] = SPECTATE_TOKEN_PREFIX;
    fn server(&self) -> &str {
        &self.server
    }
    fn expires_at_ms(&self) -> u64 {
        self.expires_at_ms
    }
}

impl TokenKey {
    fn prefixed_mac(&self, prefix: &[u8], payload: &str) -> Hmac<Sha256> {
        let mut mac = self.mac(prefix);
        mac.update(payload.as_bytes());
        mac
    }

    fn sign_prefixed<C: Prefixed>(&self, claims: &C) -> String {
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default());
        format!("{payload}.{}", URL_SAFE_NO_PAD.encode(self.prefixed_mac(C::PREFIX, &payload).finalize().into_bytes()))
    }

    fn verify_prefixed<C: Prefixed>(&self, token: &str, server: &str, now_ms: u64) -> Result<C, TokenError> {
        let (payload, signature) = token.split_once('.').ok_or(TokenError::Malformed)?;
        let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| TokenError::Malformed)?;
        self.prefixed_mac(C::PREFIX, payload).verify_slice(&signature).map_err(|_| TokenError::BadSignature)?;
        let json = URL_SAFE_NO_PAD.decode(payload).map_err(|_| TokenError::Malformed)?;
        let claims: C = serde_json::from_slice(&json).map_err(|_| TokenError::Malformed)?;
        if claims.expires_at_ms() <= now_ms {
            return Err(TokenError::Expired);
        }
        if claims.server() != server {
            return Err(TokenError::WrongServer);
        }
        Ok(claims)
    }

    pub fn sign_resume(&self, claims: &ResumeClaims) -> String {
        self.sign_prefixed(claims)
    }

    /// Checks a resume token's signature, expiry and server.
    pub fn verify_resume(&self, token: &str, server: &str, now_ms: u64) -> Result<ResumeClaims, TokenError> {
        self.verify_prefixed(token, server, now_ms)
    }

    pub fn sign_spectate(&self, claims: &SpectateClaims) -> String {
        self.sign_prefixed(claims)
    }

    /// Checks a spectate token's signature, expiry and server.
    pub fn verify_spectate(&self, token: &str, server: &str, now_ms: u64) -> Result<SpectateClaims, TokenError> {
        self.verify_prefixed(token, server, now_ms)
    }
}

/// Why an SDK token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SdkTokenError {
    /// Not a token signed with this key (or not a token at all).
    #[error("bad token")]
    Bad,
    /// A valid token, but for another server.
    #[error("token is for another game server")]
    OtherServer,
}

/// The MAC input of an SDK token: domain-separated from join tokens (see the module docs).
const SDK_TOKEN_PREFIX: &[u8] = b"gaia-sdk-v1:";

impl TokenKey {
    fn sdk_mac(&self, server: &str) -> [u8; 32] {
        let mut mac = self.mac(SDK_TOKEN_PREFIX);
        mac.update(server.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// The bearer token with which game server `server` authenticates its SDK calls.
    /// Deterministic: the control plane recomputes it instead of storing it.
    pub fn sdk_token(&self, server: &str) -> String {
        format!("{server}.{}", URL_SAFE_NO_PAD.encode(self.sdk_mac(server)))
    }

    /// Checks that `token` is the SDK token of `server`, comparing in constant time.
    /// A token this key signed for another server is [`SdkTokenError::OtherServer`].
    pub fn verify_sdk_token(&self, token: &str, server: &str) -> Result<(), SdkTokenError> {
        use subtle::ConstantTimeEq;
        let (named, signature) = token.rsplit_once('.').ok_or(SdkTokenError::Bad)?;
        let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| SdkTokenError::Bad)?;
        if !bool::from(self.sdk_mac(named).as_slice().ct_eq(&signature)) {
            return Err(SdkTokenError::Bad);
        }
        if named != server {
            return Err(SdkTokenError::OtherServer);
        }
        Ok(())
    }
}

/// Unix time in milliseconds, as tokens and leases carry it.
pub fn unix_ms(at: std::time::SystemTime) -> u64 {
    at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    #[test]
    fn resume_and_join_tokens_do_not_pass_for_each_other() {
        let key = TokenKey::new("k");
        let resume = ResumeClaims { world_id: "w".into(), server: "s".into(), member: 7, epoch: 3, expires_at_ms: 10 };
        let token = key.sign_resume(&resume);
        assert_eq!(key.verify_resume(&token, "s", 5), Ok(resume.clone()));
        assert_eq!(key.verify_resume(&token, "s", 10), Err(TokenError::Expired));
        assert_eq!(key.verify_resume(&token, "t", 5), Err(TokenError::WrongServer));
        assert_eq!(key.verify(&token, "s", 5), Err(TokenError::BadSignature));
        let join =
            JoinClaims { world_id: "w".into(), server: "s".into(), player_id: "p".into(), expires_at_ms: 10, epoch: 3 };
        assert_eq!(key.verify_resume(&key.sign(&join), "s", 5), Err(TokenError::BadSignature));
        assert_eq!(TokenKey::new("other").verify_resume(&token, "s", 5), Err(TokenError::BadSignature));
    }

    #[test]
    fn spectate_tokens_pass_for_no_other_kind() {
        let key = TokenKey::new("k");
        let spectate = SpectateClaims { world_id: "w".into(), server: "s".into(), expires_at_ms: 10 };
        let token = key.sign_spectate(&spectate);
        assert_eq!(key.verify_spectate(&token, "s", 5), Ok(spectate));
        assert_eq!(key.verify_spectate(&token, "s", 10), Err(TokenError::Expired));
        assert_eq!(key.verify_spectate(&token, "t", 5), Err(TokenError::WrongServer));
        assert_eq!(key.verify(&token, "s", 5), Err(TokenError::BadSignature));
        assert_eq!(key.verify_resume(&token, "s", 5), Err(TokenError::BadSignature));
        let join =
            JoinClaims { world_id: "w".into(), server: "s".into(), player_id: "p".into(), expires_at_ms: 10, epoch: 3 };
        assert_eq!(key.verify_spectate(&key.sign(&join), "s", 5), Err(TokenError::BadSignature));
        let resume = ResumeClaims { world_id: "w".into(), server: "s".into(), member: 7, epoch: 3, expires_at_ms: 10 };
        assert_eq!(key.verify_spectate(&key.sign_resume(&resume), "s", 5), Err(TokenError::BadSignature));
        assert_eq!(TokenKey::new("other").verify_spectate(&token, "s", 5), Err(TokenError::BadSignature));
    }

    use super::*;

    fn claims() -> JoinClaims {
        JoinClaims {
            world_id: "w1".into(),
            server: "s1".into(),
            player_id: "p1".into(),
            expires_at_ms: 1_000,
            epoch: 7,
        }
    }

    #[test]
    fn round_trip() {
        let key = TokenKey::new("secret");
        let token = key.sign(&claims());
        assert_eq!(key.verify(&token, "s1", 999), Ok(claims()));
    }

    #[test]
    fn refusals() {
        let key = TokenKey::new("secret");
        let token = key.sign(&claims());
        assert_eq!(key.verify(&token, "s1", 1_000), Err(TokenError::Expired));
        assert_eq!(key.verify(&token, "s2", 0), Err(TokenError::WrongServer));
        assert_eq!(TokenKey::new("other").verify(&token, "s1", 0), Err(TokenError::BadSignature));
        assert_eq!(key.verify("no-dot", "s1", 0), Err(TokenError::Malformed));
        assert_eq!(key.verify("a.b!", "s1", 0), Err(TokenError::Malformed));
        // A payload edited after signing no longer matches its signature.
        let (_, sig) = token.split_once('.').unwrap();
        let mut forged = claims();
        forged.expires_at_ms = u64::MAX;
        let forged_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
        assert_eq!(key.verify(&format!("{forged_payload}.{sig}"), "s1", 0), Err(TokenError::BadSignature));
    }

    #[test]
    fn sdk_tokens_belong_to_one_server() {
        let key = TokenKey::new("sdk-secret");
        let token = key.sdk_token("gs-1");
        assert!(token.starts_with("gs-1."), "{token}");
        assert_eq!(token, key.sdk_token("gs-1"), "deterministic");
        assert_eq!(key.verify_sdk_token(&token, "gs-1"), Ok(()));
        assert_eq!(key.verify_sdk_token(&token, "gs-2"), Err(SdkTokenError::OtherServer));
        assert_eq!(TokenKey::new("other").verify_sdk_token(&token, "gs-1"), Err(SdkTokenError::Bad));
        // The name is signed: renaming a valid token does not make one for another server.
        let (_, sig) = token.rsplit_once('.').unwrap();
        assert_eq!(key.verify_sdk_token(&format!("gs-2.{sig}"), "gs-2"), Err(SdkTokenError::Bad));
        for bad in ["", "gs-1", "gs-1.", "gs-1.!!", "."] {
            assert_eq!(key.verify_sdk_token(bad, "gs-1"), Err(SdkTokenError::Bad), "{bad:?}");
        }
    }

    #[test]
    fn sdk_tokens_and_join_tokens_do_not_mix() {
        let key = TokenKey::new("secret");
        let join = key.sign(&claims());
        assert_eq!(key.verify_sdk_token(&join, "s1"), Err(SdkTokenError::Bad));
        assert_eq!(key.verify(&key.sdk_token("s1"), "s1", 0), Err(TokenError::BadSignature));
    }
}

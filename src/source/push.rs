//! Pub/Sub push: `POST /pubsub/push`, for deployments scaled to zero (Cloud Run) instead of an
//! always-on puller.
//!
//! Each request carries one envelope, `{"message": {"data": BASE64, "messageId": …},
//! "subscription": …}`. Its message goes to the same processor as a pulled one, and the
//! request waits: 204 once the batch holding it is committed, 503 when it is not (Pub/Sub
//! redelivers on any non-2xx). An envelope that is not one is counted, logged and answered
//! 2xx — Pub/Sub would otherwise redeliver it forever.
//!
//! Push requests carry a Google-signed OIDC token (`Authorization: Bearer JWT`) when the
//! subscription has `--push-auth-service-account`. [`TokenVerifier`] checks its RS256
//! signature against the configured JWKS (Google's by default, cached, re-read when a token
//! names an unknown key), its issuer, audience and expiry, and that its `email` is the
//! configured service account with `email_verified`. Anything else is answered 401.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::Engine as _;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, Mutex};

use super::{Ack, Received};
use crate::metrics::{metrics, PushOutcome};

/// Google's keys for the OIDC tokens it signs.
pub const GOOGLE_JWKS: &str = "https://www.googleapis.com/oauth2/v3/certs";

/// `[source.push]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PushConfig {
    /// The token's required `aud`: the push subscription's `--push-auth-token-audience`
    /// (by default its push endpoint URL).
    pub audience: Option<String>,
    /// The token's required `email`: the push subscription's `--push-auth-service-account`.
    pub service_account: Option<String>,
    /// Where the signing keys are.
    pub jwks_url: String,
    /// Accepted `iss` values.
    pub issuers: Vec<String>,
    /// Accept requests without a token. Only behind an ingress that already authenticates
    /// (Cloud Run with `--no-allow-unauthenticated` checks the token itself).
    pub allow_unauthenticated: bool,
}

impl Default for PushConfig {
    fn default() -> Self {
        PushConfig {
            audience: None,
            service_account: None,
            jwks_url: GOOGLE_JWKS.to_owned(),
            issuers: vec![
                "https://accounts.google.com".to_owned(),
                "accounts.google.com".to_owned(),
            ],
            allow_unauthenticated: false,
        }
    }
}

impl PushConfig {
    /// What is missing for token checks, if anything.
    pub fn validate(&self) -> Result<(), String> {
        if self.allow_unauthenticated {
            return Ok(());
        }
        match (&self.audience, &self.service_account) {
            (Some(a), Some(s)) if !a.is_empty() && !s.is_empty() => {}
            _ => return Err("push mode checks each request's OIDC token: set source.push.audience and source.push.service_account (the push subscription's --push-auth-token-audience and --push-auth-service-account), or allow_unauthenticated = true".into()),
        }
        if self.issuers.is_empty() {
            return Err("source.push.issuers is empty: no token could pass".into());
        }
        if !schedwatch_sinks::delivery::is_http_url(&self.jwks_url) {
            return Err(format!(
                "source.push.jwks_url = {:?} is not an http(s) URL",
                self.jwks_url
            ));
        }
        Ok(())
    }
}

/// Why a request's token was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// No `Authorization: Bearer` header.
    #[error("no bearer token")]
    Missing,
    /// Not a JWT, a bad signature, wrong issuer or audience, expired.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// Signed by a key the JWKS does not have.
    #[error("token signed by unknown key {0:?}")]
    UnknownKey(String),
    /// Signed for another service account.
    #[error("token is for {0:?}, not the configured service account")]
    WrongAccount(String),
    /// The keys could not be read: our problem, not the caller's (503, redelivered).
    #[error("cannot read the signing keys: {0}")]
    Keys(String),
}

/// The claims checked beyond the registered ones.
#[derive(Debug, Deserialize)]
struct Claims {
    #[serde(default)]
    email: String,
    #[serde(default)]
    email_verified: bool,
}

/// A JWKS is read again for an unknown key at most this often (a flood of forged key ids must
/// not become a flood of fetches).
const MIN_REFRESH: Duration = Duration::from_secs(10);
/// Known keys are re-read after this long anyway (Google rotates them every few days).
const KEYS_TTL: Duration = Duration::from_secs(3600);

/// Checks push requests' OIDC tokens.
pub struct TokenVerifier {
    config: PushConfig,
    validation: Validation,
    http: reqwest::Client,
    keys: Mutex<Keys>,
}

#[derive(Default)]
struct Keys {
    by_id: HashMap<String, DecodingKey>,
    fetched: Option<Instant>,
}

impl TokenVerifier {
    /// A verifier for `config` (already validated, not `allow_unauthenticated`).
    pub fn new(config: PushConfig) -> anyhow::Result<TokenVerifier> {
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_audience(&[config.audience.clone().unwrap_or_default()]);
        validation.set_issuer(&config.issuers);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let http = schedwatch_sinks::delivery::http_client(Duration::from_secs(10))?;
        Ok(TokenVerifier {
            config,
            validation,
            http,
            keys: Mutex::new(Keys::default()),
        })
    }

    /// Checks an `Authorization` header value.
    pub async fn verify(&self, authorization: Option<&str>) -> Result<(), TokenError> {
        let token = authorization
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(TokenError::Missing)?;
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| TokenError::Invalid(e.to_string()))?;
        if header.alg != Algorithm::RS256 {
            return Err(TokenError::Invalid(format!(
                "algorithm {:?}, expected RS256",
                header.alg
            )));
        }
        let kid = header
            .kid
            .ok_or_else(|| TokenError::Invalid("no key id (kid)".into()))?;
        let key = self.key(&kid).await?;
        let data = jsonwebtoken::decode::<Claims>(token, &key, &self.validation)
            .map_err(|e| TokenError::Invalid(e.to_string()))?;
        let expected = self.config.service_account.as_deref().unwrap_or_default();
        if data.claims.email != expected || !data.claims.email_verified {
            return Err(TokenError::WrongAccount(data.claims.email));
        }
        Ok(())
    }

    /// The key `kid`, reading the JWKS when it is unknown or old.
    async fn key(&self, kid: &str) -> Result<DecodingKey, TokenError> {
        let mut keys = self.keys.lock().await;
        let age = keys.fetched.map(|at| at.elapsed());
        let stale = age.is_none_or(|a| a > KEYS_TTL);
        let may_refresh = age.is_none_or(|a| a > MIN_REFRESH);
        if stale || (!keys.by_id.contains_key(kid) && may_refresh) {
            match self.fetch().await {
                Ok(fresh) => {
                    keys.by_id = fresh;
                    keys.fetched = Some(Instant::now());
                }
                // Old keys still verify the tokens they signed.
                Err(e) if !keys.by_id.is_empty() => {
                    tracing::warn!(
                        "cannot refresh the push token keys; using the ones read before: {e}"
                    )
                }
                Err(e) => return Err(e),
            }
        }
        keys.by_id
            .get(kid)
            .cloned()
            .ok_or_else(|| TokenError::UnknownKey(kid.to_owned()))
    }

    async fn fetch(&self) -> Result<HashMap<String, DecodingKey>, TokenError> {
        let fail =
            |e: &dyn std::fmt::Display| TokenError::Keys(format!("{}: {e}", self.config.jwks_url));
        let response = self
            .http
            .get(&self.config.jwks_url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| fail(&e))?;
        let body = response.bytes().await.map_err(|e| fail(&e))?;
        let set: JwkSet = serde_json::from_slice(&body).map_err(|e| fail(&e))?;
        let keys: HashMap<String, DecodingKey> = set
            .keys
            .iter()
            .filter_map(|jwk| {
                let kid = jwk.common.key_id.clone()?;
                DecodingKey::from_jwk(jwk).ok().map(|k| (kid, k))
            })
            .collect();
        tracing::info!(keys = keys.len(), url = %self.config.jwks_url, "push token keys read");
        Ok(keys)
    }
}

/// A push envelope.
#[derive(Debug, Deserialize)]
struct Envelope {
    message: PushedMessage,
}

/// The message in an envelope. (Envelopes carry `messageId` and `message_id` both; one is read.)
#[derive(Debug, Deserialize)]
struct PushedMessage {
    #[serde(default)]
    data: String,
    #[serde(default, rename = "messageId")]
    message_id: String,
}

/// What a push request is answered.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// 204: committed.
    Acked,
    /// 200 with the reason: not an envelope, skipped (and not redelivered).
    Skipped(String),
    /// 401 with the reason.
    Unauthorized(String),
    /// 503 with the reason: not committed; Pub/Sub redelivers.
    Unavailable(String),
}

/// The push door: checks the token, hands the message to the processor, waits for its commit.
pub struct PushReceiver {
    verifier: Option<TokenVerifier>,
    tx: mpsc::Sender<Received>,
    /// How long a request waits for its commit before it is answered 503.
    wait: Duration,
}

impl PushReceiver {
    /// Checks tokens with `verifier` (none: `allow_unauthenticated`); messages go to `tx`.
    pub fn new(
        verifier: Option<TokenVerifier>,
        tx: mpsc::Sender<Received>,
        wait: Duration,
    ) -> Self {
        PushReceiver { verifier, tx, wait }
    }

    /// Handles one request.
    pub async fn handle(&self, authorization: Option<&str>, body: &[u8]) -> Answer {
        let answer = self.answer(authorization, body).await;
        metrics().push(match &answer {
            Answer::Acked => PushOutcome::Acked,
            Answer::Skipped(_) => PushOutcome::BadEnvelope,
            Answer::Unauthorized(_) => PushOutcome::Unauthorized,
            Answer::Unavailable(_) => PushOutcome::Nacked,
        });
        answer
    }

    async fn answer(&self, authorization: Option<&str>, body: &[u8]) -> Answer {
        if let Some(v) = &self.verifier {
            match v.verify(authorization).await {
                Ok(()) => {}
                Err(e @ TokenError::Keys(_)) => {
                    tracing::error!("push request not checked: {e}");
                    return Answer::Unavailable(e.to_string());
                }
                Err(e) => {
                    tracing::warn!("push request refused: {e}");
                    return Answer::Unauthorized(e.to_string());
                }
            }
        }
        let message = match serde_json::from_slice::<Envelope>(body) {
            Ok(e) => e.message,
            Err(e) => {
                let reason = format!("not a Pub/Sub push envelope: {e}");
                tracing::warn!("push request skipped: {reason}");
                return Answer::Skipped(reason);
            }
        };
        let data = match base64::engine::general_purpose::STANDARD.decode(message.data.trim()) {
            Ok(d) => d,
            Err(e) => {
                let reason = format!("message {} data is not base64: {e}", message.message_id);
                tracing::warn!("push request skipped: {reason}");
                return Answer::Skipped(reason);
            }
        };
        metrics().message_received();
        let (done, committed) = oneshot::channel();
        let received = Received {
            data: data.into(),
            message_id: message.message_id,
            ack: Ack::Push(done),
        };
        if self.tx.send(received).await.is_err() {
            return Answer::Unavailable("shutting down".into());
        }
        match tokio::time::timeout(self.wait, committed).await {
            Ok(Ok(())) => Answer::Acked,
            Ok(Err(_)) => Answer::Unavailable("not committed; send it again".into()),
            Err(_) => Answer::Unavailable(format!("not committed within {:?}", self.wait)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared_fixture(name: &str) -> Vec<u8> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/fixtures/pubsub")
            .join(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[tokio::test]
    async fn the_envelope_reaches_the_processor_and_is_answered_after_its_ack() {
        let (tx, mut rx) = mpsc::channel(1);
        let push = PushReceiver::new(None, tx, Duration::from_secs(5));
        let body = shared_fixture("push_envelope_401.json");
        let processor = tokio::spawn(async move {
            let m = rx.recv().await.unwrap();
            let entry: serde_json::Value = serde_json::from_slice(&m.data).unwrap();
            assert_eq!(entry["httpRequest"]["status"], 401);
            assert_eq!(m.message_id, "11873264598812345");
            m.ack.ack(&tokio::runtime::Handle::current());
            // Dropped unacked: the request is answered 503 and Pub/Sub sends it again.
            let m = rx.recv().await.unwrap();
            drop(m);
        });
        assert_eq!(push.handle(None, &body).await, Answer::Acked);
        assert!(matches!(
            push.handle(None, &body).await,
            Answer::Unavailable(_)
        ));
        processor.await.unwrap();
        assert!(matches!(push.handle(None, b"{}").await, Answer::Skipped(_)));
        assert!(matches!(
            push.handle(None, br#"{"message": {"data": "not base64!"}}"#)
                .await,
            Answer::Skipped(_)
        ));
    }

    #[tokio::test]
    async fn unreadable_keys_are_our_fault_not_the_callers() {
        let pem = std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/data/push/signer.pem"),
        )
        .unwrap();
        let mut header = jsonwebtoken::Header::new(Algorithm::RS256);
        header.kid = Some("schedwatch-test-1".into());
        let claims = serde_json::json!({"aud": "a", "iss": "https://accounts.google.com", "exp": 4_000_000_000u64});
        let token = jsonwebtoken::encode(
            &header,
            &claims,
            &jsonwebtoken::EncodingKey::from_rsa_pem(&pem).unwrap(),
        )
        .unwrap();
        // Port 9 (discard) on loopback: nothing listens, the connection is refused.
        let verifier = TokenVerifier::new(PushConfig {
            audience: Some("a".into()),
            service_account: Some("s@p.iam.gserviceaccount.com".into()),
            jwks_url: "http://127.0.0.1:9/certs".into(),
            ..PushConfig::default()
        })
        .unwrap();
        let (tx, _rx) = mpsc::channel(1);
        let push = PushReceiver::new(Some(verifier), tx, Duration::from_secs(1));
        let auth = format!("Bearer {token}");
        // 503: Pub/Sub sends the message again once the keys can be read.
        assert!(matches!(
            push.handle(Some(&auth), b"{}").await,
            Answer::Unavailable(reason) if reason.contains("signing keys")
        ));
        assert!(matches!(
            push.handle(None, b"{}").await,
            Answer::Unauthorized(_)
        ));
    }

    #[test]
    fn token_checks_are_required_unless_explicitly_waived() {
        assert!(PushConfig::default().validate().is_err());
        let waived = PushConfig {
            allow_unauthenticated: true,
            ..PushConfig::default()
        };
        assert!(waived.validate().is_ok());
        let checked = PushConfig {
            audience: Some("https://schedwatch.example/pubsub/push".into()),
            service_account: Some("push@p.iam.gserviceaccount.com".into()),
            ..PushConfig::default()
        };
        assert!(checked.validate().is_ok());
        let no_account = PushConfig {
            service_account: None,
            ..checked
        };
        assert!(no_account.validate().is_err());
    }
}

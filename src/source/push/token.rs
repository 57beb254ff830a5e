//! The OIDC token of a push request: its `Authorization: Bearer` header, the RS256 signature
//! against the JWKS's keys ([`KeyCache`]: cached, one fetch at a time, failures remembered),
//! issuer, audience, times and service account ([`TokenVerifier`]).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::{shown, PushConfig};

/// Why a request's token was refused. Each detail is already `shown`: cut short, escaped.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// No `Authorization: Bearer` header.
    #[error("no bearer token: {0}")]
    Missing(String),
    /// Not a JWT, a bad signature, wrong issuer or audience, wrong times.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// Signed by a key the JWKS does not have.
    #[error("token signed by unknown key {0}")]
    UnknownKey(String),
    /// Signed for another service account.
    #[error("token is for {0}, not the configured service account")]
    WrongAccount(String),
    /// The keys could not be read: our problem, not the caller's (503, redelivered).
    #[error("cannot read the signing keys: {0}")]
    Keys(String),
}

impl TokenError {
    /// What the caller is told: fixed words per kind, nothing it sent.
    pub fn reason(&self) -> &'static str {
        match self {
            TokenError::Missing(_) => "no bearer token",
            TokenError::Invalid(_) => "invalid token",
            TokenError::UnknownKey(_) => "token signed by an unknown key",
            TokenError::WrongAccount(_) => "token is not for the configured service account",
            TokenError::Keys(_) => "cannot read the signing keys",
        }
    }

    /// What went wrong, for the log.
    pub(super) fn detail(&self) -> &str {
        match self {
            TokenError::Missing(d)
            | TokenError::Invalid(d)
            | TokenError::UnknownKey(d)
            | TokenError::WrongAccount(d)
            | TokenError::Keys(d) => d,
        }
    }
}

/// Clock skew allowed on `iat`, `nbf` and `exp`. Google's servers and ours (NTP on Cloud Run,
/// GKE and most hosts) agree within a second; a minute covers a badly kept host and is
/// jsonwebtoken's default leeway.
pub(super) const LEEWAY_SECS: i64 = 60;
/// The longest lifetime a token may claim: Google's ID tokens live exactly one hour
/// (`exp = iat + 3600`); a longer one was not minted by Google for a push.
pub(super) const MAX_LIFETIME_SECS: i64 = 3600;

/// The claims checked beyond issuer and audience (which jsonwebtoken checks).
#[derive(Debug, Deserialize)]
pub(super) struct Claims {
    #[serde(default)]
    pub(super) email: String,
    #[serde(default)]
    pub(super) email_verified: bool,
    pub(super) exp: i64,
    pub(super) iat: i64,
    pub(super) nbf: Option<i64>,
}

impl Claims {
    /// The times, at Unix time `now`: not expired, not issued or valid only in the future, no
    /// longer-lived than Google's tokens, each within [`LEEWAY_SECS`].
    pub(super) fn check_times(&self, now: i64) -> Result<(), String> {
        let (exp, iat) = (self.exp, self.iat);
        if exp.saturating_add(LEEWAY_SECS) < now {
            return Err(format!("expired {}s ago", now.saturating_sub(exp)));
        }
        if iat > now.saturating_add(LEEWAY_SECS) {
            return Err(format!("issued {}s in the future", iat.saturating_sub(now)));
        }
        if let Some(nbf) = self
            .nbf
            .filter(|&nbf| nbf > now.saturating_add(LEEWAY_SECS))
        {
            return Err(format!(
                "not valid for another {}s",
                nbf.saturating_sub(now)
            ));
        }
        let longest = MAX_LIFETIME_SECS + LEEWAY_SECS;
        if exp.saturating_sub(iat) > longest {
            return Err(format!(
                "a lifetime of {}s, longer than Google's tokens have",
                exp.saturating_sub(iat)
            ));
        }
        if exp.saturating_sub(now) > longest {
            return Err(format!(
                "expires in {}s, later than Google's tokens do",
                exp.saturating_sub(now)
            ));
        }
        Ok(())
    }
}

/// The token in an `Authorization` value: scheme `Bearer` in any case (RFC 7235: schemes are
/// case-insensitive), then the token.
pub(super) fn bearer(authorization: Option<&[u8]>) -> Result<&str, TokenError> {
    let Some(value) = authorization else {
        return Err(TokenError::Missing("no Authorization header".into()));
    };
    let value = std::str::from_utf8(value)
        .map_err(|_| TokenError::Invalid("the Authorization header is not text".into()))?
        .trim();
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(TokenError::Missing(format!("scheme {}", shown(scheme))));
    }
    match token.trim_start() {
        "" => Err(TokenError::Missing("an empty token".into())),
        token => Ok(token),
    }
}

/// Checks push requests' OIDC tokens.
pub struct TokenVerifier {
    service_account: String,
    validation: Validation,
    keys: Arc<KeyCache>,
}

impl TokenVerifier {
    /// A verifier for `config` (already validated, not `allow_unauthenticated`).
    pub fn new(config: PushConfig) -> anyhow::Result<TokenVerifier> {
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_audience(&[config.audience.clone().unwrap_or_default()]);
        validation.set_issuer(&config.issuers);
        validation.set_required_spec_claims(&["iss", "aud"]);
        // The times are checked by `Claims::check_times`, which also knows `iat` and lifetimes.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        Ok(TokenVerifier {
            service_account: config.service_account.unwrap_or_default(),
            validation,
            keys: Arc::new(KeyCache::new(config.jwks_url)?),
        })
    }

    /// Checks an `Authorization` header value.
    pub async fn verify(&self, authorization: Option<&[u8]>) -> Result<(), TokenError> {
        let token = bearer(authorization)?;
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| TokenError::Invalid(shown(&e.to_string())))?;
        if header.alg != Algorithm::RS256 {
            return Err(TokenError::Invalid(format!(
                "algorithm {:?}, expected RS256",
                header.alg
            )));
        }
        let kid = header
            .kid
            .ok_or_else(|| TokenError::Invalid("no key id (kid)".into()))?;
        let key = KeyCache::key(&self.keys, &kid).await?;
        let data = jsonwebtoken::decode::<Claims>(token, &key, &self.validation)
            .map_err(|e| TokenError::Invalid(shown(&e.to_string())))?;
        data.claims
            .check_times(chrono::Utc::now().timestamp())
            .map_err(TokenError::Invalid)?;
        if data.claims.email != self.service_account || !data.claims.email_verified {
            return Err(TokenError::WrongAccount(shown(&data.claims.email)));
        }
        Ok(())
    }
}

/// A JWKS is read again for an unknown key id at most this often after a read that worked (a
/// flood of forged key ids must not become a flood of fetches; a rotation is seen within it).
pub(super) const MIN_REFRESH: Duration = Duration::from_secs(10);
/// A failed read is remembered this long: requests meanwhile are answered at once instead of
/// each waiting for, or starting, another read. Pub/Sub waits at least 10 s before it pushes a
/// refused message again, so the redelivery finds a fresh attempt.
pub(super) const FAILURE_MEMORY: Duration = Duration::from_secs(15);
/// Known keys are re-read after this long anyway, in the background (Google adds a key days
/// before it signs with it, and rotates every few days).
pub(super) const KEYS_TTL: Duration = Duration::from_secs(3600);
/// How long one JWKS read may take (connect, answer, body): Google answers in milliseconds; a
/// read that hangs must not hold requests for unknown keys longer than this.
pub(super) const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest JWKS read: Google's holds two or three keys, about 2 KB.
pub(super) const MAX_JWKS_BYTES: usize = 256 * 1024;

/// The signing keys: read from the JWKS URL, one read at a time, never blocking a check by a
/// key already known.
pub(crate) struct KeyCache {
    url: String,
    http: reqwest::Client,
    /// Never held across an await: a check by a known key takes it for a lookup only.
    state: RwLock<Keys>,
    /// Held by the one task reading the JWKS (single flight).
    reading: Arc<tokio::sync::Mutex<()>>,
}

#[derive(Default)]
pub(super) struct Keys {
    by_id: HashMap<String, DecodingKey>,
    /// When the last read that worked ended.
    read_at: Option<Instant>,
    /// When the last read that failed ended, and why.
    failed: Option<(Instant, String)>,
}

/// What the cache says about a key id.
pub(super) enum Lookup {
    /// Known; `refresh`: the keys are old, read them again in the background.
    Found { key: DecodingKey, refresh: bool },
    /// Unknown, and the JWKS may be read again now.
    Read,
    /// Unknown, and it may not be read again yet.
    Refused(TokenError),
}

impl Keys {
    pub(super) fn lookup(&self, kid: &str, now: Instant) -> Lookup {
        let since = |at: Instant| now.saturating_duration_since(at);
        let failed_recently = self
            .failed
            .as_ref()
            .filter(|(at, _)| since(*at) < FAILURE_MEMORY);
        if let Some(key) = self.by_id.get(kid) {
            let old = self.read_at.is_none_or(|at| since(at) > KEYS_TTL);
            return Lookup::Found {
                key: key.clone(),
                refresh: old && failed_recently.is_none(),
            };
        }
        match failed_recently {
            // No key at all: our fault (503), not the caller's.
            Some((_, why)) if self.by_id.is_empty() => {
                Lookup::Refused(TokenError::Keys(why.clone()))
            }
            Some(_) => Lookup::Refused(TokenError::UnknownKey(shown(kid))),
            None if self.read_at.is_some_and(|at| since(at) < MIN_REFRESH) => {
                Lookup::Refused(TokenError::UnknownKey(shown(kid)))
            }
            None => Lookup::Read,
        }
    }

    pub(super) fn store(
        &mut self,
        read: Result<HashMap<String, DecodingKey>, String>,
        now: Instant,
    ) {
        match read {
            Ok(keys) => {
                self.by_id = keys;
                self.read_at = Some(now);
                self.failed = None;
            }
            // Old keys still verify the tokens they signed.
            Err(why) => self.failed = Some((now, why)),
        }
    }
}

impl KeyCache {
    pub(super) fn new(url: String) -> anyhow::Result<KeyCache> {
        Ok(KeyCache {
            url,
            http: schedwatch_sinks::delivery::http_client(FETCH_TIMEOUT)?,
            state: RwLock::new(Keys::default()),
            reading: Arc::new(tokio::sync::Mutex::new(())),
        })
    }

    pub(super) fn lookup(&self, kid: &str) -> Lookup {
        self.state
            .read()
            .expect("key cache lock")
            .lookup(kid, Instant::now())
    }

    /// The key `kid`: from the cache, or after the one read of the JWKS in flight.
    async fn key(this: &Arc<KeyCache>, kid: &str) -> Result<DecodingKey, TokenError> {
        match this.lookup(kid) {
            Lookup::Found { key, refresh } => {
                if refresh {
                    KeyCache::refresh_in_background(this);
                }
                return Ok(key);
            }
            Lookup::Refused(e) => return Err(e),
            Lookup::Read => {}
        }
        let _reading = this.reading.lock().await;
        // The read this request waited for may have brought the key, or failed.
        if let Lookup::Read = this.lookup(kid) {
            this.read().await;
        }
        match this.lookup(kid) {
            Lookup::Found { key, .. } => Ok(key),
            Lookup::Refused(e) => Err(e),
            // Just read: cannot be due again.
            Lookup::Read => Err(TokenError::UnknownKey(shown(kid))),
        }
    }

    /// Old keys are read again by a task of their own, unless a read is in flight: checks by
    /// the keys in hand go on meanwhile.
    pub(super) fn refresh_in_background(this: &Arc<KeyCache>) {
        let Ok(reading) = Arc::clone(&this.reading).try_lock_owned() else {
            return;
        };
        let this = Arc::clone(this);
        tokio::spawn(async move {
            this.read().await;
            drop(reading);
        });
    }

    /// Reads the JWKS and stores the outcome. The caller holds `reading`.
    async fn read(&self) {
        let read = self.fetch().await;
        if let Err(e) = &read {
            tracing::warn!(
                "cannot read the push token keys (again within {FAILURE_MEMORY:?} at the soonest): {e}"
            );
        }
        self.state
            .write()
            .expect("key cache lock")
            .store(read, Instant::now());
    }

    async fn fetch(&self) -> Result<HashMap<String, DecodingKey>, String> {
        let fail = |e: &dyn std::fmt::Display| format!("{}: {e}", self.url);
        let mut response = self
            .http
            .get(&self.url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| fail(&e))?;
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| fail(&e))? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(fail(&format!("larger than {MAX_JWKS_BYTES} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        let set: JwkSet = serde_json::from_slice(&body).map_err(|e| fail(&e))?;
        let keys: HashMap<String, DecodingKey> = set
            .keys
            .iter()
            .filter_map(|jwk| {
                let kid = jwk.common.key_id.clone()?;
                DecodingKey::from_jwk(jwk).ok().map(|k| (kid, k))
            })
            .collect();
        tracing::info!(keys = keys.len(), url = %self.url, "push token keys read");
        Ok(keys)
    }
}

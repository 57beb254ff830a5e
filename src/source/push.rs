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
//! signature against the configured JWKS (Google's by default), its issuer, audience, times
//! (not expired, not issued or valid only in the future, no longer-lived than Google's
//! one-hour tokens), and that its `email` is the configured service account with
//! `email_verified`. Anything else is answered 401.
//!
//! Requests are untrusted until their token passes, and the token is checked on the headers
//! alone: the body is read only after ([`PushReceiver::handle`] takes it as a future), so an
//! unauthenticated sender costs a header's worth of memory, never a body's. What a refused
//! request carried never goes back in the answer (a fixed reason per kind), and reaches the log
//! cut short with control characters escaped (`shown`), at most one line per reason a minute
//! (`RefusalLog`), with the number refused since the last line.
//!
//! The signing keys are cached (`KeyCache`): a token signed by a known key is checked without
//! waiting for anything; an unknown key id makes one request (single flight) read the JWKS
//! again, the others wait for that read, and a failed read is remembered for a while.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

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
    /// (Cloud Run with `--no-allow-unauthenticated` checks the token itself): every request's
    /// body is then read, so anyone who reaches the port can make the process hold
    /// `[server] max_connections` bodies at once.
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
    fn detail(&self) -> &str {
        match self {
            TokenError::Missing(d)
            | TokenError::Invalid(d)
            | TokenError::UnknownKey(d)
            | TokenError::WrongAccount(d)
            | TokenError::Keys(d) => d,
        }
    }
}

/// How many characters of an untrusted value a log line shows: a key id (40 hex digits at
/// Google) or an e-mail address fits whole; a forged 200 KB one shows enough to recognise.
const SHOWN_CHARS: usize = 64;

/// An untrusted value as a log line may carry it: at most [`SHOWN_CHARS`] characters, control
/// and invisible characters escaped (no forged lines, no terminal escapes, no text reversed by
/// a bidi override), `…` when cut.
pub(crate) fn shown(untrusted: &str) -> String {
    let mut out = String::with_capacity(untrusted.len().min(SHOWN_CHARS * 2));
    for (n, c) in untrusted.chars().enumerate() {
        if n == SHOWN_CHARS {
            out.push('…');
            break;
        }
        // Rust's debug escaping knows which characters do not print (format, unassigned…).
        if c.is_control() || (!c.is_ascii() && c.escape_debug().len() > 1) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Clock skew allowed on `iat`, `nbf` and `exp`. Google's servers and ours (NTP on Cloud Run,
/// GKE and most hosts) agree within a second; a minute covers a badly kept host and is
/// jsonwebtoken's default leeway.
const LEEWAY_SECS: i64 = 60;
/// The longest lifetime a token may claim: Google's ID tokens live exactly one hour
/// (`exp = iat + 3600`); a longer one was not minted by Google for a push.
const MAX_LIFETIME_SECS: i64 = 3600;

/// The claims checked beyond issuer and audience (which jsonwebtoken checks).
#[derive(Debug, Deserialize)]
struct Claims {
    #[serde(default)]
    email: String,
    #[serde(default)]
    email_verified: bool,
    exp: i64,
    iat: i64,
    nbf: Option<i64>,
}

impl Claims {
    /// The times, at Unix time `now`: not expired, not issued or valid only in the future, no
    /// longer-lived than Google's tokens, each within [`LEEWAY_SECS`].
    fn check_times(&self, now: i64) -> Result<(), String> {
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
fn bearer(authorization: Option<&[u8]>) -> Result<&str, TokenError> {
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
const MIN_REFRESH: Duration = Duration::from_secs(10);
/// A failed read is remembered this long: requests meanwhile are answered at once instead of
/// each waiting for, or starting, another read. Pub/Sub waits at least 10 s before it pushes a
/// refused message again, so the redelivery finds a fresh attempt.
const FAILURE_MEMORY: Duration = Duration::from_secs(15);
/// Known keys are re-read after this long anyway, in the background (Google adds a key days
/// before it signs with it, and rotates every few days).
const KEYS_TTL: Duration = Duration::from_secs(3600);
/// How long one JWKS read may take (connect, answer, body): Google answers in milliseconds; a
/// read that hangs must not hold requests for unknown keys longer than this.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest JWKS read: Google's holds two or three keys, about 2 KB.
const MAX_JWKS_BYTES: usize = 256 * 1024;

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
struct Keys {
    by_id: HashMap<String, DecodingKey>,
    /// When the last read that worked ended.
    read_at: Option<Instant>,
    /// When the last read that failed ended, and why.
    failed: Option<(Instant, String)>,
}

/// What the cache says about a key id.
enum Lookup {
    /// Known; `refresh`: the keys are old, read them again in the background.
    Found { key: DecodingKey, refresh: bool },
    /// Unknown, and the JWKS may be read again now.
    Read,
    /// Unknown, and it may not be read again yet.
    Refused(TokenError),
}

impl Keys {
    fn lookup(&self, kid: &str, now: Instant) -> Lookup {
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

    fn store(&mut self, read: Result<HashMap<String, DecodingKey>, String>, now: Instant) {
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
    fn new(url: String) -> anyhow::Result<KeyCache> {
        Ok(KeyCache {
            url,
            http: schedwatch_sinks::delivery::http_client(FETCH_TIMEOUT)?,
            state: RwLock::new(Keys::default()),
            reading: Arc::new(tokio::sync::Mutex::new(())),
        })
    }

    fn lookup(&self, kid: &str) -> Lookup {
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
    fn refresh_in_background(this: &Arc<KeyCache>) {
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

/// At most one line per reason in this long about refused requests: a flood of bad requests
/// becomes a line a minute per reason, each with the count since the one before.
const LOG_WINDOW: Duration = Duration::from_secs(60);

/// Rate-limited warnings about refused requests, per reason, with counts.
#[derive(Default)]
struct RefusalLog {
    by_reason: Mutex<HashMap<&'static str, Window>>,
}

#[derive(Default)]
struct Window {
    /// When the reason's last line was written.
    logged_at: Option<Instant>,
    /// Refusals for the reason since that line (this one included).
    count: u64,
    /// The fault is ours, not the caller's: an error, not a warning.
    ours: bool,
}

impl RefusalLog {
    /// One more refusal for `reason` at `now`: `Some(n)` when a line is due, `n` the refusals
    /// it stands for.
    fn note(&self, reason: &'static str, ours: bool, now: Instant) -> Option<u64> {
        let mut by_reason = self.by_reason.lock().expect("refusal log lock");
        let w = by_reason.entry(reason).or_default();
        w.count += 1;
        w.ours = ours;
        if w.logged_at
            .is_some_and(|at| now.saturating_duration_since(at) < LOG_WINDOW)
        {
            return None;
        }
        w.logged_at = Some(now);
        Some(std::mem::take(&mut w.count))
    }

    /// Refusals not in a line yet: reason, whose fault, count.
    fn unlogged(&self) -> Vec<(&'static str, bool, u64)> {
        let by_reason = self.by_reason.lock().expect("refusal log lock");
        let mut left: Vec<_> = by_reason
            .iter()
            .filter(|(_, w)| w.count > 0)
            .map(|(r, w)| (*r, w.ours, w.count))
            .collect();
        left.sort();
        left
    }

    /// The line for `count` refusals; `detail` (ours or already [`shown`]) is the last one's.
    fn log(reason: &'static str, ours: bool, count: u64, detail: &str) {
        let detail = match detail {
            "" => String::new(),
            d => format!(" ({d})"),
        };
        if ours {
            tracing::error!(reason, refused = count, "push requests not checked: {reason}{detail}; {count} since the last line about it (at most one a minute)");
        } else {
            tracing::warn!(reason, refused = count, "push requests refused: {reason}{detail}; {count} since the last line about it (at most one a minute)");
        }
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

/// Why a request's body was not read whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    /// Longer than the transport's limit: no log entry is that large.
    TooLarge,
    /// Not received within the transport's deadline.
    TimedOut,
    /// The connection failed mid-body.
    Broken,
}

/// What a push request is answered. The reasons are fixed words: nothing the caller sent.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// 204: committed.
    Acked,
    /// 200 with the reason: not an envelope, skipped (and not redelivered).
    Skipped(&'static str),
    /// 401 with the reason.
    Unauthorized(&'static str),
    /// 408: the body did not arrive in time (redelivered).
    TimedOut,
    /// 400: the body was cut off (redelivered, if the caller is still there).
    Incomplete,
    /// 503 with the reason: not committed; Pub/Sub redelivers.
    Unavailable(&'static str),
}

/// The push door: checks the token, reads the body, hands the message to the processor, waits
/// for its commit.
pub struct PushReceiver {
    verifier: Option<TokenVerifier>,
    tx: mpsc::Sender<Received>,
    /// How long a request waits for its commit before it is answered 503.
    wait: Duration,
    refusals: RefusalLog,
}

impl PushReceiver {
    /// Checks tokens with `verifier` (none: `allow_unauthenticated`); messages go to `tx`.
    pub fn new(
        verifier: Option<TokenVerifier>,
        tx: mpsc::Sender<Received>,
        wait: Duration,
    ) -> Self {
        PushReceiver {
            verifier,
            tx,
            wait,
            refusals: RefusalLog::default(),
        }
    }

    /// Handles one request: `authorization` is its header, `body` reads its body (awaited only
    /// once the token passed).
    pub async fn handle(
        &self,
        authorization: Option<&[u8]>,
        body: impl Future<Output = Result<Bytes, BodyError>>,
    ) -> Answer {
        let answer = self.answer(authorization, body).await;
        metrics().push(match &answer {
            Answer::Acked => PushOutcome::Acked,
            Answer::Skipped(_) => PushOutcome::BadEnvelope,
            Answer::Unauthorized(_) => PushOutcome::Unauthorized,
            Answer::TimedOut | Answer::Incomplete | Answer::Unavailable(_) => PushOutcome::Nacked,
        });
        answer
    }

    async fn answer(
        &self,
        authorization: Option<&[u8]>,
        body: impl Future<Output = Result<Bytes, BodyError>>,
    ) -> Answer {
        if let Some(v) = &self.verifier {
            match v.verify(authorization).await {
                Ok(()) => {}
                Err(e @ TokenError::Keys(_)) => {
                    self.refused(e.reason(), e.detail(), true);
                    return Answer::Unavailable(e.reason());
                }
                Err(e) => {
                    self.refused(e.reason(), e.detail(), false);
                    return Answer::Unauthorized(e.reason());
                }
            }
        }
        let body = match body.await {
            Ok(b) => b,
            Err(BodyError::TooLarge) => {
                // No log entry is that large: skipped, or Pub/Sub would push it forever.
                let reason = "body larger than any log entry";
                self.refused(reason, "", false);
                return Answer::Skipped(reason);
            }
            Err(BodyError::TimedOut) => {
                self.refused("body not received in time", "", false);
                return Answer::TimedOut;
            }
            Err(BodyError::Broken) => {
                self.refused("body cut off", "", false);
                return Answer::Incomplete;
            }
        };
        let message = match serde_json::from_slice::<Envelope>(&body) {
            Ok(e) => e.message,
            Err(e) => {
                let reason = "not a Pub/Sub push envelope";
                self.refused(reason, &shown(&e.to_string()), false);
                return Answer::Skipped(reason);
            }
        };
        let data = match base64::engine::general_purpose::STANDARD.decode(message.data.trim()) {
            Ok(d) => d,
            Err(e) => {
                let reason = "message data is not base64";
                let detail = format!("message {}: {e}", shown(&message.message_id));
                self.refused(reason, &detail, false);
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
            return Answer::Unavailable("shutting down; send it again");
        }
        match tokio::time::timeout(self.wait, committed).await {
            Ok(Ok(())) => Answer::Acked,
            Ok(Err(_)) | Err(_) => Answer::Unavailable("not committed; send it again"),
        }
    }

    /// Logs a refused request, rate-limited per reason; `ours`: the fault is ours (an error,
    /// not a warning). `detail` is ours or already [`shown`].
    fn refused(&self, reason: &'static str, detail: &str, ours: bool) {
        if let Some(count) = self.refusals.note(reason, ours, Instant::now()) {
            RefusalLog::log(reason, ours, count, detail);
        }
    }
}

impl Drop for PushReceiver {
    /// The refusals not in a line yet get one, so no count is lost at shutdown.
    fn drop(&mut self) {
        for (reason, ours, count) in self.refusals.unlogged() {
            RefusalLog::log(reason, ours, count, "");
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    /// A body that is already here.
    fn body(b: &[u8]) -> std::future::Ready<Result<Bytes, BodyError>> {
        std::future::ready(Ok(Bytes::copy_from_slice(b)))
    }

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
        let envelope = shared_fixture("push_envelope_401.json");
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
        assert_eq!(push.handle(None, body(&envelope)).await, Answer::Acked);
        assert!(matches!(
            push.handle(None, body(&envelope)).await,
            Answer::Unavailable(_)
        ));
        processor.await.unwrap();
        assert!(matches!(
            push.handle(None, body(b"{}")).await,
            Answer::Skipped(_)
        ));
        assert!(matches!(
            push.handle(None, body(br#"{"message": {"data": "not base64!"}}"#))
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
            push.handle(Some(auth.as_bytes()), body(b"{}")).await,
            Answer::Unavailable(reason) if reason.contains("signing keys")
        ));
        assert!(matches!(
            push.handle(None, body(b"{}")).await,
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

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for value in ["Bearer abc", "bearer abc", "BEARER abc", "bEaReR   abc  "] {
            assert_eq!(bearer(Some(value.as_bytes())).unwrap(), "abc", "{value:?}");
        }
        for value in ["Basic abc", "Bearer", "Bearer   ", "Bearerabc", ""] {
            assert!(
                matches!(bearer(Some(value.as_bytes())), Err(TokenError::Missing(_))),
                "{value:?}"
            );
        }
        assert!(matches!(bearer(None), Err(TokenError::Missing(_))));
        assert!(matches!(
            bearer(Some(b"Bearer \xff\xfe")),
            Err(TokenError::Invalid(_))
        ));
    }

    #[test]
    fn tokens_from_the_future_or_longer_lived_than_googles_are_refused() {
        let now = 1_770_000_000;
        let claims = |iat: i64, exp: i64, nbf: Option<i64>| Claims {
            email: String::new(),
            email_verified: true,
            exp,
            iat,
            nbf,
        };
        // As Google mints them: an hour from issue; and a minute of clock skew either way.
        for ok in [
            claims(now, now + 3600, None),
            claims(now - 3000, now + 600, Some(now - 3000)),
            claims(now + 50, now + 3650, Some(now + 50)),
            claims(now - 3650, now - 50, None),
        ] {
            assert_eq!(ok.check_times(now), Ok(()), "{ok:?}");
        }
        let day = 86_400;
        for (what, bad) in [
            ("nbf a day ahead", claims(now, now + 3600, Some(now + day))),
            (
                "iat a year ahead",
                claims(now + 365 * day, now + 365 * day + 3600, None),
            ),
            ("exp a century ahead", claims(now, now + 36_500 * day, None)),
            ("a two-hour lifetime", claims(now - 3600, now + 3600, None)),
            ("exp over an hour ahead", claims(now + 60, now + 3700, None)),
            ("expired", claims(now - 7200, now - 3600, None)),
            ("i64 extremes", claims(i64::MIN, i64::MAX, Some(i64::MAX))),
        ] {
            assert!(bad.check_times(now).is_err(), "{what}: {bad:?}");
        }
    }

    #[test]
    fn untrusted_values_are_cut_short_and_escaped_for_the_log() {
        assert_eq!(shown("rotated-away"), "rotated-away");
        assert_eq!(
            shown("a\nFORGED LINE\u{1b}[2J"),
            "a\\nFORGED LINE\\u{1b}[2J"
        );
        let huge = "x".repeat(200_000);
        let cut = shown(&huge);
        assert_eq!(cut.chars().count(), SHOWN_CHARS + 1);
        assert!(cut.ends_with('…'));
        assert!(!shown(&"\n".repeat(1000)).contains('\n'));
        assert_eq!(shown("evil\u{202e}gpj.exe é"), "evil\\u{202e}gpj.exe é");
    }

    #[test]
    fn refusals_are_logged_once_a_window_per_reason_with_their_count() {
        let log = RefusalLog::default();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(log.note("invalid token", false, at(0)), Some(1));
        for s in 1..=59 {
            assert_eq!(log.note("invalid token", false, at(s)), None);
        }
        // Another reason has a window of its own.
        assert_eq!(log.note("no bearer token", false, at(30)), Some(1));
        assert_eq!(log.unlogged(), vec![("invalid token", false, 59)]);
        assert_eq!(log.note("invalid token", false, at(60)), Some(60));
        assert_eq!(log.note("invalid token", false, at(61)), None);
        assert_eq!(log.unlogged(), vec![("invalid token", false, 1)]);
    }

    /// A key set holding `signer.pem`'s public key as `kid`.
    fn one_key(kid: &str) -> HashMap<String, DecodingKey> {
        let jwks = std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/data/push/jwks.json"),
        )
        .unwrap();
        let set: JwkSet = serde_json::from_slice(&jwks).unwrap();
        HashMap::from([(kid.to_owned(), DecodingKey::from_jwk(&set.keys[0]).unwrap())])
    }

    #[test]
    fn known_keys_never_wait_and_reads_are_spaced() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let read = |l: Lookup| matches!(l, Lookup::Read);
        let found = |l: Lookup| matches!(l, Lookup::Found { refresh: false, .. });
        let mut keys = Keys::default();
        assert!(read(keys.lookup("k1", at(0))), "nothing read yet");
        keys.store(Err("down".into()), at(0));
        // No key at all and the read failed: our fault, remembered for FAILURE_MEMORY.
        assert!(matches!(
            keys.lookup("k1", at(14)),
            Lookup::Refused(TokenError::Keys(_))
        ));
        assert!(read(keys.lookup("k1", at(15))));
        keys.store(Ok(one_key("k1")), at(15));
        assert!(found(keys.lookup("k1", at(16))));
        // An unknown key id is not a read again within MIN_REFRESH of the last one…
        assert!(matches!(
            keys.lookup("forged", at(24)),
            Lookup::Refused(TokenError::UnknownKey(_))
        ));
        assert!(read(keys.lookup("forged", at(25))));
        // … and after a failed read, not within FAILURE_MEMORY; the known key still works.
        keys.store(Err("hangs".into()), at(35));
        assert!(matches!(
            keys.lookup("forged", at(49)),
            Lookup::Refused(TokenError::UnknownKey(_))
        ));
        assert!(found(keys.lookup("k1", at(49))));
        assert!(read(keys.lookup("forged", at(50))));
        // Old keys are still used, and read again in the background.
        assert!(matches!(
            keys.lookup("k1", at(15 + 3601)),
            Lookup::Found { refresh: true, .. }
        ));
    }

    #[tokio::test]
    async fn the_body_is_not_read_before_the_token_passes() {
        let verifier = TokenVerifier::new(PushConfig {
            audience: Some("a".into()),
            service_account: Some("s@p.iam.gserviceaccount.com".into()),
            jwks_url: "http://127.0.0.1:9/certs".into(),
            ..PushConfig::default()
        })
        .unwrap();
        let (tx, _rx) = mpsc::channel(1);
        let push = PushReceiver::new(Some(verifier), tx, Duration::from_secs(1));
        let huge = format!("Bearer {}", "A".repeat(200_000));
        for authorization in [
            None,
            Some(b"Basic dXNlcjpwYXNz".as_slice()),
            Some(huge.as_bytes()),
        ] {
            let unread = std::future::poll_fn(|_| -> std::task::Poll<Result<Bytes, BodyError>> {
                panic!("the body was read before the token was checked")
            });
            let answer = push.handle(authorization, unread).await;
            let Answer::Unauthorized(reason) = answer else {
                panic!("{answer:?}");
            };
            assert!(reason.len() < 100 && !reason.contains("AAAA"), "{reason}");
        }
    }
}

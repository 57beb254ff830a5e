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
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::{Ack, Received};

mod token;
use crate::metrics::{metrics, PushOutcome};
pub use token::{TokenError, TokenVerifier};

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
mod tests;
